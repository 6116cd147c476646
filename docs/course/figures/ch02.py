"""第 2 章的图：一个注意力头的因果注意力权重，以及不除以 √D 时 softmax 怎样“饱和”。

两张图都是纯计算（固定种子的随机数 + 几行张量运算），不依赖 course/ 里的任何东西：
    ch02_causal_weights.png      T=8 的一个头：softmax(q·kᵀ/√D + 因果掩码) 的权重矩阵，右上三角被掩掉
    ch02_softmax_saturation.png  随机向量的点积有多大（随 D 增长），以及 16 个键里最大的那个权重有多大
标签用英文：这台机器没有中文字体（汉字会显示成方框）。
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from figures.common import figure, plt, save, setup   # docs/course 在 sys.path 上（make_figures.py 与测试都是）

DIMS = (2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
N_KEYS = 16
TRIALS = 2000


def causal_weights(T: int = 8, C: int = 16, D: int = 16, seed: int = 0) -> torch.Tensor:
    """一个随机的头在随机输入上的注意力权重 (T, T)，与第 2 章里手算的那一个头同样的算法。"""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(T, C, generator=generator)
    w_q = torch.randn(C, D, generator=generator) / math.sqrt(C)
    w_k = torch.randn(C, D, generator=generator) / math.sqrt(C)
    q, k = x @ w_q, x @ w_k                                          # (T, D)
    scores = q @ k.T / math.sqrt(D)                                  # (T, T)
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool))        # 第 i 行只能看 j ≤ i
    return scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)


def draw_causal_weights(path: Path) -> None:
    weights = causal_weights()
    T = weights.shape[0]
    shown = np.ma.masked_where(weights.numpy() == 0, weights.numpy())   # 被掩掉的格子画成灰色
    fig, ax = figure(6.4, 3.9)
    image = ax.imshow(shown, cmap="viridis", vmin=0, vmax=1)
    ax.set_facecolor("#d9d9d9")
    for i in range(T):
        for j in range(T):
            if j <= i:
                value = weights[i, j].item()
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < 0.55 else "black")
            else:
                ax.text(j, i, "x", ha="center", va="center", fontsize=8, color="#888888")
    ax.set_xticks(range(T))
    ax.set_yticks(range(T))
    ax.set_xlabel("key position j (the token being looked at)")
    ax.set_ylabel("query position i")
    ax.set_title("One causal attention head: weights softmax(q k^T / sqrt(D) + mask)\n"
                 "each row sums to 1; grey x = future, masked out", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    save(fig, path)


def saturation_table(seed: int = 0) -> dict[str, list[float]]:
    """对每个 D：随机 q、k（分量 ~ N(0,1)）点积的标准差，以及 16 个键里最大 softmax 权重的平均值（除不除 √D）。"""
    generator = torch.Generator().manual_seed(seed)
    table = {"std_raw": [], "std_scaled": [], "max_raw": [], "max_scaled": []}
    for D in DIMS:
        q = torch.randn(TRIALS, 1, D, generator=generator)
        k = torch.randn(TRIALS, N_KEYS, D, generator=generator)
        scores = (q * k).sum(-1)                                     # (TRIALS, N_KEYS)
        scaled = scores / math.sqrt(D)
        table["std_raw"].append(scores.std().item())
        table["std_scaled"].append(scaled.std().item())
        table["max_raw"].append(scores.softmax(-1).max(-1).values.mean().item())
        table["max_scaled"].append(scaled.softmax(-1).max(-1).values.mean().item())
    return table


def draw_softmax_saturation(path: Path) -> None:
    table = saturation_table()
    setup()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)

    left.plot(DIMS, table["std_raw"], "o-", color="#d62728", label="q.k")
    left.plot(DIMS, [math.sqrt(d) for d in DIMS], ":", color="#d62728", alpha=0.6, label="sqrt(D)")
    left.plot(DIMS, table["std_scaled"], "o-", color="#1f77b4", label="q.k / sqrt(D)")
    left.set_xscale("log", base=2)
    left.set_yscale("log", base=2)
    left.set_xlabel("head dimension D")
    left.set_ylabel("std of the score")
    left.set_title("Scores grow like sqrt(D)", fontsize=9)
    left.legend(fontsize=7)

    right.plot(DIMS, table["max_raw"], "o-", color="#d62728", label="softmax(q.k)")
    right.plot(DIMS, table["max_scaled"], "o-", color="#1f77b4", label="softmax(q.k / sqrt(D))")
    right.axhline(1 / N_KEYS, color="grey", ls="--", lw=1, label=f"uniform 1/{N_KEYS}")
    right.set_xscale("log", base=2)
    right.set_ylim(0, 1.05)
    right.set_xlabel("head dimension D")
    right.set_ylabel(f"largest weight among {N_KEYS} keys")
    right.set_title("Unscaled softmax saturates", fontsize=9)
    right.legend(fontsize=7, loc="center right")
    save(fig, path)


FIGURES = {
    "ch02_causal_weights.png": draw_causal_weights,
    "ch02_softmax_saturation.png": draw_softmax_saturation,
}
