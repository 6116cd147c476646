"""全量 SFT 与 LoRA（两个秩）在 quickstart 任务上并排比较：可训练参数、优化器状态、步/秒、留出准确率。

    python bench/lora_sft.py --run runs/quickstart [--minutes 3] [--ranks 4 16]

--run 是一次 quickstart 的输出目录（要用它的 pretrain 检查点、sft_data 和留出评论）。
每个配置在一个**新进程**里跑（与 quickstart 的 SFT 同样的设置、同样的时间预算），互不干扰；
机器上不要同时跑别的东西（按时间预算训练，CPU 一忙，步数就少，结果就差）。
结果表写在 docs/lora.md。
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# LoRA 的学习率比全量微调高一个数量级（适配器从零开始、而且只有几千个参数，小步子走不动）：常见的做法
LORA_LR = 0.003


def run_one(run: Path, minutes: float, rank: int, out: Path) -> dict:
    """一个配置：SFT（rank 0 = 全量），然后在 1000 条留出评论上作答。在子进程里调用。"""
    import time

    from safetensors.torch import load_file

    from towergpt.checkpoint import load, resolve_checkpoint
    from towergpt.config import load_config
    from towergpt.demo import quickstart, sentiment
    from towergpt.train.checkpointing import read_trainer_state
    from towergpt.train.sft import run_sft

    settings = [f"init_from={run / 'pretrain'}", f"data.path={run / 'sft_data'}", f"train.out_dir={out}",
                "train.max_steps=0", f"train.max_minutes={minutes}", *quickstart.SFT_SETTINGS]
    if rank:
        settings += [f"lora.rank={rank}", f"lora.alpha={2 * rank}", f"optim.lr={LORA_LR}",
                     f"optim.min_lr={LORA_LR / 10}"]
    started = time.perf_counter()
    summary = run_sft(load_config("tiny", settings))
    optimizer_bytes = tensor_bytes(read_trainer_state(resolve_checkpoint(out) / "trainer_state.pt")["optimizer"])
    # LoRA 检查点的 model.safetensors 里只有适配器：它们的元素个数就是可训练参数的个数
    weights = load_file(str(resolve_checkpoint(out) / "model.safetensors"))
    trainable = sum(t.numel() for t in weights.values()) if rank else None
    model, tokenizer = load(out)
    result = sentiment.evaluate(model, tokenizer, run / "corpus" / "sentiment_heldout.jsonl")
    return {
        "rank": rank, "steps": summary["step"], "minutes": summary["minutes"],
        "steps_per_s": round(summary["step"] / summary["elapsed_s"], 3),
        "trainable_params": trainable if rank else model.num_params(),
        "optimizer_state_bytes": optimizer_bytes,
        "checkpoint_weights_bytes": (resolve_checkpoint(out) / "model.safetensors").stat().st_size,
        "accuracy": result["sentiment_accuracy"], "unparseable": result["unparseable_answers"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def tensor_bytes(value) -> int:
    """一个（嵌套的）state_dict 里所有张量的字节数：AdamW 的和 Muon + AdamW 的结构不同，一律递归地数。"""
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="quickstart 的输出目录")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--ranks", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)   # 子进程：只跑这个秩
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    run = Path(args.run)
    if args.one is not None:
        print("RESULT " + json.dumps(run_one(run, args.minutes, args.one, Path(args.out))), flush=True)
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as scratch:
        for rank in [0, *args.ranks]:
            done = subprocess.run([sys.executable, __file__, "--run", str(run), "--minutes", str(args.minutes),
                                   "--one", str(rank), "--out", str(Path(scratch) / f"rank{rank}")],
                                  capture_output=True, text=True)
            line = next((l for l in done.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"rank {rank} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(line[len("RESULT "):]))
            print(json.dumps(rows[-1], ensure_ascii=False), flush=True)
    print("\n| 方式 | 可训练参数 | 优化器状态 | 检查点权重 | 步数（步/秒） | 留出准确率 |\n|---|---|---|---|---|---|")
    for row in rows:
        name = "全量 SFT" if row["rank"] == 0 else f"LoRA r={row['rank']}"
        print(f"| {name} | {row['trainable_params']:,} | {row['optimizer_state_bytes'] / 2**20:.2f} MiB | "
              f"{row['checkpoint_weights_bytes'] / 2**20:.2f} MiB | {row['steps']}（{row['steps_per_s']:.2f}） | "
              f"{row['accuracy']:.3f} |")


if __name__ == "__main__":
    main()
