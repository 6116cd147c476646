"""生成速度：TowerGPT 的 KV 缓存解码 对 transformers 的 `generate`，同尺寸、同权重、贪心解码。

    pip install -e ".[hf]"
    python bench/generate.py                   # 批 1 与批 8，各生成 200 个新 token，fp32
    python bench/generate.py --compile         # TowerGPT 用 torch.compile 编译解码（generate --compile）
    python bench/generate.py --compile --batches 1 --profile   # 另把批 1 每个 token 的时间按类别拆开（torch.profiler）

两边的贪心输出必须逐 token 相同，否则比较作废（脚本会报错退出）：相同的输出说明两边算的是同一件事，
速度差只来自实现。批 8 时提示词长短不一，两边都用左 padding + attention_mask。
每种批大小交替测 --rounds 轮取中位数；tokens/s = 批大小 × 新 token 数 / 秒；比值 = TowerGPT / transformers。
floor 是“只做权重矩阵乘”的速度上限（见 weight_read_floor_s），max ratio = floor / transformers：
任何实现对 transformers 的比值都不可能超过它。
结果写进 bench/results/generate.json。
"""

from __future__ import annotations

import argparse
import os

import torch

from peers import (add_shape_args, alternate, machine_info, median, model_pair, print_table, shape_from_args,
                   timed, write_report)
from towergpt.generate import compile_for_decoding, generate, generate_batch_greedy
from towergpt.model import GPTConfig

PAD_ID = 3


def random_prompts(batch: int, vocab: int, seed: int) -> list[list[int]]:
    """长短不一的提示词（8 到 24 个 token），避开特殊 id 0–5。"""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 25, (batch,), generator=generator).tolist()
    return [torch.randint(6, vocab, (n,), generator=generator).tolist() for n in lengths]


def ours_generate(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    if len(prompts) == 1:
        idx = torch.tensor(prompts, dtype=torch.long)
        return [generate(model, idx, new_tokens, temperature=0.0)[0, idx.size(1):].tolist()]
    return generate_batch_greedy(model, prompts, new_tokens, pad_id=PAD_ID)


def peer_generate(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    width = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(idx)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    with torch.inference_mode():
        out = model.generate(input_ids=idx, attention_mask=mask, max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD_ID)
    return out[:, width:].tolist()


def weight_read_floor_s(model, batch: int, repeats: int = 50) -> float:
    """下限：生成一个 token 至少要把每个权重矩阵读一遍、做一次 (batch × C) @ Wᵀ。

    只计这些矩阵乘（不含注意力、归一化、采样），就是任何实现每个 token 的最短时间；
    批 1 时它受内存带宽限制（读权重），与实现写得多好无关。
    """
    matrices = [p.detach() for p in model.parameters() if p.dim() == 2]
    inputs = {m.shape[1]: torch.randn(batch, m.shape[1], dtype=m.dtype) for m in matrices}

    def one_token():
        for matrix in matrices:
            inputs[matrix.shape[1]] @ matrix.t()

    with torch.inference_mode():
        one_token()
        return timed(lambda: [one_token() for _ in range(repeats)]) / repeats


# torch.profiler 的事件名里含有哪段文字 → 类别（按各事件的“自身时间”归类，先匹配上的算；
# 没有任何事件覆盖的时间算作 Python：生成循环本身、采样的小运算之外的解释器开销）
PROFILE_CATEGORIES = [
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")),
    ("attention (SDPA)", ("scaled_dot_product",)),
    ("compiled graph: fused kernels + wrapper", ("## Call CompiledFxGraph",)),
    ("dynamo guards", ("TorchDynamo Cache Lookup",)),
    ("compiled-region entry (AOT wrapper, pregraph)", ("Torch-Compiled Region", "AOTDispatcher", "Pregraph bytecode")),
    ("other aten ops", ("aten::",)),
]


def profile_decoding(ours, prompt: list[int], new_tokens: int) -> dict[str, float]:
    """批 1 贪心生成 new_tokens 个 token，每个 token 的毫秒数按类别拆开（加上 profiler 自己的开销）。"""
    from torch.profiler import ProfilerActivity, profile

    ours_generate(ours, [prompt], new_tokens)                       # 预热（编译）
    plain_s = timed(lambda: ours_generate(ours, [prompt], new_tokens))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall_s = timed(lambda: ours_generate(ours, [prompt], new_tokens))
    split = {name: 0.0 for name, _ in PROFILE_CATEGORIES}
    for event in prof.key_averages():
        for name, prefixes in PROFILE_CATEGORIES:
            if any(part in event.key for part in prefixes):
                split[name] += event.self_cpu_time_total / 1e3 / new_tokens     # 微秒 → 毫秒/token
                break
    split["python (not in any event)"] = wall_s * 1e3 / new_tokens - sum(split.values())
    split["total, profiled"] = wall_s * 1e3 / new_tokens
    split["total, not profiled"] = plain_s * 1e3 / new_tokens
    return split


def measure(ours, peer, config: GPTConfig, batch: int, args) -> dict:
    prompts = random_prompts(batch, config.vocab_size, args.seed)
    ours_out = ours_generate(ours, prompts, args.new_tokens)
    peer_out = peer_generate(peer, prompts, args.new_tokens)
    same = ours_out == peer_out
    row = {"batch": batch, "dtype": args.dtype, "compile": args.compile, "new_tokens": args.new_tokens,
           "greedy_outputs_match": same}
    if not same:
        first = next(i for i, (a, b) in enumerate(zip(ours_out, peer_out)) if a != b)
        print(f"批 {batch}：第 {first} 条的贪心输出不同，比较作废 / greedy outputs differ, comparison void")
        return row | {"towergpt_tok_s": float("nan"), "transformers_tok_s": float("nan"), "ratio": float("nan")}

    ours_s, peer_s = alternate(lambda: timed(lambda: ours_generate(ours, prompts, args.new_tokens)),
                               lambda: timed(lambda: peer_generate(peer, prompts, args.new_tokens)), args.rounds)
    tokens = batch * args.new_tokens
    ours_tps, peer_tps = tokens / median(ours_s), tokens / median(peer_s)
    floor_tps = batch / weight_read_floor_s(peer, batch)
    row |= {"weight_read_floor_tok_s": floor_tps, "max_possible_ratio": floor_tps / peer_tps}
    return row | {"towergpt_tok_s": ours_tps, "transformers_tok_s": peer_tps, "ratio": ours_tps / peer_tps,
            "rounds_s": {"towergpt": ours_s, "transformers": peer_s}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser, seq_help="模型的上下文长度（须容下提示词 + 新 token）")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--batches", default="1,8", help="逗号分隔的批大小")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="TowerGPT 用 torch.compile 编译解码（首次约半分钟，不计时）")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="两边的权重精度")
    parser.add_argument("--profile", action="store_true", help="把 TowerGPT 批 1 每个 token 的时间按类别拆开")
    parser.add_argument("--out", default="bench/results/generate.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    config = shape_from_args(args)
    ours, peer = model_pair(config, seed=args.seed)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    ours.to(dtype).eval()
    peer.to(dtype).eval()
    if args.compile:
        ours = compile_for_decoding(ours)         # 第一次调用（下面核对贪心输出时）完成编译，不计入计时
    peer.generation_config.eos_token_id = None   # 两边都不因 eos 提前停：正好生成 new_tokens 个
    results = []
    for batch in (int(b) for b in args.batches.split(",")):
        results.append(measure(ours, peer, config, batch, args))
        row = results[-1]
        print(f"batch {batch}: TowerGPT {row['towergpt_tok_s']:,.0f} tok/s, transformers "
              f"{row['transformers_tok_s']:,.0f} tok/s, ratio {row['ratio']:.2f}", flush=True)

    profile = None
    if args.profile:
        profile = profile_decoding(ours, random_prompts(1, config.vocab_size, args.seed)[0], args.new_tokens)
        print()
        print_table(["TowerGPT, batch 1, compile=" + str(args.compile), "ms/token"],
                    [[name, f"{ms:.3f}"] for name, ms in profile.items()])

    print()
    print_table(["batch", "dtype", "compile", "new tokens", "greedy match", "TowerGPT tok/s", "transformers tok/s",
                 "ratio", "floor tok/s", "max ratio"],
                [[r["batch"], r["dtype"], r["compile"], r["new_tokens"], r["greedy_outputs_match"], r["towergpt_tok_s"],
                  r["transformers_tok_s"], r["ratio"], r.get("weight_read_floor_tok_s", float("nan")),
                  r.get("max_possible_ratio", float("nan"))] for r in results])
    write_report(args.out, {"benchmark": "generate", "machine": machine_info(), "shape": config.to_dict(),
                            "args": vars(args), "results": results, "profile_ms_per_token": profile})


if __name__ == "__main__":
    main()
