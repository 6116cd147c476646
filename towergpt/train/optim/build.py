"""按 `optim.name` 构造优化器：先校验 optim 节的取值，AdamW 在这里直接构造，GaLore / Muon 交给各自的文件。

返回的对象都有 param_groups、step()、zero_grad()、state_dict()、load_state_dict()、state，
训练循环和 GradScaler 对它们一视同仁。
"""

from __future__ import annotations

import torch

from towergpt.config import OptimConfig
from towergpt.errors import TowerGPTError
from towergpt.train.optim.galore import GALORE_PROJ_TYPES, build_galore
from towergpt.train.optim.groups import parameter_groups
from towergpt.train.optim.muon import MUON_ADJUST_LR, build_muon

OPTIMIZERS = ("adamw", "galore_adamw", "galore_adamw8bit", "muon")


def check_optim_config(config: OptimConfig, where=lambda key: key) -> None:
    """检查 optim 节里和优化器有关的取值；错误信息点名是哪个键。

    where(key) 把 "optim.galore_rank" 变成带位置的描述（config.py 可以传入“文件:行号”的版本）。
    """
    def fail(key: str, rule: str) -> None:
        raise TowerGPTError(f"{where('optim.' + key)}: {rule}，实际是 {getattr(config, key)!r}")

    if config.name not in OPTIMIZERS:
        raise TowerGPTError(f"{where('optim.name')}: 不支持的优化器 / unknown optimizer '{config.name}'"
                            f"（可用 / known: {', '.join(OPTIMIZERS)}）")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0.0 <= getattr(config, key) < 1.0:
            fail(key, "须在 [0, 1) 之间 / must be in [0, 1)")
    for key in ("eps", "weight_decay", "grad_clip", "muon_weight_decay"):
        if getattr(config, key) < 0:
            fail(key, "不能为负 / must not be negative")
    for key in ("galore_rank", "galore_update_proj_gap"):
        if getattr(config, key) < 1:
            fail(key, "必须 ≥ 1 / must be at least 1")
    for key in ("galore_scale", "muon_lr"):
        if not getattr(config, key) > 0:
            fail(key, "必须 > 0 / must be positive")
    if config.galore_proj_type not in GALORE_PROJ_TYPES:
        fail("galore_proj_type", f"只能是 {' / '.join(GALORE_PROJ_TYPES)} / must be one of these")
    if not 1 <= config.muon_ns_steps <= 99:  # torch.optim.Muon 要求少于 100 次
        fail("muon_ns_steps", "须在 1 到 99 之间 / must be in 1..99")
    if config.muon_adjust_lr not in MUON_ADJUST_LR:
        fail("muon_adjust_lr", f"只能是 {' / '.join(MUON_ADJUST_LR)} / must be one of these")


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device):
    """按 optim.name 构造优化器（见模块开头）。"""
    check_optim_config(config)
    if config.name == "adamw":
        # CUDA 上用 fused 实现：一个 kernel 更新所有参数，比逐个张量更新快得多
        return torch.optim.AdamW(
            parameter_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2),
            eps=config.eps, fused=device.type == "cuda",
        )
    if config.name == "muon":
        return build_muon(model, config, device)
    return build_galore(model, config, device)
