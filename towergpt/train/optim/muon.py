"""Muon：正交化的动量（Jordan et al. 2024，torch.optim.Muon）+ AdamW，包成一个优化器。

Muon 对每个隐藏层矩阵：先做动量 B ← μB + G，再用几次 Newton–Schulz 迭代把 B 变成“近似正交”的矩阵 O
（奇异值都拉到 1 附近，方向不变），W ← W - lr·O。直觉：梯度矩阵往往被少数几个大奇异方向主导，
正交化让每个方向都走相近的一步，那些“小而重要”的方向也学得动。它只存一份动量（AdamW 存两份）。
Muon 只为二维的隐藏层矩阵设计；词向量、输出头、归一化层交给 AdamW —— 于是一次训练用两个优化器，
MuonWithAdamW 把它们包成一个，训练循环看不出区别。
"""

from __future__ import annotations

import contextlib

import torch

from towergpt.config import OptimConfig
from towergpt.errors import TowerGPTError
from towergpt.train.optim.groups import split_by_decay, split_hidden_matrices
from towergpt.train.optim.newton_schulz import needs_fp32_newton_schulz, newton_schulz_in_fp32
from towergpt.train.optim.state import state_mismatch_error

MUON_ADJUST_LR = ("original", "match_rms_adamw")


def build_muon(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> "MuonWithAdamW":
    """optim.name = muon 时的优化器：隐藏层矩阵给 Muon，其余参数给 AdamW。"""
    muon_class = getattr(torch.optim, "Muon", None)
    if muon_class is None:
        raise TowerGPTError(
            f"optim.name=muon 需要 PyTorch ≥ 2.9（提供 torch.optim.Muon），当前是 {torch.__version__} / "
            f"optim.name=muon needs torch >= 2.9 (torch.optim.Muon); installed: {torch.__version__}"
        )
    hidden, rest = split_hidden_matrices(model)
    muon = muon_class(
        # lr 先填曲线的峰值 lr：group["lr"] 永远是“曲线上的值”，step() 时再乘 lr_scale
        [{"name": "muon", "params": [param for _, param in hidden], "lr_scale": config.muon_lr / config.lr}],
        lr=config.lr, weight_decay=config.muon_weight_decay, momentum=config.muon_momentum,
        nesterov=config.muon_nesterov, ns_steps=config.muon_ns_steps, adjust_lr_fn=config.muon_adjust_lr,
    )
    adamw = torch.optim.AdamW(
        split_by_decay([param for _, param in rest], config.weight_decay), lr=config.lr,
        betas=(config.beta1, config.beta2), eps=config.eps, fused=device.type == "cuda",
    )
    return MuonWithAdamW(muon, adamw, fp32_newton_schulz=needs_fp32_newton_schulz(device))


class MuonWithAdamW:
    """把 Muon（隐藏层矩阵）和 AdamW（其余参数）包成“一个”优化器。

    训练循环和 GradScaler 只用到优化器的这几样东西，这里都有：
        param_groups     两个优化器的参数组接在一起（就是它们自己的 dict，改 group["lr"] 直接生效）
        step()           Muon 的组临时把 lr 乘上 lr_scale 再更新，然后 AdamW 更新
        zero_grad()      两个都清
        state_dict()     {"muon": ..., "adamw": ...}：只有张量、数字和字符串，torch.load(weights_only=True) 可读
        state            两个优化器的状态合在一起（只读，用来数内存）
    fp16：GradScaler.unscale_ 按 param_groups 找梯度做反缩放、查 inf，scaler.step 在没有 inf 时调用 step()，
    所以 float16 + GradScaler 也能用；float32 / bfloat16 时 scaler 不启用，直接调用 step()。
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer, fp32_newton_schulz: bool = False):
        self.muon, self.adamw = muon, adamw
        # 没有 bf16 运算单元的 CPU 上，Newton–Schulz 改用 fp32（快一百倍，见 newton_schulz.py）
        self.fp32_newton_schulz = fp32_newton_schulz
        # lr_scale 以当前配置为准：续训时即使检查点里存的是旧值，也换回现在的 muon_lr / lr
        self.lr_scales = [group["lr_scale"] for group in muon.param_groups]

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scheduled = [group["lr"] for group in self.muon.param_groups]
        try:
            for group, lr in zip(self.muon.param_groups, scheduled):
                group["lr"] = lr * group["lr_scale"]
            with newton_schulz_in_fp32() if self.fp32_newton_schulz else contextlib.nullcontext():
                self.muon.step()
        finally:  # 恢复成曲线上的值：日志、检查点里看到的 lr 与其他优化器一致
            for group, lr in zip(self.muon.param_groups, scheduled):
                group["lr"] = lr
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "adamw"}:
            raise state_mismatch_error("muon", "expected the keys 'muon' and 'adamw'")
        try:
            self.muon.load_state_dict(state_dict["muon"])
            self.adamw.load_state_dict(state_dict["adamw"])
        except (KeyError, ValueError) as error:
            raise state_mismatch_error("muon", error) from None
        for group, scale in zip(self.muon.param_groups, self.lr_scales):
            group["lr_scale"] = scale

    def __repr__(self) -> str:
        return f"MuonWithAdamW(\n{self.muon!r},\n{self.adamw!r}\n)"
