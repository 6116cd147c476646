"""实测矩阵乘峰值：n×n×n 的矩阵乘，热身 3 次后计 10 次的平均 TFLOP/s（fp32 与 bf16）。

    python bench/matmul_peak.py                    # CPU 默认 n=2048；GPU 默认 n=8192
    python bench/matmul_peak.py --out bench/results/matmul_peak.json

“占峰值的比例”（MFU）要除以一个峰值：用这台机器上实测的，而不是厂商标称的。
"""

from __future__ import annotations

import argparse
import time

import torch

from peers import machine_info, write_report


def matmul_tflops(n: int, dtype: torch.dtype, device: str, repeats: int = 10) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e12


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--out", default="bench/results/matmul_peak.json")
    args = parser.parse_args(argv)
    n = args.n or (8192 if args.device == "cuda" else 2048)
    result = {"n": n, "device": args.device}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        result[f"{name}_tflops"] = matmul_tflops(n, dtype, args.device)
        print(f"{name}: {result[f'{name}_tflops']:.2f} TFLOP/s", flush=True)
    write_report(args.out, {"benchmark": "matmul_peak", "machine": machine_info(), "result": result})


if __name__ == "__main__":
    main()
