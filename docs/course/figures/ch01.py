"""第 1 章的图：BPE 怎样一步步合并（玩具语料），以及字节回退时一个字符变成几个字节 piece。

两张图都是纯计算，不依赖 course/ 里的任何东西：
    ch01_bpe_merges.png    经典的英文玩具语料上做 10 次 BPE 合并，看每个词怎样被切、语料一共多少个 token
    ch01_byte_fallback.png 四个字符的 UTF-8 字节，以及字节回退时它们变成的 <0x..> piece（分词器里正是这样命名）
标签用英文：这台机器没有中文字体（汉字会显示成方框），所以图里的字符写成 U+XXXX。
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from matplotlib.patches import FancyBboxPatch

from figures.common import figure, save   # docs/course 在 sys.path 上（make_figures.py 与测试都是）

# Sennrich 等人（2016）讲 BPE 时用的玩具语料：词 -> 出现次数
TOY_CORPUS = {"low": 5, "lower": 2, "newest": 6, "widest": 3}
SHOWN_WORDS = ("low", "lower", "newest", "widest")
SHOWN_STEPS = (0, 1, 2, 3, 5, 10)
PALETTE = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#b3de69", "#fccde5")


def bpe_steps(corpus: dict[str, int], merges: int) -> list[tuple[dict[str, tuple[str, ...]], tuple[str, str] | None]]:
    """朴素的 BPE：每步数一遍“相邻两片”出现的次数，把最多的一对合成一片。

    返回每一步（第 0 步 = 还没合并）的 (每个词的切分, 这一步合并的那一对)。次数相同时取字典序最小的一对，结果确定。
    SentencePiece 做的是同一件事，只是快得多，而且在整篇中文上做（中文没有空格，不必先切词）。
    """
    split = {word: tuple(word) for word in corpus}
    steps = [(dict(split), None)]
    for _ in range(merges):
        pairs = Counter()
        for word, pieces in split.items():
            for left, right in zip(pieces, pieces[1:]):
                pairs[left, right] += corpus[word]
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = {}
        for word, pieces in split.items():
            out, i = [], 0
            while i < len(pieces):
                if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                    out.append(pieces[i] + pieces[i + 1])
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            merged[word] = tuple(out)
        split = merged
        steps.append((dict(split), best))
    return steps


def corpus_tokens(corpus: dict[str, int], split: dict[str, tuple[str, ...]]) -> int:
    return sum(count * len(split[word]) for word, count in corpus.items())


def finish(fig, ax, path: Path, xlim: tuple, ylim: tuple, title: str) -> None:
    """两张图都是“画在空白画布上的一排排方块”：定好范围、去掉坐标轴、写标题、存盘。"""
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    save(fig, path)


def draw_bpe_merges(path: Path) -> None:
    steps = bpe_steps(TOY_CORPUS, max(SHOWN_STEPS))
    fig, ax = figure(6.4, 3.6)
    colors: dict[str, str] = {}
    for row, step in enumerate(SHOWN_STEPS):
        split, pair = steps[step]
        y = len(SHOWN_STEPS) - 1 - row
        label = f"{step} merges" + (f"  (+{pair[0]}{pair[1]})" if pair else "")
        ax.text(-0.3, y, label, ha="right", va="center", fontsize=8)
        ax.text(25.6, y, f"{corpus_tokens(TOY_CORPUS, split)} tokens", ha="left", va="center", fontsize=8)
        x = 0.0
        for word in SHOWN_WORDS:
            for piece in split[word]:
                width = 0.62 * len(piece)
                if len(piece) > 1:
                    colors.setdefault(piece, PALETTE[len(colors) % len(PALETTE)])
                face = colors.get(piece, "#eeeeee")
                ax.add_patch(FancyBboxPatch((x, y - 0.32), width - 0.08, 0.64, boxstyle="round,pad=0.02",
                                            facecolor=face, edgecolor="#555555", linewidth=0.6))
                ax.text(x + (width - 0.08) / 2, y, piece, ha="center", va="center", fontsize=8, family="monospace")
                x += width
            x += 0.7
    finish(fig, ax, path, (-7.5, 29), (-0.7, len(SHOWN_STEPS) - 0.3),
           "BPE on a toy corpus (low x5, lower x2, newest x6, widest x3):\n"
           "each merge joins the most frequent adjacent pair")


# 字节回退的四个例子：(字符, 英文说明)。汉字和 emoji 在图里写成码位，避免没有字体时显示成方框。
FALLBACK_EXAMPLES = (("A", "ASCII letter"), ("\u00e9", "Latin e-acute"), ("\u4e2d", "CJK character"),
                     ("\U0001F600", "emoji"))


def draw_byte_fallback(path: Path) -> None:
    fig, ax = figure(6.4, 3.0)
    for row, (char, name) in enumerate(FALLBACK_EXAMPLES):
        y = len(FALLBACK_EXAMPLES) - 1 - row
        data = char.encode("utf-8")
        ax.text(-0.2, y, f"U+{ord(char):04X}  {name}", ha="right", va="center", fontsize=8)
        for i, byte in enumerate(data):
            ax.add_patch(FancyBboxPatch((i * 1.5, y - 0.3), 1.35, 0.6, boxstyle="round,pad=0.02",
                                        facecolor=PALETTE[row], edgecolor="#555555", linewidth=0.6))
            ax.text(i * 1.5 + 0.675, y, f"<0x{byte:02X}>", ha="center", va="center", fontsize=8, family="monospace")
        ax.text(6.2, y, f"{len(data)} byte{'s' if len(data) > 1 else ''} = {len(data)} token{'s' if len(data) > 1 else ''}",
                ha="left", va="center", fontsize=8)
    finish(fig, ax, path, (-4.8, 9), (-0.6, len(FALLBACK_EXAMPLES) - 0.4),
           "Byte fallback: a character missing from the vocabulary\n"
           "becomes its UTF-8 bytes, one byte piece each (256 byte pieces in every vocab)")


FIGURES = {"ch01_bpe_merges.png": draw_bpe_merges, "ch01_byte_fallback.png": draw_byte_fallback}
