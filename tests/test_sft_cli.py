"""`towergpt sft`：从检查点出发、只在助手的话上学习、同一个训练循环（含续训），以及清楚的错误。"""

import json
import random

import pytest
import torch
import yaml

from conftest import run_cli
from towergpt.checkpoint import save_model_files
from towergpt.model import GPT, GPTConfig
from towergpt.tokenizer import Tokenizer

WORDS = ["经济", "人民", "发展", "世界", "和平", "改革", "文化", "科技", "教育", "新年"]


@pytest.fixture(scope="module")
def sft_data(news_tokenizer_dir, tmp_path_factory):
    """一个一学就会的任务：“重复：X” → “X”。"""
    from towergpt.data.prepare import prepare_sft

    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("sft")
    path = folder / "dialogues.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(400):
            word = rng.choice(WORDS) + rng.choice(WORDS)
            handle.write(json.dumps({"prompt": f"重复：{word}", "response": word}, ensure_ascii=False) + "\n")
    out = folder / "data"
    prepare_sft([str(path)], str(news_tokenizer_dir), str(out), max_seq_len=64, workers=1, val_fraction=0.05)
    return out


def write_config(path, start, data, out_dir, **train):
    settings = dict(out_dir=str(out_dir), max_steps=40, micro_batch_size=16, eval_every=20, save_every=20,
                    log_every=1, device="cpu", dtype="float32", threads=1, seed=3)
    settings.update(train)
    config = {"init_from": str(start), "data": {"path": str(data)}, "train": settings,
              "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 5, "weight_decay": 0.0}}
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sft_learns_the_task_and_resumes(tmp_path, start_checkpoint, sft_data):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "sft.yaml", start_checkpoint, sft_data, run_dir, max_steps=20)
    first = run_cli("sft", "--config", config)
    assert first.returncode == 0, first.stderr[-2000:]
    extended = write_config(tmp_path / "sft.yaml", start_checkpoint, sft_data, run_dir, max_steps=40)
    resumed = run_cli("sft", "--config", extended, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 20" in resumed.stdout   # 接着第 20 步的检查点，而不是从头再来
    evals = [r["val_loss"] for r in rows(run_dir) if "val_loss" in r]
    losses = {r["step"]: r["loss"] for r in rows(run_dir) if "loss" in r}
    assert sorted(losses) == list(range(1, 41))       # 每一步恰好一行：续训没有重复或跳过
    assert losses[40] < losses[1] / 2, losses  # 只有答案几个 token，学得很快
    assert evals[-1] < evals[0]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["d_model"] == 64  # 结构来自 init_from 检查点


def test_sft_needs_init_from_and_a_matching_tokenizer(tmp_path, start_checkpoint, sft_data, news_jsonl):
    config = write_config(tmp_path / "a.yaml", "", sft_data, tmp_path / "a")
    missing = run_cli("sft", "--config", config)
    assert missing.returncode == 2 and "init_from" in missing.stderr and "Traceback" not in missing.stderr

    from towergpt.tokenizer import train_tokenizer

    other = tmp_path / "other_tok"
    train_tokenizer(inputs=[str(news_jsonl)], vocab_size=2100, out_dir=str(other), max_sentences=50_000,
                    character_coverage=0.98)
    mismatched = tmp_path / "mismatched"
    torch.manual_seed(0)
    tokenizer = Tokenizer.load(other)
    save_model_files(GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                                   d_model=32, max_seq_len=64)), tokenizer, mismatched)
    result = run_cli("sft", "--config", write_config(tmp_path / "b.yaml", mismatched, sft_data, tmp_path / "b"))
    assert result.returncode == 2 and "分词器" in result.stderr and "Traceback" not in result.stderr

    pretraining_data = run_cli("sft", "--config", config, "--set", f"init_from={start_checkpoint}",
                               "--set", f"data.path={tmp_path / 'nope'}")
    assert pretraining_data.returncode == 2 and "Traceback" not in pretraining_data.stderr
