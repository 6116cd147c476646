"""混合精度：autocast 用哪种 16 位浮点，以及 fp16 需要的 GradScaler。（选设备见 towergpt/device.py。）

混合精度（autocast）：矩阵乘法用 16 位浮点（快一倍以上、省一半显存），
累加、归一化、损失等对精度敏感的运算仍用 32 位；模型权重本身始终是 32 位“主副本”。

    bfloat16：指数位和 float32 一样多，不会溢出，直接用；CPU（有 AVX512-BF16/AMX）和新 GPU 都支持。
    float16 ：指数位少，小梯度会下溢成 0，需要 GradScaler 先把损失放大、更新前再缩回来。
"""

from __future__ import annotations

import contextlib

import torch

from towergpt.errors import TowerGPTError


def cpu_supports_bf16() -> bool:
    """CPU 是否有 bfloat16 运算单元（没有时 bf16 反而比 fp32 慢）。"""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """把 train.dtype 解析成 autocast 使用的精度；float32 表示不开 autocast。"""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise TowerGPTError("train.dtype=float16 在 CPU 上不受支持，请用 bfloat16 或 float32 / fp16 needs a GPU")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """返回一个上下文：在其中的前向计算使用混合精度。"""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype) -> torch.amp.GradScaler:
    """只有 float16 需要真正的 GradScaler；其余情况返回一个“什么都不做”的 scaler，代码路径统一。"""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
