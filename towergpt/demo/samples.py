"""quickstart 的第 5 步：用预训练好的模型续写几个开头，并检查续写是不是在“打转”。

为什么小模型的贪心解码会打转：贪心每一步都选最可能的 token，而小模型写出“中国人民的”之后，
最可能的下一段往往又是“中国人民的”——一旦进了这个圈，每一步的最优选择都让它留在圈里。
所以示例用的是该用的设置（bench/sample_loops.py 在扫参的模型上数过，见 docs/training.md）：
    贪心 + 重复惩罚 1.2 + 禁止重复 2 元组
                      出现过的 token 打分降低（generate.apply_repetition_penalty），相邻的两个 token
                      不许再一起出现第二遍（generate.banned_by_ngrams）。只用重复惩罚时“张家、张家、…”仍会出现：
                      惩罚只让打分变差一次，它若仍是最好的就会一直被选中；禁止 3 元组也挡不住“艺术艺术艺术”；
    采样 + top-p      按概率抽签，只在累计概率 0.9 以内的候选里抽（filter_top_p），既有变化又不离谱；
                      再加重复惩罚 1.1 和禁止重复 3 元组。
find_loop 检查一段续写里有没有“同一个字或词接连重复”的圈；quickstart 的摘要里会数出有几条打转。
"""

from __future__ import annotations

import re

import torch

from towergpt.generate import generate

PROMPTS = ["中国人民", "新年伊始，", "今天上午，国务院", "这本书的内容"]
DECODING = {
    "greedy": dict(temperature=0.0, repetition_penalty=1.2, no_repeat_ngram=2),
    "sampled": dict(temperature=0.8, top_p=0.9, repetition_penalty=1.1, no_repeat_ngram=3, seed=0),
}
NEW_TOKENS = 60
# 什么算打转：一个词（2~10 个字）接连出现 3 次以上，如“艺术艺术艺术”“政府、政府、政府、”；
# 或一个字接连出现 4 次以上，如“斯斯斯斯”。单元里至少要有一个文字（汉字或字母）：
# 评论里的“！！！！”、省略号“…………”、数字“１１１１”不算。
_REPEATED_UNITS = [(length, re.compile(r"(.{%d})\1{%d,}" % (length, 3 if length == 1 else 2), re.DOTALL))
                   for length in range(1, 11)]   # 每种单元长度分开找，免得短单元先匹配上、挡住从同一处开始的长单元


def find_loop(text: str) -> str | None:
    """text 里有没有打转（见上）？有就返回打转的那一段（例如“政府、政府、政府、”），没有返回 None。"""
    for _, pattern in _REPEATED_UNITS:
        for match in pattern.finditer(text):
            if any(ch.isalpha() for ch in match.group(1)):
                return match.group(0)
    return None


def continue_prompts(model, tokenizer, prompts=PROMPTS, decoding=DECODING, new_tokens: int = NEW_TOKENS) -> list[dict]:
    """每个开头按 decoding 里的每种设置各续写一次。返回 [{"prompt", 设置名: 全文, "loops": [打转的设置名]}]。"""
    rows = []
    for prompt in prompts:
        idx = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(prompt)])
        row = {"prompt": prompt}
        for name, settings in decoding.items():
            out = generate(model, idx, new_tokens, eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size,
                           **settings)
            ids = [t for t in out[0, idx.size(1):].tolist() if t != tokenizer.eos_id]
            row[name] = prompt + tokenizer.decode(ids)
        row["loops"] = [name for name in decoding if find_loop(row[name][len(prompt):])]
        rows.append(row)
    return rows


def print_samples(rows: list[dict]) -> None:
    greedy, sampled = DECODING["greedy"], DECODING["sampled"]
    print(f"贪心 greedy：重复惩罚 {greedy['repetition_penalty']}，禁止重复 {greedy['no_repeat_ngram']} 元组；"
          f"采样 sampled：温度 {sampled['temperature']}，"
          f"top-p {sampled['top_p']}，重复惩罚 {sampled['repetition_penalty']}，禁止重复 {sampled['no_repeat_ngram']} 元组\n"
          f"（不加重复惩罚时，小模型的贪心解码常常原地打转：它每步选最可能的词，而绕了一圈之后最可能的又是同一圈 /"
          f" plain greedy decoding of a small model loops: after one lap, the likeliest next step is the same lap）\n")
    for row in rows:
        marks = {name: "（打转 / loops）" if name in row["loops"] else "" for name in DECODING}
        print(f"【贪心 greedy】 {row['greedy']}{marks['greedy']}\n【采样 sampled】{row['sampled']}{marks['sampled']}\n")
