"""Muon 的 Newton–Schulz 迭代在没有 bf16 运算单元的 CPU 上改用 fp32 —— 否则慢一百倍。

torch.optim.Muon 把每个矩阵的动量先转成 bfloat16 再做五次 Newton–Schulz 迭代（每次三个矩阵乘）。
在 GPU 和带 AMX / AVX512-BF16 的 CPU 上这是对的：bf16 矩阵乘比 fp32 快好几倍，精度也够
（迭代本来就只求“近似正交”）。但在只有 AVX2 的 CPU 上（很多笔记本、AMD EPYC 的云主机），
PyTorch 没有 bf16 的矩阵乘内核，只能逐个元素转换着算：实测 1024×1024 的 bf16 矩阵乘约 0.85 GFLOP/s，
fp32 约 80 GFLOP/s，差一百倍。结果是 tiny 预设每步 9 秒（AdamW 只要 2 秒），quickstart 在这种机器上
8 分钟只训练出十分之一的步数。

办法：在这种 CPU 上，Muon 每次 step() 期间把 torch 里那个做迭代的函数换成下面的 fp32 版本
（同一个算法、同样的系数，只是不降精度），step() 结束立即换回。换的是 torch 的私有函数
`torch.optim._muon._zeropower_via_newtonschulz`：以后的 torch 改了名字，就退回原样（照旧用 bf16，
只是慢），并打印一行提醒，而不是出错。tests/test_optimizers.py 核对：fp32 版本与 torch 的 bf16 版本
只差 bf16 的舍入；这种 CPU 上 Muon 的一步里没有任何 bf16 矩阵乘；换回后 torch 的函数原样不动。
"""

from __future__ import annotations

import contextlib
import sys

import torch

from towergpt.train.precision import cpu_supports_bf16

try:
    from torch.optim import _muon as torch_muon
except ImportError:  # torch < 2.9 没有 Muon（build_muon 会先报错），这里不必再管
    torch_muon = None

PATCHED_NAME = "_zeropower_via_newtonschulz"


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int,
                       eps: float) -> torch.Tensor:
    """把矩阵 grad (m, n) 变成“近似正交”的同形矩阵：奇异向量不变，奇异值都拉到 1 附近。

    与 torch 的实现同一个五次迭代 X ← aX + (bA + cA²)X，其中 A = XXᵀ：
    先除以范数让所有奇异值 ≤ 1；m > n 时先转置，让 A 是较小的那个方阵（n × n 比 m × m 便宜）。
    唯一的区别：全程 fp32（torch 用 bf16）。
    """
    a, b, c = ns_coefficients
    x = grad.float()
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = x @ x.T                                        # A = XXᵀ：(短边, 短边)
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)   # bA + cA²
        x = torch.addmm(x, update, x, beta=a)                 # aX + (bA + cA²)X
    return x.T if tall else x


def needs_fp32_newton_schulz(device: torch.device) -> bool:
    """只在没有 bf16 运算单元的 CPU 上换成 fp32（GPU 和带 AMX / AVX512-BF16 的 CPU 上 bf16 更快）。"""
    return device.type == "cpu" and not cpu_supports_bf16()


_warned = False


@contextlib.contextmanager
def newton_schulz_in_fp32():
    """在这个 with 块里，torch.optim.Muon 用 fp32 做 Newton–Schulz；出了块（包括出错时）换回原来的函数。"""
    global _warned
    original = getattr(torch_muon, PATCHED_NAME, None)
    if original is None:
        if not _warned:
            print("提醒：这个版本的 torch 里找不到 Muon 的 Newton–Schulz 函数，仍用 bf16（这台 CPU 上会很慢）/ "
                  "note: cannot switch Muon's Newton-Schulz to fp32 in this torch; bf16 on this CPU is slow",
                  file=sys.stderr)
            _warned = True
        yield
        return
    setattr(torch_muon, PATCHED_NAME, newton_schulz_fp32)
    try:
        yield
    finally:
        setattr(torch_muon, PATCHED_NAME, original)
