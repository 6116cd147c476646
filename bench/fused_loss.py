"""分块的输出头 + 交叉熵（train.loss_chunk_tokens，towergpt/chunked_loss.py）：省多少内存、慢多少。

    python bench/fused_loss.py                        # base 的形状（12 层、768 宽、GQA 12/4、词表 32000、序列 1024），批 4，fp32
    python bench/fused_loss.py --batch 2 --chunks 1024,4096 --rounds 3 --markdown /tmp/perf_fused_loss.md
    python bench/fused_loss.py --dtype bf16           # CPU / GPU 上的 bf16 autocast

比较的几种做法，每种都是“一步训练”的前向 + 反向（不含优化器），同一份权重：
    TowerGPT 不分块          model.loss_chunk_tokens = 0：整批 (B, T, V) 的 logits，今天的写法
    TowerGPT 分块 m          model.loss_chunk_tokens = m：每次只造 m 个位置的 logits，反向时重算
    transformers Llama       同尺寸同权重的 LlamaForCausalLM（bench/peers.py），logits 转 fp32 再交叉熵

两种量法：
    峰值内存  每种做法在**一个新的子进程**里量：建好模型、热身一步，然后把内核记的峰值 RSS 清零
              （向 /proc/self/clear_refs 写 5，Linux ≥ 4.0），再跑一步，读 /proc/self/status 的 VmHWM，
              减去这一步开始前的 VmRSS。为什么不用别的：tracemalloc 看不见 torch 的分配（它们不走 Python 的
              分配器）；ru_maxrss 清不掉，会被建模型时的峰值盖住；CPU 上也没有 torch.cuda.max_memory_allocated。
              这是“这一步让进程多占了多少内存”，包括 glibc 没还给系统的部分——也就是用户真正看到的。
              （GPU 上另外报告 torch.cuda.max_memory_allocated 的增量。）
    吞吐      所有做法在**同一个进程**里交替计时（a b c a b c ……，bench/peers.py 的做法），取各自的中位数：
              共享机器的负载起伏时，各做法吃到同样的噪声，比值比绝对秒数可信。
结果打印成 Markdown 表，写进 --markdown（默认 bench/results/fused_loss.md）和 bench/results/fused_loss.json。
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from peers import machine_info, median, model_pair, timed, write_report
from towergpt.model import GPTConfig


def configurations(chunks: list[int]) -> list[tuple[str, str, int]]:
    """(名字, 哪个实现, 块大小)：TowerGPT 不分块、各个块大小，最后是 transformers。"""
    return ([("TowerGPT 不分块 / plain", "ours", 0)]
            + [(f"TowerGPT 分块 / chunked {m}", "ours", m) for m in chunks]
            + [("transformers Llama（不分块 / plain）", "peer", 0)])


def shape(args) -> GPTConfig:
    from towergpt.config import load_config

    model = load_config(args.preset, []).model
    return GPTConfig(vocab_size=args.vocab, n_layer=model.n_layer, n_head=model.n_head, n_kv_head=model.n_kv_head,
                     d_model=model.d_model, ffn_hidden=model.ffn_hidden, max_seq_len=args.seq)


def make_step(model, kind: str, chunk: int, batch, dtype: str, device: str):
    """返回“一步”的函数：梯度清空 → 前向（autocast 可选）→ 损失 → 反向。返回损失的值。"""
    inputs, targets = batch

    def step() -> float:
        model.zero_grad(set_to_none=True)     # 梯度每步新分配：两边都把它算进这一步的内存
        context = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
        with context:
            if kind == "ours":
                model.loss_chunk_tokens = chunk
                _, loss = model(inputs, targets)
            else:
                logits = model(input_ids=inputs).logits
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return loss.item()

    return step


def models_and_batch(config: GPTConfig, args, kinds: set[str]):
    """同权重的模型（只留下要用的那几个）和一批随机 token，都在 args.device 上。"""
    ours, peer = model_pair(config, seed=args.seed)
    models = {"ours": ours, "peer": peer}
    for kind in set(models) - kinds:
        del models[kind]                       # 子进程只量一种做法：另一个模型不该占着内存
    for model in models.values():
        model.to(args.device).train()
    generator = torch.Generator().manual_seed(args.seed)
    tokens = torch.randint(0, config.vocab_size, (args.batch, config.max_seq_len + 1), generator=generator)
    return models, (tokens[:, :-1].to(args.device), tokens[:, 1:].to(args.device))


# ---- 峰值内存：每种做法一个子进程 --------------------------------------------------------------

def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status 里没有 {field} / missing")


def measure_memory_here(config: GPTConfig, args, index: int) -> dict:
    """（在子进程里）第 index 种做法：热身一步，清零峰值，再跑一步，报告这一步的峰值增量。"""
    name, kind, chunk = configurations(args.chunk_list)[index]
    models, batch = models_and_batch(config, args, {kind})
    step = make_step(models[kind], kind, chunk, batch, args.dtype, args.device)
    step()                                                   # 热身：线程池、oneDNN 的缓存等只分配一次
    models[kind].zero_grad(set_to_none=True)
    row = {"name": name, "kind": kind, "chunk": chunk}
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before_gpu = torch.cuda.memory_allocated()
    Path("/proc/self/clear_refs").write_text("5")           # 把 VmHWM（峰值 RSS）清成当前的 RSS
    before = _status_kib("VmRSS")
    row["loss"] = step()
    row["peak_delta_mib"] = (_status_kib("VmHWM") - before) / 1024
    if args.device == "cuda":
        row["cuda_peak_delta_mib"] = (torch.cuda.max_memory_allocated() - before_gpu) / 2**20
    return row


def measure_memory(args) -> list[dict]:
    rows = []
    for index, (name, _, _) in enumerate(configurations(args.chunk_list)):
        command = [sys.executable, __file__, *args.argv, "--child", str(index)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"子进程失败 / child for {name} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"内存 / memory  {name}: +{rows[-1]['peak_delta_mib']:,.0f} MiB（loss {rows[-1]['loss']:.6f}）",
              flush=True)
    return rows


# ---- 吞吐：同一个进程里交替 ------------------------------------------------------------------

def measure_throughput(config: GPTConfig, args) -> list[dict]:
    configs = configurations(args.chunk_list)
    models, batch = models_and_batch(config, args, {"ours", "peer"})
    steps = [make_step(models[kind], kind, chunk, batch, args.dtype, args.device) for _, kind, chunk in configs]
    for _ in range(args.warmup):
        for step in steps:
            step()
    seconds = [[] for _ in configs]
    for round_ in range(args.rounds):
        for i, step in enumerate(steps):       # 交替：每轮每种做法各一次
            seconds[i].append(timed(step))
        print(f"第 {round_ + 1}/{args.rounds} 轮 / round: " + ", ".join(f"{s[-1]:.2f}s" for s in seconds), flush=True)
    tokens = args.batch * config.max_seq_len
    return [{"name": name, "tok_s": tokens / median(s), "best_tok_s": tokens / min(s), "step_s": median(s),
             "rounds_s": s}
            for (name, _, _), s in zip(configs, seconds)]


def markdown(args, config: GPTConfig, memory: list[dict], speed: list[dict], machine: dict) -> str:
    logits_mib = args.batch * config.max_seq_len * config.vocab_size * 4 / 2**20
    plain_memory, plain_speed = memory[0]["peak_delta_mib"], speed[0]["tok_s"]
    lines = [
        f"## 分块的输出头 + 交叉熵 / chunked output layer + cross-entropy（{args.date}）",
        "",
        f"命令 / command: `python bench/fused_loss.py {' '.join(args.argv)}`",
        "",
        f"形状 / shape: {args.preset} 预设（{config.n_layer} 层、d_model {config.d_model}、头 {config.n_head}/"
        f"{config.n_kv_head}、ffn {config.ffn_hidden}）、词表 V={config.vocab_size}、序列 T={config.max_seq_len}、"
        f"批 B={args.batch}，{args.dtype}，{args.device}；一步 = 前向 + 反向（不含优化器）。"
        f"整批 fp32 logits B·T·V·4 = {logits_mib:,.0f} MiB。",
        f"机器 / machine: {machine['cpu']}，{machine['threads']} 线程 / threads，torch {machine['torch']}，"
        f"transformers {machine['transformers']}。",
        "",
        "| 做法 / configuration | 一步的峰值内存增量 / peak RSS delta (MiB) | 对不分块 / vs plain | tokens/s（中位数 / median） | "
        "对不分块 / vs plain | tokens/s（最快一轮 / best） | 对不分块 / vs plain | 损失 / loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain_best = speed[0]["best_tok_s"]
    for mem, spd in zip(memory, speed):
        lines.append(f"| {mem['name']} | {mem['peak_delta_mib']:,.0f} | {mem['peak_delta_mib'] / plain_memory:.2f} | "
                     f"{spd['tok_s']:,.0f} | {spd['tok_s'] / plain_speed:.2f} | {spd['best_tok_s']:,.0f} | "
                     f"{spd['best_tok_s'] / plain_best:.2f} | {mem['loss']:.6f} |")
    lines += ["", "峰值内存：每种做法一个新的子进程，VmHWM（清零后）− 这一步前的 VmRSS；吞吐：同一个进程里交替 "
              f"{args.rounds} 轮（热身 {args.warmup} 轮），中位数与最快一轮（别人的负载只会让一轮变慢，"
              "最快的一轮最接近安静机器上的数）。", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="base", help="模型形状取自哪个预设（tiny / small / base）")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--chunks", default="1024,4096", help="逗号分隔的块大小（位置数）")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=1, help="吞吐计时前每种做法热身几轮")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--date", default=None, help="写进表头的日期（默认今天）")
    parser.add_argument("--markdown", default="bench/results/fused_loss.md")
    parser.add_argument("--out", default="bench/results/fused_loss.json")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)   # 内部用：量第几种做法的内存
    args = parser.parse_args(argv)
    args.chunk_list = [int(m) for m in args.chunks.split(",") if m]
    args.argv = [a for a in argv]
    torch.set_num_threads(args.threads)
    config = shape(args)

    if args.child is not None:
        print(json.dumps(measure_memory_here(config, args, args.child)))
        return
    machine = machine_info()
    args.date = args.date or machine["date"]
    memory = measure_memory(args)
    speed = measure_throughput(config, args)
    table = markdown(args, config, memory, speed, machine)
    print()
    print(table)
    Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
    Path(args.markdown).write_text(table, encoding="utf-8")
    write_report(args.out, {"benchmark": "fused_loss", "machine": machine,
                            "shape": config.to_dict() | {"batch": args.batch},
                            "args": {k: v for k, v in vars(args).items() if k != "argv"},
                            "memory": memory, "throughput": speed})


if __name__ == "__main__":
    main()
