"""按时间预算训练（train.max_minutes）：曲线跟着时间走、准时结束、续训逐位一致。

真实的钟每次都不一样，没法逐位比较；这里换上一个“假时钟”：只有目标函数被调用时时间才前进
（训练的一个微批次算 1 秒，评估的一批算 0.25 秒，可以按步改变，模拟机器忽快忽慢）。
于是“用了多少时间”完全由做了什么决定，和真实的钟无关。
"""

import json

import pytest
import torch

from test_train_loop import SEQ, VOCAB, NullTokenizer, SyntheticTokens, losses
from towergpt.config import build_config
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.train.loop import Trainer
from towergpt.train.optim import learning_rate
from towergpt.train.pretrain import language_model_objective


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def timed_objective(clock, seconds_per_batch=lambda n: 1.0):
    """目标函数外面包一层：每调用一次，假时钟前进一点（第 n 个训练微批次前进 seconds_per_batch(n) 秒）。"""
    calls = {"train": 0}

    def objective(model, batch, device):
        if model.training:
            calls["train"] += 1
            clock.now += seconds_per_batch(calls["train"])
        else:
            clock.now += 0.25
        return language_model_objective(model, batch, device)
    return objective


def make_config(tmp_path, minutes, **train):
    settings = dict(out_dir=str(tmp_path / "run"), max_steps=0, max_minutes=minutes, micro_batch_size=4,
                    grad_accum=2, eval_every=5, save_every=5, log_every=1, keep_last=2, device="cpu",
                    dtype="float32")
    settings.update(train)
    return build_config({
        "model": dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=SEQ, dropout=0.1),
        "data": dict(eval_batches=2),
        "train": settings,
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2),
    })


def run(config, objective, clock, resume=False):
    torch.manual_seed(config.train.seed)
    trainer = Trainer(config, GPT(config.model), NullTokenizer(), objective, SyntheticTokens(), SyntheticTokens(1),
                      clock=clock)
    return trainer.run(resume=resume)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_run_ends_within_its_budget_and_uses_nearly_all_of_it(tmp_path):
    clock = FakeClock()
    summary = run(make_config(tmp_path, minutes=0.5), timed_objective(clock), clock)   # 30 秒，一步 2 秒
    assert summary["stopped_by"] == "max_minutes"
    assert clock.now <= 30.0                      # 准时结束：收尾（评估 + 保存）也在预算之内
    assert clock.now >= 30.0 - 2.0 - 0.5          # 没有浪费：剩下的时间不够再做一步加收尾
    assert summary["minutes"] == pytest.approx(clock.now / 60, abs=0.01)
    assert summary["step"] == 14                  # 每步 2 秒 + 两次中途评估各 0.5 秒 + 最后的评估


def test_the_learning_rate_follows_time_down_to_near_the_floor(tmp_path):
    clock = FakeClock()
    run(make_config(tmp_path, minutes=1.0), timed_objective(clock), clock)
    train_rows = [r for r in rows(tmp_path / "run") if "lr" in r]
    lrs = [r["lr"] for r in train_rows]
    assert lrs[:2] == pytest.approx([1.5e-3, 3e-3])           # 预热按步数
    after = lrs[2:]
    assert all(a >= b for a, b in zip(after, after[1:]))     # 之后单调下降
    assert after[-1] < 3e-4 + 0.02 * (3e-3 - 3e-4)            # 走完了余弦曲线：最后一步几乎到了 min_lr


def test_a_machine_that_slows_down_still_ends_on_time(tmp_path):
    clock = FakeClock()
    slowing = timed_objective(clock, seconds_per_batch=lambda n: 1.0 if n < 10 else 3.0)  # 第 5 步起慢三倍
    summary = run(make_config(tmp_path, minutes=0.5), slowing, clock)
    assert 30.0 - 6.0 - 0.5 <= clock.now <= 30.0              # 准时结束，也没有剩下够做一步（现在 6 秒）的时间
    assert summary["step"] < 14                                # 步数少了，时间没有超
    lrs = [r["lr"] for r in rows(tmp_path / "run") if "lr" in r]
    assert lrs[-1] < lrs[4] / 2                                # 曲线跟着时间走：慢下来后每步降得更多


def test_resume_continues_the_time_schedule_bitwise(tmp_path):
    clock = FakeClock()
    run(make_config(tmp_path / "full", minutes=0.5), timed_objective(clock), clock)
    reference = losses(tmp_path / "full" / "run")

    clock = FakeClock()
    crashing = timed_objective(clock)

    def crash_in_step_8(model, batch, device):
        if model.training and clock.now >= 2 * 7 + 0.5:   # 第 8 步开始时（检查点在第 5 步）
            raise RuntimeError("simulated crash")
        return crashing(model, batch, device)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(make_config(tmp_path / "part", minutes=0.5), crash_in_step_8, clock)
    clock = FakeClock()   # 新进程：钟从零开始，已用时间从检查点读回
    summary = run(make_config(tmp_path / "part", minutes=0.5), timed_objective(clock), clock, resume=True)
    assert summary["step"] == max(reference)
    assert losses(tmp_path / "part" / "run") == reference    # 同样的步、同样的学习率、同样的损失
    full_lrs = {r["step"]: r["lr"] for r in rows(tmp_path / "full" / "run") if "lr" in r}
    part_lrs = {r["step"]: r["lr"] for r in rows(tmp_path / "part" / "run") if "lr" in r}
    assert part_lrs == full_lrs


def test_steps_and_minutes_together_stop_at_whichever_comes_first(tmp_path):
    clock = FakeClock()
    summary = run(make_config(tmp_path, minutes=10.0, max_steps=6), timed_objective(clock), clock)
    assert summary["stopped_by"] == "max_steps" and summary["step"] == 6
    optim = make_config(tmp_path, minutes=1.0).optim
    assert learning_rate(6, optim, 6, time_progress=0.1) == pytest.approx(3e-4)   # 步数先用完：曲线在底部
    assert learning_rate(3, optim, 100, time_progress=1.0) == pytest.approx(3e-4)  # 时间先用完：也在底部


def test_neither_steps_nor_minutes_is_refused(tmp_path):
    with pytest.raises(TowerGPTError, match="max_steps 或 max_minutes"):
        make_config(tmp_path, minutes=0.0)
