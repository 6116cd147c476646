"""第 10 章的图：base 预设训练一步时显存里有什么；各种设置下峰值随微批次怎样涨、哪张卡放得下。

全部由内存估计器（towergpt/train/memory_estimate.py 的 estimate_memory）算出，与
`towergpt pretrain --config base --dry-run --set train.device=cuda` 打印的是同一组数；不构造模型、不需要 GPU。
设置同 docs/memory.md 的表：bf16 混合精度、AdamW、词表 32000、序列 1024。
"""

from __future__ import annotations

import torch

from figures.common import figure, save
from towergpt.config import load_config
from towergpt.train.memory_estimate import GIB, estimate_memory

# (标签, 激活检查点, 分块损失每块几个位置；0 = 不分块)
SETTINGS = [("plain", False, 0), ("+ activation\ncheckpointing", True, 0), ("+ chunked loss\n(4096)", False, 4096),
            ("both", True, 4096)]


def estimate(micro_batch: int, checkpointing: bool, chunk: int):
    config = load_config("base", ["model.vocab_size=32000", f"train.micro_batch_size={micro_batch}",
                                  f"train.activation_checkpointing={str(checkpointing).lower()}",
                                  f"train.loss_chunk_tokens={chunk}"])
    return estimate_memory(config, "pretrain", torch.bfloat16, "cuda")


def draw_parts(path) -> None:
    """微批次 8 时的各项：常驻的（权重、优化器状态）+ 反向刚开始那一刻的（激活、logits）；黑线是峰值。"""
    fig, ax = figure()
    parts = [("weights", "weights", "tab:blue"), ("optimizer state", "optimizer", "tab:orange"),
             ("activations", "activations", "tab:green"), ("logits", "logits", "tab:red")]
    for x, (label, checkpointing, chunk) in enumerate(SETTINGS):
        e = estimate(8, checkpointing, chunk)
        bottom = 0.0
        for name, field, color in parts:
            height = getattr(e, field) / GIB
            ax.bar(x, height, bottom=bottom, color=color, width=0.6, label=name if x == 0 else None)
            bottom += height
        ax.hlines(e.peak / GIB, x - 0.38, x + 0.38, color="black", linewidth=2,
                  label="estimated peak" if x == 0 else None)
        ax.text(x, e.peak / GIB + 0.25, f"{e.peak / GIB:.1f}", ha="center", fontsize=8)
    ax.set_xticks(range(len(SETTINGS)), [label for label, _, _ in SETTINGS], fontsize=8)
    ax.set_ylabel("GiB per process")
    ax.set_title("base (125M), micro-batch 8 x 1024 tokens, bf16, AdamW", fontsize=10)
    ax.legend(fontsize=7)
    save(fig, path)


def draw_fit(path) -> None:
    """峰值随微批次的变化，横线是 8 / 24 / 80 GB 的卡可用的部分（减 1 GiB 再留 10%，同 docs/memory.md）。"""
    fig, ax = figure()
    batches = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    for label, checkpointing, chunk in SETTINGS:
        ax.plot(batches, [estimate(b, checkpointing, chunk).peak / GIB for b in batches], marker="o",
                markersize=3, label=label.replace("\n", " "))
    for card in (8, 24, 80):
        usable = (card - 1) * 0.9
        ax.axhline(usable, color="gray", linestyle="--", linewidth=1)
        ax.text(1, usable * 1.05, f"{card} GB card", fontsize=7, color="gray")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("train.micro_batch_size (rows of 1024 tokens)")
    ax.set_ylabel("estimated peak, GiB")
    ax.set_title("base preset: which micro-batch fits which card", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, 0.93))
    save(fig, path)


FIGURES = {"ch10_memory_parts.png": draw_parts, "ch10_micro_batch.png": draw_fit}
