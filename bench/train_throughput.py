"""训练吞吐：TowerGPT 对 transformers 的 LlamaForCausalLM，同尺寸、同权重、同一个进程里交替计时。

    pip install -e ".[hf]"                     # transformers 是可选依赖
    python bench/train_throughput.py           # 默认：6 层、384 宽、词表 8000、序列 256、批 8；fp32 与 bf16
    python bench/train_throughput.py --dtypes bf16 --compile
    python bench/train_throughput.py --preset base --vocab 32000 --seq 1024 --batch 16 --dtypes bf16 --compile \
        --peak-tflops 790                      # GPU：见 bench/gpu.sh；给了峰值就算“占峰值的比例”（MFU）

每一步对两边都一样：前向 → 交叉熵（logits 转 fp32 再算；TowerGPT 默认分块算，见 --loss-chunk-tokens）→ 反向 → 梯度裁剪到 1.0 → AdamW 更新。
bf16 指 CPU/GPU 上的 bf16 autocast（权重和优化器状态仍是 fp32，矩阵乘用 bf16）。
每种精度先各热身几步，再交替测 --rounds 轮、每轮 --steps 步，取中位数；比值 = TowerGPT / transformers。
结果打印成表，写进 bench/results/train_throughput.json。
"""

from __future__ import annotations

import argparse
import contextlib
import os

import torch
import torch.nn.functional as F

from peers import (add_shape_args, alternate, machine_info, median, model_pair, print_table, shape_from_args,
                   timed, write_report)
from towergpt.model import GPT, GPTConfig


def ours_loss(model, inputs, targets):
    _, loss = model(inputs, targets)
    return loss


def peer_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def make_step(model, loss_fn, batch, dtype: str, device: str):
    """返回一个“训练一步”的函数（两边用同一个写法，只有前向和算损失不同）。"""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1,
                                  fused=device == "cuda" or None)
    inputs, targets = batch

    def step():
        context = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with context:
            loss = loss_fn(model, inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def measure(config: GPTConfig, args, dtype: str) -> dict:
    if args.compile:
        torch._dynamo.reset()   # 每种精度重新编译：避免上一种精度留下的编译缓存触发重编译上限
    ours, peer = model_pair(config, seed=args.seed)
    ours.loss_chunk_tokens = args.loss_chunk_tokens     # 训练时的默认（train.loss_chunk_tokens）；0 = 整批 logits
    ours.to(args.device).train()
    peer.to(args.device).train()
    if args.compile:
        ours, peer = torch.compile(ours), torch.compile(peer)
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config.vocab_size, (args.batch, config.max_seq_len + 1), generator=generator)
    batch = (tokens[:, :-1].to(args.device), tokens[:, 1:].to(args.device))

    steps = {name: make_step(model, loss_fn, batch, dtype, args.device)
             for name, model, loss_fn in (("ours", ours, ours_loss), ("peer", peer, peer_loss))}
    for _ in range(args.warmup):          # 热身：第一次分配内存、（编译时）编译，都不该算进吞吐
        steps["ours"]()
        steps["peer"]()

    def run(name):
        return lambda: timed(lambda: [steps[name]() for _ in range(args.steps)])

    ours_s, peer_s = alternate(run("ours"), run("peer"), args.rounds)
    tokens_per_round = args.steps * args.batch * config.max_seq_len
    ours_tps = tokens_per_round / median(ours_s)
    peer_tps = tokens_per_round / median(peer_s)
    row = {"dtype": dtype, "compile": args.compile, "towergpt_tok_s": ours_tps, "transformers_tok_s": peer_tps,
           "ratio": ours_tps / peer_tps, "rounds_s": {"towergpt": ours_s, "transformers": peer_s}}
    if args.peak_tflops:
        # 占峰值的比例（MFU）：每 token 的训练 FLOPs × tokens/s ÷ 实测的矩阵乘峰值。两边是同一个模型，FLOPs 相同。
        flops = model_flops_per_token(config)
        row["towergpt_fraction_of_peak"] = flops * ours_tps / (args.peak_tflops * 1e12)
        row["transformers_fraction_of_peak"] = flops * peer_tps / (args.peak_tflops * 1e12)
    return row


def model_flops_per_token(config: GPTConfig) -> int:
    with torch.device("meta"):   # 只为数参数：在 meta 设备上建模型，不分配内存
        return GPT(config).flops_per_token(config.max_seq_len)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dtypes", default="fp32,bf16", help="逗号分隔：fp32,bf16")
    parser.add_argument("--compile", action="store_true", help="两边都 torch.compile")
    parser.add_argument("--loss-chunk-tokens", type=int, default=1024,
                        help="TowerGPT 的输出头 + 交叉熵每块多少个位置（训练的默认 1024；0 = 不分块，和 transformers 一样）")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="每轮每边的步数")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="实测的 bf16 矩阵乘峰值（TFLOP/s，见 bench/matmul_peak.py），用来算占峰值的比例")
    parser.add_argument("--out", default="bench/results/train_throughput.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = shape_from_args(args)
    results = []
    for dtype in args.dtypes.split(","):
        results.append(measure(config, args, dtype))
        row = results[-1]
        print(f"{dtype}: TowerGPT {row['towergpt_tok_s']:,.0f} tok/s, transformers "
              f"{row['transformers_tok_s']:,.0f} tok/s, ratio {row['ratio']:.2f}", flush=True)
        if args.peak_tflops:
            print(f"  占峰值 / fraction of peak: TowerGPT {row['towergpt_fraction_of_peak']:.1%}, "
                  f"transformers {row['transformers_fraction_of_peak']:.1%}", flush=True)

    print()
    print_table(["dtype", "compile", "TowerGPT tok/s", "transformers tok/s", "ratio"],
                [[r["dtype"], r["compile"], r["towergpt_tok_s"], r["transformers_tok_s"], r["ratio"]]
                 for r in results])
    write_report(args.out, {"benchmark": "train_throughput", "machine": machine_info(),
                            "shape": config.to_dict() | {"batch": args.batch}, "args": vars(args),
                            "results": results})


if __name__ == "__main__":
    main()
