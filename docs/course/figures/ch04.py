"""第 4 章的图：学习率曲线（包自己的 learning_rate / decay_progress 算出），初始化时每个 token 的损失与 ln V。

不读 course/ 里的任何东西：曲线是纯计算，损失用一个按 tiny 预设搭的、随机初始化的模型和随机 token 算。
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from towergpt.config import load_config  # noqa: E402
from towergpt.model import GPT  # noqa: E402
from towergpt.train.budget import BudgetState, decay_progress  # noqa: E402
from towergpt.train.optim import learning_rate  # noqa: E402


def _course_optim(warmup_steps: int):
    """tiny 预设 + quickstart 的预训练设置（lr 0.003、min_lr 0.0002），预热步数另给。"""
    return load_config("tiny", ["optim.lr=0.003", f"optim.warmup_steps={warmup_steps}"]).optim


def _time_curve(optim, budget_s: float, step_s: float):
    """按时间预算训练时每一步的 (开始时刻, 学习率)：模拟每步 step_s 秒的机器，和训练循环的记账一样。"""
    state = BudgetState()
    times, rates = [], []
    step = 0
    while state.used_s + step_s <= budget_s:
        step += 1
        rate = learning_rate(step, optim, 0, decay_progress(state, budget_s))
        times.append(state.used_s)
        rates.append(rate)
        state.used_s += step_s
        if step == optim.warmup_steps:
            state.warmup_end_s = state.used_s
    return times, rates


def draw_lr_schedule(path: Path) -> None:
    common.setup()
    fig, (left, right) = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100)

    optim = _course_optim(warmup_steps=50)
    steps = list(range(1, 501))
    left.plot(steps, [learning_rate(s, optim, 500) for s in steps], color="tab:blue")
    left.axvline(optim.warmup_steps, color="gray", linestyle=":", linewidth=1)
    left.axhline(optim.min_lr, color="gray", linestyle="--", linewidth=0.8)
    left.set_title("by steps: max_steps=500\nwarmup 50 steps", fontsize=9)
    left.set_xlabel("step")
    left.set_ylabel("learning rate (optim.lr)")
    left.text(optim.warmup_steps + 8, optim.lr * 0.95, "warmup ends", fontsize=7, color="gray")
    left.text(300, optim.min_lr + 1e-4, "min_lr", fontsize=7, color="gray")

    optim = _course_optim(warmup_steps=10)
    for step_s, color, label in ((0.5, "tab:green", "fast machine, 0.5 s/step"),
                                 (1.0, "tab:orange", "slow machine, 1.0 s/step")):
        times, rates = _time_curve(optim, 45.0, step_s)
        right.plot(times, rates, marker=".", markersize=3, color=color, label=f"{label} ({len(times)} steps)")
    right.set_title("by time: max_minutes=0.75 (45 s)\nwarmup 10 steps", fontsize=9)
    right.set_xlabel("seconds used of the 45 s budget")
    right.legend(fontsize=7, loc="upper right")
    for axis in (left, right):
        axis.tick_params(labelsize=7)
        axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, -3))
    common.save(fig, path)


def draw_init_loss(path: Path) -> None:
    """tiny 预设（词表 8000）随机初始化：16×256 个随机 token 上每个位置的损失的直方图。"""
    config = load_config("tiny", ["model.vocab_size=8000"]).model
    torch.manual_seed(0)
    model = GPT(config).eval()
    vocab = config.vocab_size
    x = torch.randint(0, vocab, (16, 256))
    y = torch.randint(0, vocab, (16, 256))
    with torch.no_grad():
        losses = -model(x, y, per_token=True).flatten()                  # 每个位置的 -log p(正确的 token)
    fig, axis = common.figure()
    axis.hist(losses.numpy(), bins=60, color="tab:blue", alpha=0.8)
    axis.axvline(math.log(vocab), color="tab:red", linewidth=2, label=f"ln V = ln {vocab} = {math.log(vocab):.3f}")
    axis.axvline(float(losses.mean()), color="black", linestyle="--", linewidth=1,
                 label=f"mean loss = {float(losses.mean()):.3f}")
    axis.set_xlabel("per-token loss  -log p(target)  at initialisation (nats)")
    axis.set_ylabel("number of positions")
    axis.set_title("A random-init model is almost uniform: loss ~ ln V", fontsize=10)
    axis.legend(fontsize=8)
    common.save(fig, path)


FIGURES = {"ch04_lr_schedule.png": draw_lr_schedule, "ch04_init_loss.png": draw_init_loss}
