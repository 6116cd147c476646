"""学习率曲线：线性预热，再余弦衰减到 min_lr；以及把曲线上的值写进优化器。

训练循环每步把学习率曲线的值写进每个参数组：group["lr"] = lr（set_learning_rate 做的就是这件事）。
所有优化器的所有组都按这同一条曲线走。Muon 的组另带 lr_scale = muon_lr / lr，
Muon 真正用的步长 = group["lr"] × lr_scale，在 MuonWithAdamW.step() 里才乘上（见 muon.py）。
所以 group["lr"] 永远是“曲线上的值”，循环不需要知道用的是哪个优化器。
"""

from __future__ import annotations

import math

from towergpt.config import OptimConfig


def learning_rate(step: int, config: OptimConfig, max_steps: int, time_progress: float | None = None) -> float:
    """第 step 步（1 起）的学习率：线性预热到 lr，再按余弦曲线降到 min_lr。

    预热：刚开始参数是随机的，梯度方向很乱，大步长容易把模型“打崩”，所以先小后大。
    余弦衰减：训练后期用小步长在谷底细调，最终损失更低。

    衰减走到了哪里（progress，0 到 1）：按步数是 (step − 预热) / (max_steps − 预热)；
    有时间预算时（train.max_minutes，见 train/budget.py）另有按时间算的 time_progress。
    max_steps = 0 表示不限步数，只看时间；两者都有时取更靠后的那个（谁先用完听谁的）。
    """
    if config.warmup_steps > 0 and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    progress = 0.0
    if max_steps > 0:
        decay_steps = max(1, max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    if time_progress is not None:
        progress = max(progress, time_progress)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 从 1 平滑降到 0
    return config.min_lr + (config.lr - config.min_lr) * cosine


def set_learning_rate(optimizer, lr: float) -> None:
    """把学习率曲线在这一步的值写进每个参数组。对所有优化器都是同一件事：group["lr"] = lr。

    Muon 的组不用特殊处理：MuonWithAdamW.step() 会在更新时再乘上它的 lr_scale（= muon_lr / lr）。
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
