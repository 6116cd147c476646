"""quickstart 的对话任务：判断一条商品评论是正面还是负面。

它把整条流水线串起来检验：分词器、预训练（模型在评论上学到了“语感”）、对话模板、
只在助手回答上算损失的 SFT、贪心解码。留出的 1000 条评论（正负各半）从不出现在任何训练数据里，
在它们上的准确率就是整条流水线的成绩单；总是回答同一类的“多数类基线”是 0.5。
"""

from __future__ import annotations

import json
from pathlib import Path

from towergpt.chat_template import render_chat
from towergpt.generate import generate_batch_greedy

QUESTION = "这条评论是正面还是负面？"
MAX_REVIEW_CHARS = 200   # 极少数评论很长：只取前 200 字（任务构造的一部分，训练和测试一致）


def question_for(review: str) -> str:
    """用户的那句话：问题 + 换行 + 评论原文。"""
    return f"{QUESTION}\n{review[:MAX_REVIEW_CHARS]}"


def read_reviews(path: str | Path) -> list[dict]:
    """读 demo/corpus.py 写出的 sentiment_*.jsonl：每行 {"review", "label"}。"""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_dialogues(reviews_path: str | Path, out_path: str | Path) -> int:
    """把带标签的评论写成对话数据（OpenAI messages 格式），返回条数。"""
    rows = read_reviews(reviews_path)
    with open(out_path, "w", encoding="utf-8") as handle:
        for row in rows:
            messages = [{"role": "user", "content": question_for(row["review"])},
                        {"role": "assistant", "content": row["label"]}]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return len(rows)


def write_prompts(reviews_path: str | Path, out_path: str | Path) -> int:
    """把带标签的评论写成强化学习的提示词（{"messages": [用户的话], "answer": 标注}），返回条数。"""
    rows = read_reviews(reviews_path)
    with open(out_path, "w", encoding="utf-8") as handle:
        for row in rows:
            record = {"messages": [{"role": "user", "content": question_for(row["review"])}], "answer": row["label"]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(rows)


def answer_all(model, tokenizer, reviews: list[str], batch_size: int = 32) -> list[str]:
    """对每条评论做一次贪心的对话回答（批量、左 padding），返回回答文本。"""
    prompts = [render_chat(tokenizer, [{"role": "user", "content": question_for(r)}],
                           add_generation_prompt=True).ids for r in reviews]
    # 按长度排序再分批，padding 最少；最后按原顺序放回
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        outputs = generate_batch_greedy(model, [prompts[i] for i in chunk], max_new_tokens=6,
                                        pad_id=tokenizer.pad_id, eos_id=(tokenizer.im_end_id, tokenizer.eos_id),
                                        vocab_limit=tokenizer.vocab_size)
        for index, ids in zip(chunk, outputs):
            answers[index] = tokenizer.decode(ids).strip()
    return answers


def evaluate(model, tokenizer, heldout_path: str | Path) -> dict:
    """读留出评论文件（每行 {"review", "label"}），返回 evaluate_rows 的成绩。"""
    return evaluate_rows(model, tokenizer, read_reviews(heldout_path))


def evaluate_rows(model, tokenizer, rows: list[dict]) -> dict:
    """在留出评论（每条 {"review": 文本, "label": 文本}）上的准确率、多数类基线，以及几条示例对话。"""
    answers = answer_all(model, tokenizer, [row["review"] for row in rows])
    correct = sum(answer == row["label"] for answer, row in zip(answers, rows))
    labels = [row["label"] for row in rows]
    majority = max(set(labels), key=labels.count)
    examples = [{"user": question_for(row["review"]), "assistant": answer, "label": row["label"]}
                for row, answer in list(zip(rows, answers))[:3]]
    return {
        "sentiment_accuracy": round(correct / len(rows), 4),
        "majority_baseline": round(labels.count(majority) / len(rows), 4),
        "heldout_reviews": len(rows),
        "unparseable_answers": sum(answer not in ("正面", "负面") for answer in answers),
        "examples": examples,
    }
