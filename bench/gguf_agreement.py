"""TowerGPT 与 llama.cpp（llama-cpp-python）在同一个模型的 GGUF 导出上算得有多一致。

    python bench/gguf_agreement.py --run runs/quickstart [--reviews 1000]

--run 是一次 quickstart 的输出目录：用它的 pretrain 检查点比续写，用 sft 检查点比留出评论上的答案。
对 f32 / f16 / q8_0 三种精度各导出一次，报告：
    - 文件大小；
    - logits 的最大绝对差（与 TowerGPT 的 f32 模型比；llama.cpp 的 KV 缓存设为 f32）；
    - 贪心续写 40 个 token，几个提示词逐 token 相同，第一次分岔在第几个 token；
    - SFT 模型在留出评论上的准确率（llama.cpp 贪心作答），以及与 TowerGPT 的答案相同的比例。
结果表写在 docs/export.md。
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from towergpt.chat_template import render_chat
from towergpt.checkpoint import load
from towergpt.demo import sentiment
from towergpt.generate import generate
from towergpt.llamacpp.export_gguf import export_gguf

PROMPTS = ["今天天气很好", "中国经济", "这本书", "北京", "人民群众"]
NEW_TOKENS = 40


def open_llama(path: Path, n_ctx: int):
    from llama_cpp import GGML_TYPE_F32, Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, n_threads=2, verbose=False,
                 type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32)


def llama_greedy(llm, prompt: list[int], new_tokens: int, stop: set[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out = list(prompt)
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stop:
            break
        llm.eval([token])
    return out


def logit_error(llm, model, ids: list[int]) -> float:
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    return float(np.abs(np.array(llm.scores[:len(ids)]) - ours).max())


def continuation_row(run: Path, dtype: str, out_dir: Path) -> dict:
    model, tokenizer = load(run / "pretrain")
    path, _ = export_gguf(run / "pretrain", out_dir / f"pretrain-{dtype}.gguf", dtype)
    llm = open_llama(path, model.config.max_seq_len)
    stop = {tokenizer.eos_id, tokenizer.im_end_id}
    identical, first_split, error = 0, [], 0.0
    for text in PROMPTS:
        prompt = [tokenizer.bos_id] + tokenizer.encode(text)
        ours = generate(model, torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, temperature=0.0,
                        eos_id=list(stop))[0].tolist()
        theirs = llama_greedy(llm, prompt, NEW_TOKENS, stop)
        identical += ours == theirs
        split = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
        first_split.append("—" if split is None else str(split - len(prompt) + 1))
        error = max(error, logit_error(llm, model, ours))
    llm.close()
    return {"size_mib": path.stat().st_size / 2**20, "identical": identical, "first_split": first_split,
            "logit_error": error}


def sentiment_row(run: Path, dtype: str, out_dir: Path, reviews: int) -> dict:
    model, tokenizer = load(run / "sft")
    path, _ = export_gguf(run / "sft", out_dir / f"sft-{dtype}.gguf", dtype)
    llm = open_llama(path, model.config.max_seq_len)
    rows = sentiment.read_reviews(run / "corpus" / "sentiment_heldout.jsonl")[:reviews]
    ours = sentiment.answer_all(model, tokenizer, [row["review"] for row in rows])
    stop = {tokenizer.eos_id, tokenizer.im_end_id}
    theirs = []
    for row in rows:
        prompt = render_chat(tokenizer, [{"role": "user", "content": sentiment.question_for(row["review"])}],
                             add_generation_prompt=True).ids
        answer = llama_greedy(llm, prompt, 6, stop)[len(prompt):]
        theirs.append(tokenizer.decode([t for t in answer if t not in stop]).strip())
    llm.close()
    correct = sum(answer == row["label"] for answer, row in zip(theirs, rows))
    ours_correct = sum(answer == row["label"] for answer, row in zip(ours, rows))
    same = sum(a == b for a, b in zip(ours, theirs))
    return {"accuracy": correct / len(rows), "ours": ours_correct / len(rows), "same": same / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="quickstart 的输出目录")
    parser.add_argument("--reviews", type=int, default=1000, help="用几条留出评论")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print("| 精度 | 文件 | logits 最大差 | 续写 40 token 逐个相同 | 第一次分岔（第几个新 token） "
          "| 留出准确率（llama.cpp / TowerGPT） | 答案相同 |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for dtype in ("f32", "f16", "q8_0"):
            c = continuation_row(args.run, dtype, Path(scratch))
            s = sentiment_row(args.run, dtype, Path(scratch), args.reviews)
            print(f"| {dtype} | {c['size_mib']:.1f} MiB | {c['logit_error']:.2g} | {c['identical']}/{len(PROMPTS)} "
                  f"| {', '.join(c['first_split'])} | {s['accuracy']:.3f} / {s['ours']:.3f} | {s['same']:.1%} |")


if __name__ == "__main__":
    main()
