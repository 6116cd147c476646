"""训练一步的时间花在哪：用 torch.profiler 按算子类别汇总（TowerGPT 与 transformers 各一份）。

    python bench/profile_train.py                      # 默认与 train_throughput.py 同形状，bf16
    python bench/profile_train.py --dtype fp32 --steps 3

输出每个实现的“算子类别 → 每步毫秒数、占比”，用来解释吞吐比值：两边都花在同样的矩阵乘上时，
差别只能来自矩阵乘以外的部分（交叉熵、注意力、逐元素运算、autocast 的类型转换）。
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from peers import add_shape_args, model_pair, shape_from_args
from train_throughput import make_step, ours_loss, peer_loss

# 算子名（aten::xxx）→ 类别；没列出的归为“其他逐元素”
CATEGORIES = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm"),
    "cross-entropy": ("aten::_log_softmax", "aten::_log_softmax_backward_data", "aten::nll_loss",
                      "aten::nll_loss_backward", "aten::nll_loss_forward"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "dtype casts / copies": ("aten::copy_", "aten::_to_copy"),
    "zero fills": ("aten::fill_", "aten::zero_"),
    "optimizer": ("aten::_foreach_", "aten::lerp_", "aten::addcdiv_", "aten::addcmul_", "aten::sqrt"),
}


def categorize(name: str) -> str:
    for category, prefixes in CATEGORIES.items():
        if any(name.startswith(prefix) for prefix in prefixes):
            return category
    return "other elementwise"


def profile_steps(step, steps: int) -> dict[str, float]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):
            totals[categorize(event.key)] += event.self_cpu_time_total / 1000 / steps   # 毫秒 / 步
    return dict(totals)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    add_shape_args(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    config = shape_from_args(args)
    ours, peer = model_pair(config)
    tokens = torch.randint(0, config.vocab_size, (args.batch, args.seq + 1), generator=torch.Generator().manual_seed(0))
    batch = (tokens[:, :-1], tokens[:, 1:])
    steps = {}
    for name, model, loss_fn in (("TowerGPT", ours, ours_loss), ("transformers", peer, peer_loss)):
        steps[name] = make_step(model.train(), loss_fn, batch, args.dtype, "cpu")
        for _ in range(2):
            steps[name]()
    # 两边一步一步交替地测（A B A B …），再把各自的毫秒数平均：机器忽快忽慢时两边吃到同样的噪声
    results = {name: defaultdict(float) for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            for category, ms in profile_steps(step, 1).items():
                results[name][category] += ms / args.steps

    categories = sorted({c for r in results.values() for c in r}, key=lambda c: -results["TowerGPT"].get(c, 0))
    print(f"| category ({args.dtype}, ms/step) | TowerGPT | transformers |")
    print("|---|---|---|")
    for category in categories:
        print(f"| {category} | {results['TowerGPT'].get(category, 0):.0f} | {results['transformers'].get(category, 0):.0f} |")
    print(f"| **total (aten self time)** | {sum(results['TowerGPT'].values()):.0f} | "
          f"{sum(results['transformers'].values()):.0f} |")


if __name__ == "__main__":
    main()
