"""第 8 章的图：温度、top-k、top-p、重复惩罚分别对一个“下一个 token 的分布”做了什么；KV 缓存省掉了多少计算。

分布的变换用包自己的采样函数算（towergpt.generate 的 filter_top_k、filter_top_p、apply_repetition_penalty），
logits 是一个写死的玩具向量，不依赖 course/ 里的模型。
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # make_figures 按文件载入本模块：让 common 可以 import
from common import save, setup  # noqa: E402

# 一个玩具的“下一个 token 打分”（10 个候选，已按从高到低排好，方便看）
TOY_LOGITS = torch.tensor([3.0, 2.6, 2.2, 1.5, 1.0, 0.6, 0.2, -0.3, -0.8, -1.5])


def sampling_panels(logits: torch.Tensor = TOY_LOGITS) -> list[tuple[str, torch.Tensor]]:
    """[(标题, 变换之后的概率 (V,))]：每种变换都用 towergpt.generate 里的函数。"""
    from towergpt.generate import apply_repetition_penalty, filter_top_k, filter_top_p

    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[[0, 2]] = True                                          # 假装 token 0 和 2 已经在上下文里出现过
    return [
        ("original (T = 1)", logits.softmax(-1)),
        ("temperature 0.5", (logits / 0.5).softmax(-1)),
        ("temperature 2", (logits / 2.0).softmax(-1)),
        ("top-k = 3", filter_top_k(logits, 3).softmax(-1)),
        ("top-p = 0.8", filter_top_p(logits, 0.8).softmax(-1)),
        ("repetition penalty 1.5\n(tokens 0 and 2 seen)", apply_repetition_penalty(logits, seen, 1.5).softmax(-1)),
    ]


def _sampling(path):
    import matplotlib.pyplot as plt

    setup()
    original = TOY_LOGITS.softmax(-1)
    fig, axes = plt.subplots(2, 3, figsize=(6.4, 3.9), dpi=100, sharex=True, sharey=True)
    for ax, (title, probs) in zip(axes.flat, sampling_panels()):
        ids = range(len(probs))
        ax.bar(ids, original.numpy(), color="none", edgecolor="lightgray", lw=0.8)        # 原分布作参照
        colors = ["tab:blue" if p > 0 else "white" for p in probs]
        ax.bar(ids, probs.numpy(), color=colors, width=0.6)
        removed = [i for i, p in enumerate(probs) if p == 0]
        ax.scatter(removed, [0.01] * len(removed), marker="x", color="tab:red", s=14)
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[1]:
        ax.set_xlabel("token id (sorted by logit)", fontsize=7)
        ax.set_xticks(range(len(TOY_LOGITS)))
    for ax in axes[:, 0]:
        ax.set_ylabel("probability", fontsize=8)
    fig.suptitle("one next-token distribution; gray outline = original, x = removed", fontsize=8)
    save(fig, path)


def _kv_cache(path):
    import matplotlib.pyplot as plt

    setup()
    prompt, steps = 20, 100
    n = torch.arange(1, steps + 1)
    without = prompt + n - 1                  # 不用缓存：第 n 步把“提示词 + 已生成的 n−1 个”全部重算
    with_cache = torch.ones(steps, dtype=torch.long)
    with_cache[0] = prompt                    # 用缓存：第 1 步预填充整段提示词，之后每步只算 1 个新 token
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)
    left.plot(n, without, label="no cache: whole sequence")
    left.plot(n, with_cache, label="KV cache: 1 new token")
    left.set_xlabel("generation step")
    left.set_ylabel("positions run through the model")
    left.set_title("per step", fontsize=10)
    left.legend(fontsize=8)
    right.plot(n, without.cumsum(0), label="no cache (grows like n^2)")
    right.plot(n, with_cache.cumsum(0), label="KV cache (grows like n)")
    right.set_xlabel("generation step")
    right.set_ylabel("total positions so far")
    right.set_title(f"cumulative (prompt of {prompt} tokens)", fontsize=10)
    right.legend(fontsize=8)
    save(fig, path)


FIGURES = {
    "ch08_sampling.png": _sampling,
    "ch08_kv_cache.png": _kv_cache,
}
