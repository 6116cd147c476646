"""第 6 章的图：一段对话的损失掩码，画出来。

对话由包自己的 chat_template.render_chat 渲染，x / y 和 -100 由 data/sft_dataset.pad_right 算出——
和训练时是同一段代码。图不能依赖 course/ 里训练好的分词器（而且这台机器没有中文字体），
所以用一个“按英文单词切分”的小分词器代替：它只提供 render_chat 需要的几样东西
（bos_id、im_start_id、im_end_id、encode），切出来的 token 与真分词器不同，但掩码的规则完全一样。
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from towergpt.chat_template import render_chat  # noqa: E402
from towergpt.data.sft_dataset import pad_right  # noqa: E402
from towergpt.model import IGNORE_INDEX  # noqa: E402


class WordTokenizer:
    """一个词一个 token 的替身分词器（只为画图）：控制 token 的 id 固定，其余按首次出现编号。"""

    pad_id, bos_id, im_start_id, im_end_id = 0, 1, 2, 3
    SPECIAL = {0: "<pad>", 1: "<s>", 2: "<|im_start|>", 3: "<|im_end|>"}

    def __init__(self):
        self.pieces = dict(self.SPECIAL)
        self.ids = {}

    def encode(self, text: str) -> list[int]:
        out = []
        for piece in re.findall(r"\n|[A-Za-z']+|[^\sA-Za-z]", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.pieces)
                self.pieces[self.ids[piece]] = piece
            out.append(self.ids[piece])
        return out

    def id_to_piece(self, token_id: int) -> str:
        return self.pieces[int(token_id)].replace("\n", "\\n")


MESSAGES = [{"role": "user", "content": "Positive or negative?\nGreat quality, fast delivery"},
            {"role": "assistant", "content": "positive"}]


def draw_loss_mask(path: Path) -> None:
    tokenizer = WordTokenizer()
    chat = render_chat(tokenizer, MESSAGES)                                  # ids 与 loss_mask，等长
    inputs, targets = pad_right([(np.array(chat.ids), np.array(chat.loss_mask))], tokenizer.pad_id)
    x, y = inputs[0], targets[0]                                             # (T,)：x = ids[:-1]，y 错开一位
    T = len(x)

    common.setup()
    fig, axis = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    trained, ignored, context = "tab:orange", "#d9d9d9", "#eef3fb"
    rows = ((1.25, "input x", None), (0.0, "target y", y))
    for top, title, labels in rows:
        axis.text(-0.6, top + 0.5, title, ha="right", va="center", fontsize=8, fontweight="bold")
        for i in range(T):
            if labels is None:
                face, text = context, tokenizer.id_to_piece(x[i])
            elif labels[i] == IGNORE_INDEX:
                face, text = ignored, str(IGNORE_INDEX)
            else:
                face, text = trained, tokenizer.id_to_piece(labels[i])
            axis.add_patch(Rectangle((i, top), 0.92, 1.0, facecolor=face, edgecolor="gray", linewidth=0.5))
            axis.text(i + 0.46, top + 0.5, text, ha="center", va="center", rotation=90, fontsize=6.5)
    for i in range(T):   # 位置 i：看到 x[0..i]，要预测 y[i] = ids[i+1]
        axis.annotate("", xy=(i + 0.46, 1.0), xytext=(i + 0.46, 1.25),
                      arrowprops=dict(arrowstyle="->", color="gray", linewidth=0.5))
    for i in range(0, T, 5):
        axis.text(i + 0.46, 2.35, str(i), ha="center", fontsize=6, color="gray")
    n = int((y != IGNORE_INDEX).sum())
    axis.set_title(f"SFT loss mask: only {n} of {T} positions are trained "
                   "(the answer and its <|im_end|>)", fontsize=9)
    axis.legend(handles=[Patch(facecolor=trained, edgecolor="gray", label="trained: assistant's tokens"),
                         Patch(facecolor=ignored, edgecolor="gray", label="ignored: -100 (IGNORE_INDEX)"),
                         Patch(facecolor=context, edgecolor="gray", label="seen as context only")],
                fontsize=7, loc="lower center", bbox_to_anchor=(0.5, -0.42), ncol=3, frameon=False)
    axis.set_xlim(-3.2, T + 0.2)
    axis.set_ylim(-0.1, 2.6)
    axis.axis("off")
    common.save(fig, path)


FIGURES = {"ch06_loss_mask.png": draw_loss_mask}
