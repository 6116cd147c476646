"""第 7 章的图：DPO 的损失随奖励差怎样变（几种 β），以及 GRPO 一组回答的组内优势。

都用包自己的函数算（towergpt.train.dpo.dpo_loss、towergpt.train.grpo.group_advantages），不依赖 course/ 里的模型。
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))   # make_figures 按文件载入本模块：让 common 可以 import
from common import save, setup  # noqa: E402


def _dpo_curves(path):
    import matplotlib.pyplot as plt

    from towergpt.train.dpo import dpo_loss

    setup()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)
    delta = torch.linspace(-10, 10, 201)            # Δ = [log π(y_w) − log π(y_l)] − [参考模型的同一个差]
    for beta in (0.1, 0.5, 1.0):
        losses, weights = [], []
        for d in delta:
            chosen = d.clone().requires_grad_(True)  # 把整个 Δ 放在“策略模型的 chosen”上，其余三个为 0
            zero = torch.zeros(1)
            loss, _ = dpo_loss(chosen.view(1), zero, zero, zero, beta=beta)
            loss.backward()
            losses.append(loss.item())
            weights.append(float(chosen.grad))      # ∂损失/∂log π(y_w) = −β·σ(−z)
        left.plot(delta, losses, label=f"beta={beta:g}")
        right.plot(delta, [-w / beta for w in weights], label=f"beta={beta:g}")
    left.axhline(math.log(2), color="gray", lw=0.8, ls="--")
    left.annotate("ln 2 = 0.693 at the start", (0.3, math.log(2) + 0.15), fontsize=8, color="gray")
    left.set_xlabel("log-ratio margin  delta")
    left.set_ylabel("DPO loss = -log sigmoid(beta * delta)")
    left.set_title("loss", fontsize=10)
    left.legend(fontsize=8)
    right.set_xlabel("log-ratio margin  delta")
    right.set_ylabel("push on the pair  sigmoid(-beta * delta)")
    right.set_title("push on a pair = |grad| / beta", fontsize=10)
    right.legend(fontsize=8)
    save(fig, path)


def _group_advantages(path):
    import matplotlib.pyplot as plt

    from towergpt.train.grpo import group_advantages

    setup()
    rewards = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0],
                            [1, 1, 1, 1, 0, 0, 0, 0],
                            [1, 1, 1, 1, 1, 1, 1, 0],
                            [1, 1, 1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    advantages = group_advantages(rewards)           # (B, G)：每行减去行均值、除以行标准差
    fig, axes = plt.subplots(1, 4, figsize=(6.4, 3.6), dpi=100, sharey=True)
    for ax, r, a in zip(axes, rewards, advantages):
        colors = ["tab:green" if x > 0 else ("tab:red" if x < 0 else "gray") for x in a]
        ax.bar(range(8), a.numpy(), color=colors)
        ax.scatter(range(8), r.numpy(), marker="o", color="black", s=12, zorder=3, label="reward")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_title(f"{int(r.sum())}/8 correct", fontsize=9)
        ax.set_xticks(range(8))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("answer in the group", fontsize=8)
    axes[0].set_ylabel("advantage (bars), reward (dots)")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[-1].annotate("all equal:\nno signal", (1.0, 0.4), fontsize=8, color="gray")
    save(fig, path)


FIGURES = {
    "ch07_dpo_loss.png": _dpo_curves,
    "ch07_group_advantages.png": _group_advantages,
}
