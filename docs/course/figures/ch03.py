"""第 3 章的图：RoPE 是旋转。用包自己的 rope_tables / apply_rope 算，不依赖 course/ 里的任何东西：
    ch03_rope_rotation.png   左：一个 8 维向量的两对维度在位置 0..8 被转到哪里；右：64 维的头里每对维度转一圈要多少个位置
    ch03_rope_relative.png   两个固定的向量 q、k 分别放在位置 m、n，转完后的点积 q·k 画成 (m, n) 的热图：沿对角线不变
标签用英文：这台机器没有中文字体（汉字会显示成方框）。
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from figures.common import figure, plt, save, setup   # docs/course 在 sys.path 上（make_figures.py 与测试都是）
from towergpt.model import apply_rope, rope_tables

THETA = 10000.0


def rotated_at_positions(x: torch.Tensor, positions: int) -> torch.Tensor:
    """x (D,) 放在位置 0..positions-1，用 apply_rope 转完：(positions, D)。"""
    cos, sin = rope_tables(x.shape[-1], positions, THETA)           # (positions, D)
    return apply_rope(x.expand(positions, -1), cos, sin)


def draw_rope_rotation(path: Path) -> None:
    setup()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)

    D, n = 8, 9
    x = torch.tensor([1.0, 0.45, 0.3, 0.2, 0.0, 0.0, 0.1, 0.1])      # 第 i 维与第 i + D/2 维配成一对
    rotated = rotated_at_positions(x, n)
    for pair, color in ((0, "#d62728"), (1, "#1f77b4")):
        a, b = rotated[:, pair], rotated[:, pair + D // 2]
        speed = THETA ** (-2 * pair / D)
        left.plot(a, b, "o", color=color, ms=4, label=f"dims ({pair}, {pair + D // 2}): {speed:g} rad/pos")
        for p in range(n):
            left.annotate("", xy=(a[p], b[p]), xytext=(0, 0),
                          arrowprops=dict(arrowstyle="-|>", color=color, lw=0.8, alpha=0.35 + 0.65 * (p == 0)))
            left.text(a[p] * 1.13, b[p] * 1.13, str(p), color=color, fontsize=7, ha="center", va="center")
        circle = plt.Circle((0, 0), math.hypot(x[pair].item(), x[pair + D // 2].item()), fill=False,
                            color=color, lw=0.5, ls=":")
        left.add_patch(circle)
    left.set_aspect("equal")
    left.set_xlim(-1.3, 1.3)
    left.set_ylim(-1.3, 1.3)
    left.set_xlabel("first dim of the pair")
    left.set_ylabel("second dim of the pair")
    left.set_title("One vector at positions 0..8", fontsize=9)
    left.legend(fontsize=6, loc="lower left")

    D, context = 64, 256                                             # tiny 预设的 head_dim 和 max_seq_len
    cos, sin = rope_tables(D, 2, THETA)
    speed = torch.atan2(sin[1, :D // 2], cos[1, :D // 2])             # 位置 1 处每对转过的角度 = 每个位置的角速度
    wavelength = 2 * math.pi / speed
    right.semilogy(range(D // 2), wavelength, "o-", ms=3, color="#2ca02c")
    right.axhline(context, color="grey", ls="--", lw=1, label=f"context length {context}")
    right.set_xlabel(f"pair index i (of D/2 = {D // 2})")
    right.set_ylabel("positions per full turn (2 pi / angle)")
    right.set_title(f"D={D}, theta={THETA:g}: fast pairs -> slow pairs", fontsize=9)
    right.legend(fontsize=7)
    save(fig, path)


def relative_scores(D: int = 64, n: int = 48, seed: int = 0) -> torch.Tensor:
    """score[m, n] = (q 放在位置 m 转完) · (k 放在位置 n 转完)，q、k 是固定的随机向量。"""
    generator = torch.Generator().manual_seed(seed)
    q, k = torch.randn(D, generator=generator), torch.randn(D, generator=generator)
    return rotated_at_positions(q, n) @ rotated_at_positions(k, n).T   # (n, n)


def draw_rope_relative(path: Path) -> None:
    scores = relative_scores()
    fig, ax = figure(6.4, 3.8)
    image = ax.imshow(scores.numpy(), cmap="RdBu_r", vmin=-scores.abs().max(), vmax=scores.abs().max())
    ax.set_xlabel("position n of the key k")
    ax.set_ylabel("position m of the query q")
    ax.set_title("q.k after RoPE: every diagonal (same m - n) has one colour", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    save(fig, path)


FIGURES = {
    "ch03_rope_rotation.png": draw_rope_rotation,
    "ch03_rope_relative.png": draw_rope_relative,
}
