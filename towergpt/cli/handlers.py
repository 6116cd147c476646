"""核心命令的“胶水”：把解析好的参数交给真正干活的函数。每个函数只在被调用时才 import 它的实现。

为什么 import 写在函数里？这个文件被 `towergpt` 的每一次运行读到；顶层 import 训练代码，
就等于 `towergpt generate` 也要先加载一遍训练循环。放在函数里，运行哪个命令就只加载哪个。
（实现模块自己则在顶层正常 import，见 cli/__init__.py。）
"""

from __future__ import annotations

import argparse

from towergpt.errors import TowerGPTError


def tokenizer_train(args: argparse.Namespace) -> None:
    from towergpt.tokenizer import train_tokenizer

    train_tokenizer(inputs=args.input, vocab_size=args.vocab_size, out_dir=args.out, field=args.field,
                    max_sentences=args.max_sentences, character_coverage=args.character_coverage,
                    overwrite=args.overwrite)


def data_prepare(args: argparse.Namespace) -> None:
    from towergpt.data.prepare import prepare

    common = dict(inputs=args.input, tokenizer_dir=args.tokenizer, out_dir=args.out, workers=args.workers,
                  val_fraction=args.val_fraction, skip_bad=args.skip_bad, shard_tokens=args.shard_tokens,
                  seed=args.seed, overwrite=args.overwrite)
    # 只属于某一种数据的选项：给错了种类就说清楚，而不是悄悄忽略
    if args.format != "pretrain" and args.field is not None:
        raise TowerGPTError("--field 只用于 --format pretrain（对话记录的字段由格式决定）"
                            " / --field only applies to --format pretrain")
    if args.format == "pretrain" and args.max_seq_len is not None:
        raise TowerGPTError("--max-seq-len 只用于 --format sft / dpo / --max-seq-len only applies to --format sft or dpo")
    if args.format == "pretrain":
        common["field"] = "text" if args.field is None else args.field
    else:  # sft / dpo：一条记录一条（一对）序列，需要知道训练时的序列长度
        common["max_seq_len"] = 1024 if args.max_seq_len is None else args.max_seq_len
    prepare(args.format, **common)


def pretrain(args: argparse.Namespace) -> None:
    from towergpt.train.pretrain import run_pretrain

    _train(args, "pretrain", run_pretrain)


def sft(args: argparse.Namespace) -> None:
    from towergpt.train.sft import run_sft

    _train(args, "sft", run_sft)


def dpo(args: argparse.Namespace) -> None:
    from towergpt.train.dpo import run_dpo

    _train(args, "dpo", run_dpo)


def grpo(args: argparse.Namespace) -> None:
    from towergpt.train.grpo import run_grpo

    _train(args, "grpo", run_grpo)


def _train(args: argparse.Namespace, kind: str, run) -> None:
    """四个训练命令的共同部分：读配置；--dry-run 时只打印内存估计（train/memory_estimate.py）就返回，
    不读数据、不建真的模型；否则训练并打印摘要。"""
    from towergpt.config import load_config

    config = load_config(args.config, args.set)
    if args.dry_run:
        from towergpt.train.memory_estimate import dry_run

        dry_run(config, kind)
        return
    _print_summary(run(config, resume=args.resume))


def quickstart(args: argparse.Namespace) -> None:
    from towergpt.demo.quickstart import run_quickstart

    run_quickstart(out_dir=args.out, minutes=args.minutes, sft_minutes=args.sft_minutes, device=args.device,
                   rl_minutes=args.rl_minutes)


def _print_summary(summary: dict) -> None:
    from towergpt.train.distributed import is_main_process

    if not is_main_process():
        return
    print("完成 / done: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                     for k, v in summary.items()))
