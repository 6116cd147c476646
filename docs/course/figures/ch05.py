"""第 5 章的图：打包（packing）与补齐（padding）的对比，以及按文档划分验证集。

都不依赖 course/ 里的任何东西：
    ch05_packing.png  几篇长短不一的小“文档”（每篇 [bos] + 正文 + [eos]），左：一篇一行补齐到同样长；
                      右：首尾相接成一条 token 流，按 PackedPretrainData 的规则切成长 T+1、步长 T 的窗口
    ch05_split.png    60 篇文档，用包自己的 validation_mask（data/split.py）决定哪些进验证集；
                      对比“按位置随机抽窗口”：验证窗口几乎都和训练窗口来自同一篇文档
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from figures.common import figure, save   # docs/course 在 sys.path 上（make_figures.py 与测试都是）
from towergpt.data.split import validation_mask

DOC_LENGTHS = (5, 2, 9, 3, 6, 4)   # 每篇正文的 token 数（不含 bos / eos）
SEQ_LEN = 8                        # 窗口长 T + 1 = 9，相邻窗口共用一个 token
DOC_COLORS = ("#8dd3c7", "#ffffb3", "#bebada", "#fb8072", "#80b1d3", "#fdb462")
BOUNDARY = "#444444"


def packed_stream(lengths=DOC_LENGTHS) -> tuple[list[int], list[str]]:
    """每个 token 属于第几篇文档，以及它的种类（bos / text / eos），与 data prepare 写出的顺序相同。"""
    doc_of, kind = [], []
    for doc, length in enumerate(lengths):
        doc_of += [doc] * (length + 2)
        kind += ["bos"] + ["text"] * length + ["eos"]
    return doc_of, kind


def windows(stream_length: int, seq_len: int = SEQ_LEN) -> list[range]:
    """与 PackedPretrainData.window 相同：第 k 个窗口是 tokens[k·T : k·T + T + 1]，共 (n - 1) // T 个。"""
    return [range(k * seq_len, k * seq_len + seq_len + 1) for k in range((stream_length - 1) // seq_len)]


def _cell(ax, x, y, doc, kind, width=1.0):
    face = DOC_COLORS[doc % len(DOC_COLORS)] if doc is not None else "white"
    ax.add_patch(Rectangle((x, y), width * 0.94, 0.8, facecolor=face, edgecolor="#777777", linewidth=0.5,
                           hatch="///" if doc is None else None))
    if kind in ("bos", "eos"):
        ax.text(x + 0.47, y + 0.4, "s" if kind == "bos" else "/s", ha="center", va="center", fontsize=6,
                color=BOUNDARY, fontweight="bold")


def draw_packing(path: Path) -> None:
    fig, _ = figure(6.4, 3.6)
    fig.clf()                               # 两个并排的子图
    left = fig.add_subplot(1, 2, 1)
    right = fig.add_subplot(1, 2, 2)

    # 左：一篇一行，补齐到最长的那篇（斜线格 = <pad>，算力白花）
    width = max(DOC_LENGTHS) + 2
    for row, length in enumerate(DOC_LENGTHS):
        y = len(DOC_LENGTHS) - 1 - row
        for i in range(width):
            if i < length + 2:
                _cell(left, i, y, row, "bos" if i == 0 else "eos" if i == length + 1 else "text")
            else:
                _cell(left, i, y, None, "pad")
    real = sum(DOC_LENGTHS) + 2 * len(DOC_LENGTHS)
    left.set_title(f"padding: one document per row\n{real} real / {width * len(DOC_LENGTHS)} cells "
                   f"({real / (width * len(DOC_LENGTHS)):.0%} used)", fontsize=8)

    # 右：首尾相接，切成长 T+1 的窗口；x = 窗口[:-1]，y = 窗口[1:]
    doc_of, kind = packed_stream()
    rows = windows(len(doc_of))
    for row, window in enumerate(rows):
        y = len(rows) - 1 - row
        for i, position in enumerate(window):
            _cell(right, i, y, doc_of[position], kind[position])
        right.text(SEQ_LEN + 1.2, y + 0.4, f"{window.start}..{window.stop - 1}", va="center", fontsize=6)
    used = len(rows) * SEQ_LEN
    right.set_title(f"packing: one stream cut into windows of T+1={SEQ_LEN + 1}\n"
                    f"{used} of {len(doc_of) - 1} targets used, no padding", fontsize=8)
    for ax, cols, nrows in ((left, width, len(DOC_LENGTHS)), (right, SEQ_LEN + 3, len(rows))):
        ax.set_xlim(-0.2, cols)
        ax.set_ylim(-0.3, max(len(DOC_LENGTHS), len(rows)))
        ax.axis("off")
    fig.text(0.5, 0.02, "colour = document,  s = <s> (bos),  /s = </s> (eos),  hatched = <pad>;  "
             "neighbouring windows share one token", ha="center", fontsize=7)
    save(fig, path)


NUM_DOCS = 60
VAL_FRACTION = 0.1
WINDOWS_PER_DOC = (2, 5)            # 每篇文档切出的窗口数在这个范围里（示意）


def draw_split(path: Path) -> None:
    rng = np.random.default_rng(0)
    per_doc = rng.integers(WINDOWS_PER_DOC[0], WINDOWS_PER_DOC[1] + 1, size=NUM_DOCS)
    doc_val = validation_mask(0, NUM_DOCS, seed=0, val_fraction=VAL_FRACTION)      # 包自己的规则
    doc_of_window = np.repeat(np.arange(NUM_DOCS), per_doc)
    window_val = rng.random(len(doc_of_window)) < VAL_FRACTION                    # 反例：按位置随机抽

    fig, ax = figure(6.4, 3.0)
    x = 0
    for doc in range(NUM_DOCS):
        for _ in range(per_doc[doc]):
            ax.add_patch(Rectangle((x, 1.2), 0.9, 0.7, color="#d95f02" if doc_val[doc] else "#b3cde3"))
            ax.add_patch(Rectangle((x, 0.0), 0.9, 0.7, color="#d95f02" if window_val[x] else "#b3cde3"))
            x += 1
        ax.plot([x - 0.05, x - 0.05], [-0.1, 2.0], color="#555555", linewidth=0.4)
    leaked_docs = set(doc_of_window[window_val]) & set(doc_of_window[~window_val])
    val_docs = set(doc_of_window[window_val])
    ax.text(0, 2.05, f"by document (validation_mask, seed 0): {int(doc_val.sum())} whole documents in val, "
            f"0 shared with train", fontsize=8, va="bottom")
    ax.text(0, 0.75, f"by random window: val windows come from {len(val_docs)} documents, "
            f"{len(leaked_docs)} of them also in train", fontsize=8, va="bottom")
    ax.set_xlim(-0.5, x + 0.5)
    ax.set_ylim(-0.3, 2.6)
    ax.axis("off")
    ax.set_title("Validation split: orange = val, blue = train, thin lines = document boundaries", fontsize=9)
    save(fig, path)


FIGURES = {"ch05_packing.png": draw_packing, "ch05_split.png": draw_split}
