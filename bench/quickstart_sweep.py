"""quickstart 的默认设置是怎么选出来的：在内置语料上、按 quickstart 的时间预算，逐个配置训练并打分。

    python bench/quickstart_sweep.py --work /tmp/sweep --only adamw muon
    python bench/quickstart_sweep.py --list

每个配置：tiny 预设 + 共用的底子（BASE_PRETRAIN / BASE_SFT）+ 这个配置的 --set，预训练 P 分钟（按时间预算，train/budget.py），
再 SFT S 分钟，然后在 1000 条留出评论上作答。结果一行一个 JSON 追加到 WORK/results.jsonl：
配置名、val_bpc、准确率、步数、tokens/s、实际分钟数。语料、分词器和 token 分片按词表大小缓存在 WORK 里。
“sft_from”：直接用另一个配置的预训练检查点，只比较 SFT 的设置（省掉一次预训练）；
“pretrain_minutes” / “sft_minutes”：这个配置自己的时间预算（默认用命令行的）。

每个配置在自己的新进程里跑，一次只跑一个，机器上不要有别的程序：预算是按时间算的，CPU 被占用，模型就会变差。
结果写进 docs/training.md 的 quickstart 扫参表。
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from towergpt.demo import quickstart as qs

# 扫参时所有配置共用的底子（tiny 预设之上）；每个配置的 pretrain / sft 追加在后面（后写的覆盖先写的）。
# 底子就是扫参开始前 quickstart 的设置：AdamW、不编译。"default" 是扫参之后 quickstart 的设置。
BASE_PRETRAIN = ["optim.name=adamw", "train.eval_every=100", "train.save_every=200"]
BASE_SFT = ["train.micro_batch_size=32", "optim.lr=0.001", "optim.min_lr=0.0001", "optim.weight_decay=0.0",
            "optim.warmup_steps=30", "train.eval_every=100", "train.save_every=200"]
MUON, COMPILE = ["optim.name=muon"], ["train.compile=true"]
CONFIGS = {
    "adamw": dict(),
    "muon": dict(pretrain=MUON),
    "muon_compile": dict(pretrain=MUON + COMPILE),
    "muon_mb8": dict(pretrain=MUON + ["train.micro_batch_size=8"]),
    "muon_mb32": dict(pretrain=MUON + ["train.micro_batch_size=32"]),
    "muon_lr": dict(pretrain=MUON + ["optim.muon_lr=0.01", "optim.lr=0.003"]),
    "muon_v4000": dict(vocab=4000, pretrain=MUON),
    "muon_v8000": dict(vocab=8000, pretrain=MUON),
    "sft_muon": dict(sft_from="muon", sft=MUON),
    "sft_muon_lowlr": dict(sft_from="muon", sft=MUON + ["optim.lr=0.0003", "optim.min_lr=0.00003",
                                                        "optim.muon_lr=0.002"]),
    "sft_muon_hilr": dict(sft_from="muon", sft=MUON + ["optim.lr=0.003", "optim.min_lr=0.0003", "optim.muon_lr=0.01"]),
    "sft_5min": dict(sft_from="muon", sft_minutes=5.0),
    "default": dict(pretrain=qs.PRETRAIN_SETTINGS, sft=qs.SFT_SETTINGS),
}


def run_one(name: str, spec: dict, work: Path, pretrain_minutes: float, sft_minutes: float) -> dict:
    vocab = spec.get("vocab", qs.VOCAB_SIZE)
    pretrain_minutes = spec.get("pretrain_minutes", pretrain_minutes)
    sft_minutes = spec.get("sft_minutes", sft_minutes)
    inputs = _inputs(work, vocab)
    out = work / "runs" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for part in ("corpus", "tokenizer", "data"):
        (out / part).symlink_to(inputs / part)
    row = {"config": name, "vocab": vocab, "pretrain": spec.get("pretrain", []), "sft": spec.get("sft", []),
           "pretrain_minutes_budget": pretrain_minutes, "sft_minutes_budget": sft_minutes}
    if "sft_from" in spec:
        (out / "pretrain").symlink_to(work / "runs" / spec["sft_from"] / "pretrain")
        row["sft_from"] = spec["sft_from"]
    else:
        _fresh_compile_cache(work / "inductor-cache" / name)
        row.update(qs._pretrain(out, pretrain_minutes, "cpu", BASE_PRETRAIN + spec.get("pretrain", [])))
    started = time.perf_counter()
    _fresh_compile_cache(work / "inductor-cache" / f"{name}-sft")
    row.update(qs._sft(out, sft_minutes, "cpu", BASE_SFT + spec.get("sft", [])))
    result = qs._evaluate_sentiment(out)
    row.update(sentiment_accuracy=result["sentiment_accuracy"], unparseable=result["unparseable_answers"],
               sft_and_eval_seconds=round(time.perf_counter() - started, 1))
    row["samples"] = qs._samples(out / "pretrain") if "sft_from" not in spec else []
    return row


def _fresh_compile_cache(directory: Path) -> None:
    """torch.compile 的结果会缓存到磁盘，第二次编译只要几秒。新用户第一次运行时没有缓存，
    所以每个配置都用一个空的缓存目录，把完整的编译时间算进预算里。"""
    shutil.rmtree(directory, ignore_errors=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    import torch._dynamo
    torch._dynamo.reset()   # 同一进程里前一个配置编译过的图也不能复用


def _inputs(work: Path, vocab: int) -> Path:
    """语料、分词器、token 分片：每个词表大小做一次。"""
    inputs = work / f"inputs-v{vocab}"
    if not (inputs / "data" / "meta.json").exists():
        shutil.rmtree(inputs, ignore_errors=True)
        inputs.mkdir(parents=True)
        qs.prepare_inputs(inputs, vocab)
    return inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="/tmp/quickstart-sweep")
    parser.add_argument("--only", nargs="*", default=None, help="只跑这些配置（默认全部）")
    parser.add_argument("--pretrain-minutes", type=float, default=7.0)
    parser.add_argument("--sft-minutes", type=float, default=3.0)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--configs", help="另加配置的 JSON 文件：{名字: {vocab, pretrain, sft, sft_from, "
                                          "pretrain_minutes, sft_minutes}}")
    args = parser.parse_args()
    configs = dict(CONFIGS)
    if args.configs:
        configs.update(json.loads(Path(args.configs).read_text(encoding="utf-8")))
    if args.list:
        for name, spec in configs.items():
            print(name, json.dumps(spec, ensure_ascii=False))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = args.only or list(configs)
    unknown = [name for name in names if name not in configs]
    if unknown:
        sys.exit(f"unknown config {unknown[0]}; --list shows them")
    if len(names) > 1:
        # 每个配置一个新进程：同一个进程连着跑几个配置，后面的会越来越慢（实测慢了约 20%）
        for name in names:
            command = [sys.executable, __file__, "--work", str(work), "--only", name,
                       "--pretrain-minutes", str(args.pretrain_minutes), "--sft-minutes", str(args.sft_minutes)]
            subprocess.run(command + (["--configs", args.configs] if args.configs else []), check=False)
        return
    for name in names:
        row = run_one(name, configs[name], work, args.pretrain_minutes, args.sft_minutes)
        row.update(date=time.strftime("%Y-%m-%d %H:%M"), cpus=os.cpu_count())
        with open(work / "results.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "samples"}, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
