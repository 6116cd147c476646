"""训练循环：学习率曲线、参数分组、精确续训、非有限值处理、原子检查点、指标字段。

这里用内存里的合成数据（不依赖分词器和数据目录），专门检验循环本身；
端到端（真实数据、SIGKILL 后续训）见 test_pretrain_cli.py。
"""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from towergpt.checkpoint import load
from towergpt.config import build_config
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.train import checkpointing
from towergpt.train.checkpointing import latest_checkpoint
from towergpt.train.loop import Trainer
from towergpt.train.optim import learning_rate, parameter_groups
from towergpt.train.pretrain import language_model_objective

VOCAB, SEQ = 50, 16


class SyntheticTokens:
    """确定性的“数据流”：第 n 个批次只由 (seed, n) 决定；位置可以存取。"""

    characters_per_token = 1.5

    def __init__(self, seed=0):
        self.seed, self.position = seed, 0

    def _batch(self, index, size):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + index)
        # 有规律的序列（每行是等差数列取模），模型学得会，损失能下降
        start = torch.randint(0, VOCAB, (size, 1), generator=gen)
        stride = torch.randint(1, 4, (size, 1), generator=gen)
        window = (start + stride * torch.arange(SEQ + 1)) % VOCAB
        return window[:, :-1], window[:, 1:]

    def next_batch(self, size):
        self.position += 1
        return self._batch(self.position, size)

    def iter_eval_batches(self, size, max_batches=None):
        for index in range(max_batches or 3):
            yield self._batch(-1 - index, size)

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


class NullTokenizer:
    def save(self, directory):
        (directory / "tokenizer.model").write_bytes(b"")


def make_config(tmp_path, **train):
    settings = dict(out_dir=str(tmp_path / "run"), max_steps=8, micro_batch_size=4, grad_accum=2, eval_every=4,
                    save_every=4, log_every=1, keep_last=2, device="cpu", dtype="float32")
    settings.update(train)
    return build_config({
        "model": dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=SEQ, dropout=0.1),
        "train": settings,
        "optim": dict(lr=3e-3, min_lr=3e-4, warmup_steps=2),
    })


def make_trainer(config, objective=language_model_objective):
    torch.manual_seed(config.train.seed)
    return Trainer(config, GPT(config.model), NullTokenizer(), objective, SyntheticTokens(), SyntheticTokens(1))


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def test_learning_rate_warms_up_then_decays_to_the_floor():
    config = make_config(Path(".")).optim
    assert learning_rate(1, config, 100) == pytest.approx(1.5e-3)
    assert learning_rate(2, config, 100) == pytest.approx(3e-3)
    assert learning_rate(100, config, 100) == pytest.approx(3e-4)
    middle = learning_rate(51, config, 100)
    assert 3e-4 < middle < 3e-3


def test_only_matrices_get_weight_decay():
    config = make_config(Path("."))
    model = GPT(config.model)
    decay, no_decay = parameter_groups(model, 0.1)
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for group in (decay, no_decay) for p in group["params"]) == model.num_params()


def test_resume_after_a_crash_continues_bitwise_identically(tmp_path):
    full = make_config(tmp_path / "full")
    make_trainer(full).run()
    reference = losses(tmp_path / "full" / "run")

    crashing = make_config(tmp_path / "part")
    calls = {"n": 0}

    def crash_in_step_6(model, batch, device):
        calls["n"] += model.training  # 只数训练的微批次（评估也会调用目标函数）
        if calls["n"] == 11:  # 第 6 步的第 1 个微批次（grad_accum=2）：检查点在第 4 步
            raise RuntimeError("simulated crash")
        return language_model_objective(model, batch, device)

    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(crashing, crash_in_step_6).run()
    assert max(losses(tmp_path / "part" / "run")) == 5  # 崩溃前写下了第 5 步，续训时要删掉重来
    summary = make_trainer(make_config(tmp_path / "part")).run(resume=True)
    got = losses(tmp_path / "part" / "run")
    assert summary["step"] == 8
    assert got == reference  # 同样的步、同样的损失，逐位相等（含 dropout 随机数）
    assert reference[8] < reference[1]


def test_metrics_rows_have_the_documented_fields(tmp_path):
    config = make_config(tmp_path)
    make_trainer(config).run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "val_loss" in r]
    assert {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "elapsed_s"} <= set(train_rows[0])
    assert train_rows[-1]["tokens"] == 8 * 4 * 2 * SEQ
    assert [r["step"] for r in eval_rows] == [4, 8]
    row = eval_rows[-1]
    assert row["val_ppl"] == pytest.approx(math.exp(row["val_loss"]))
    assert row["val_bpc"] == pytest.approx(row["val_loss"] / math.log(2) / 1.5)
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_keep_last_and_latest_pointer(tmp_path):
    config = make_config(tmp_path, max_steps=12, save_every=2, keep_last=2)
    make_trainer(config).run()
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["step_00000010", "step_00000012"]
    assert latest_checkpoint(tmp_path / "run").name == "step_00000012"


def test_crash_while_writing_a_checkpoint_leaves_latest_loadable(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    real_save = torch.save
    calls = {"n": 0}

    def crashing_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # 第二次写检查点时“断电”
            with open(path, "wb") as handle:
                handle.write(b"half")
            raise OSError("disk on fire")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpointing.torch, "save", crashing_save)
    with pytest.raises(OSError):
        make_trainer(config).run()
    latest = latest_checkpoint(tmp_path / "run")
    assert latest.name == "step_00000004"
    state = torch.load(latest / "trainer_state.pt", weights_only=True)
    assert state["progress"]["step"] == 4
    assert not (tmp_path / "run" / "checkpoints" / "step_00000008").exists()


def test_non_finite_steps_are_skipped_then_stop_with_last_good_state(tmp_path):
    config = make_config(tmp_path, max_steps=20, save_every=0, eval_every=0, max_bad_steps=3)
    calls = {"n": 0}

    def poisoned(model, batch, device):
        calls["n"] += model.training
        result = language_model_objective(model, batch, device)
        step = (calls["n"] + 1) // 2  # grad_accum=2
        if step == 3 or step >= 6:
            result = dataclasses.replace(result, loss=result.loss * float("nan"))
        return result

    trainer = make_trainer(config, poisoned)
    with pytest.raises(TowerGPTError, match="连续 3 步"):
        trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r["step"] for r in rows if r.get("skipped")]
    assert skipped == [3, 6, 7, 8]
    saved = latest_checkpoint(tmp_path / "run")
    assert saved.name == "step_00000008"
    # 保存的权重是第 5 步之后的状态（6、7、8 三步都被跳过），所以每个值都是有限数
    reloaded = GPT(config.model)
    checkpointing.load_checkpoint(saved, reloaded)
    assert all(torch.isfinite(p).all() for p in reloaded.parameters())


def test_existing_run_without_resume_is_refused(tmp_path):
    config = make_config(tmp_path, max_steps=2, save_every=2)
    make_trainer(config).run()
    with pytest.raises(TowerGPTError, match="--resume"):
        make_trainer(config).run()
    with pytest.raises(TowerGPTError, match="没有检查点"):
        make_trainer(make_config(tmp_path / "other")).run(resume=True)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    config = make_config(tmp_path, dtype="bfloat16", save_every=0)
    forward_precisions = set()

    def recording(model, batch, device):
        # 目标函数被调用时（训练和验证），前向确实在 bf16 的 autocast 里
        forward_precisions.add((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return language_model_objective(model, batch, device)

    trainer = make_trainer(config, recording)
    summary = trainer.run()
    assert forward_precisions == {(True, torch.bfloat16)}
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())   # 权重的主副本仍是 fp32
    history = losses(tmp_path / "run")
    assert summary["step"] == 8 and sorted(history) == list(range(1, 9))
    assert history[8] < history[1]                                              # 确实在学
    assert math.isfinite(summary["val_loss"])


def test_checkpoint_loads_through_the_public_api(tmp_path, monkeypatch):
    config = make_config(tmp_path, max_steps=2, save_every=2)
    trainer = make_trainer(config)
    trainer.run()
    from towergpt import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module.Tokenizer, "load", classmethod(lambda cls, path: type(
        "T", (), {"vocab_size": VOCAB})()))
    model, _ = load(tmp_path / "run")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


class MaskedRows:
    """同一组 8 行、带不同长度 -100 掩码的“对话”批次，按给定的微批次大小依次切开（例如 [3, 5]）。"""

    def __init__(self, sizes):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randint(4, VOCAB, (8, SEQ), generator=generator)
        self.targets = torch.randint(4, VOCAB, (8, SEQ), generator=generator)
        for row, answer in enumerate([1, 2, 3, 8, 12, 5, 16, 4]):   # 每行只有最后 answer 个位置有标签
            self.targets[row, :SEQ - answer] = -100
        self.sizes, self.calls = sizes, 0

    def next_batch(self, batch_size):
        start = sum(self.sizes[:self.calls])
        self.calls += 1
        rows = slice(start, start + self.sizes[self.calls - 1])
        return self.inputs[rows], self.targets[rows]

    def state_dict(self):
        return {}


def test_accumulated_masked_batches_equal_one_big_batch(tmp_path):
    """SFT 的微批次按目标 token 数加权：[3, 5] 累积与一次 8 行的更新相同（按“除以 grad_accum”就对不上）。"""

    def one_step(sizes):
        config = make_config(tmp_path / "x".join(map(str, sizes)), micro_batch_size=max(sizes), grad_accum=len(sizes))
        # eps 很大：Adam 第一步的更新 ≈ lr·g/eps，与梯度成正比，能看出梯度的大小而不只是符号
        for key, value in dict(lr=1.0, min_lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, eps=10.0).items():
            setattr(config.optim, key, value)
        config.model.dropout = 0.0
        torch.manual_seed(0)
        trainer = Trainer(config, GPT(config.model), NullTokenizer(), language_model_objective, MaskedRows(sizes))
        row = trainer.train_step(1)
        return trainer.model, row

    big, big_row = one_step([8])
    for sizes in ([4, 4], [3, 5]):
        small, row = one_step(sizes)
        for (name, p), q in zip(small.named_parameters(), big.parameters()):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (sizes, name)
        assert row["loss"] == pytest.approx(big_row["loss"], rel=1e-5)


def test_validation_runs_the_uncompiled_model():
    # 编译过的模型换到 eval 模式要整个重新编译（CPU 上 20 多秒）：验证应该直接用原模型
    from towergpt.train import distributed

    model = GPT(make_config(Path(".")).model)
    context, _ = distributed.setup("cpu", "ddp")
    assert distributed.evaluation_model(torch.compile(model), context) is model
    assert distributed.evaluation_model(model, context) is model
