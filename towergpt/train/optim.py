"""优化器与学习率曲线。

参数分组的规则（与 nanoGPT 相同，一眼可见）：
    2 维及以上的张量（线性层矩阵、词向量表）   做权重衰减
    1 维张量（RMSNorm 的缩放系数、偏置）        不做
权重衰减把权重往 0 拉，相当于正则化；对归一化层的缩放系数这样做没有意义，反而有害。
"""

from __future__ import annotations

import math

import torch

from towergpt.config import OptimConfig
from towergpt.errors import TowerGPTError


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """把可训练参数分成“衰减”和“不衰减”两组（共享的权重只出现一次）。"""
    decay, no_decay = [], []
    for param in model.parameters():  # parameters() 会自动去重共享的权重
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """按 optim.name 构造优化器。"""
    groups = parameter_groups(model, config.weight_decay)
    if config.name == "adamw":
        # CUDA 上用 fused 实现：一个 kernel 更新所有参数，比逐个张量更新快得多
        return torch.optim.AdamW(
            groups, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps,
            fused=device.type == "cuda",
        )
    raise TowerGPTError(f"optim.name: 不支持的优化器 / unknown optimizer '{config.name}'（可用 / known: adamw）")


def learning_rate(step: int, config: OptimConfig, max_steps: int) -> float:
    """第 step 步（1 起）的学习率：线性预热到 lr，再按余弦曲线降到 min_lr。

    预热：刚开始参数是随机的，梯度方向很乱，大步长容易把模型“打崩”，所以先小后大。
    余弦衰减：训练后期用小步长在谷底细调，最终损失更低。
    """
    if config.warmup_steps > 0 and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    decay_steps = max(1, max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 从 1 平滑降到 0
    return config.min_lr + (config.lr - config.min_lr) * cosine
