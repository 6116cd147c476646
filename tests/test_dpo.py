"""`towergpt dpo`：手算的损失、偏好差距会变大、梯度累积等于大批次、参考模型不动、精确续训、清楚的错误。"""

import json
import math
import random

import pytest
import torch
import yaml

from conftest import run_cli
from towergpt.checkpoint import MODEL_FILE, load_model_weights
from towergpt.config import build_config, load_config
from towergpt.errors import TowerGPTError
from towergpt.model import GPT, IGNORE_INDEX
from towergpt.train import dpo as dpo_module
from towergpt.train.dpo import DPOObjective, dpo_loss, freeze, run_dpo, sequence_logprobs
from towergpt.train.checkpointing import latest_checkpoint
from towergpt.train.loop import Trainer

# 一个一学就会的偏好：礼貌的回答（chosen）胜过粗鲁的回答（rejected）
TOPICS = ["经济", "人民", "发展", "世界", "和平", "改革", "文化", "科技", "教育", "新年"]
POLITE = ["谢谢您的提问", "很高兴为您解答", "您好，请听我说"]
RUDE = ["不知道", "别问了", "没空"]


@pytest.fixture(scope="module")
def dpo_data(news_tokenizer_dir, tmp_path_factory):
    from towergpt.data.prepare import prepare_dpo

    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("dpo")
    path = folder / "pairs.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(300):
            record = {"prompt": f"谈谈{rng.choice(TOPICS)}", "chosen": rng.choice(POLITE), "rejected": rng.choice(RUDE)}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    out = folder / "data"
    prepare_dpo([str(path)], str(news_tokenizer_dir), str(out), max_seq_len=64, workers=1, val_fraction=0.1,
                verbose=False)
    return out


def write_config(path, start, data, out_dir, dpo=None, **train):
    settings = dict(out_dir=str(out_dir), max_steps=12, micro_batch_size=8, eval_every=6, save_every=6,
                    log_every=1, device="cpu", dtype="float32", threads=1, seed=3)
    settings.update(train)
    config = {"init_from": str(start), "data": {"path": str(data)}, "train": settings,
              "optim": {"lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2, "weight_decay": 0.0},
              "dpo": dpo or {"beta": 0.1}}
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ---- 损失 -------------------------------------------------------------------------------------

class FixedLogits(torch.nn.Module):
    """“模型”：不管输入是什么，都返回事先给定的 logits。"""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, idx):
        return self.logits


def log_softmax(row, index):
    return row[index] - math.log(sum(math.exp(v) for v in row))


def test_loss_matches_a_hand_computed_example():
    # 1 对，2 行（chosen、rejected），每行 2 个位置，词表 3
    policy = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 2.0]],
                           [[0.5, -0.5, 0.0], [0.0, 1.0, 0.0]]])
    reference = torch.zeros(2, 2, 3)          # 参考模型：均匀分布，每个 token 的 log 概率都是 -log 3
    targets = torch.tensor([[IGNORE_INDEX, 2],  # chosen 的回答只有第 2 个位置
                            [0, 1]])            # rejected 的回答有 2 个 token
    batch = {"inputs": torch.full((2, 2), 7), "targets": targets, "pairs": 1}
    beta, smoothing, sft_weight = 0.5, 0.1, 0.3

    # 手算
    policy_chosen = log_softmax([1.0, 0.0, 2.0], 2)
    policy_rejected = log_softmax([0.5, -0.5, 0.0], 0) + log_softmax([0.0, 1.0, 0.0], 1)
    reference_chosen, reference_rejected = -math.log(3), -2 * math.log(3)
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    z = chosen_reward - rejected_reward
    log_sigmoid = lambda v: -math.log1p(math.exp(-v))  # noqa: E731
    expected = -(1 - smoothing) * log_sigmoid(z) - smoothing * log_sigmoid(-z) + sft_weight * (-policy_chosen / 1)

    objective = DPOObjective(freeze(FixedLogits(reference)), pad_id=3, beta=beta, label_smoothing=smoothing,
                             sft_weight=sft_weight)
    result = objective(FixedLogits(policy), batch, torch.device("cpu"))
    loss, metrics = result.loss, result.metrics
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert result.tokens == 4
    assert result.weight == 1 and not result.is_token_cross_entropy   # 按对加权；不是交叉熵，没有困惑度
    assert metrics["rewards/chosen"].item() == pytest.approx(chosen_reward, rel=1e-6)
    assert metrics["rewards/rejected"].item() == pytest.approx(rejected_reward, rel=1e-6)
    assert metrics["rewards/margin"].item() == pytest.approx(z, rel=1e-6)
    assert metrics["rewards/accuracy"].item() == (1.0 if z > 0 else 0.0)

    # 标准 DPO（无平滑、无 SFT 项），且策略 = 参考时：z = 0，损失 = log 2
    plain, _ = dpo_loss(*(torch.tensor([v]) for v in (policy_chosen, policy_rejected, reference_chosen,
                                                       reference_rejected)), beta=beta)
    assert plain.item() == pytest.approx(-log_sigmoid(z), rel=1e-6)
    same, metrics = dpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.0]), torch.tensor([-2.0]),
                             beta=0.1)
    assert same.item() == pytest.approx(math.log(2)) and metrics["rewards/accuracy"].item() == 0.0


def test_sequence_logprobs_sum_only_answer_tokens():
    logits = torch.randn(3, 5, 7)
    targets = torch.full((3, 5), IGNORE_INDEX)
    targets[0, 2:] = torch.tensor([1, 2, 3])
    targets[2, 4] = 6
    logps, counts = sequence_logprobs(logits, targets)
    by_hand = torch.log_softmax(logits, -1)
    assert torch.allclose(logps[0], by_hand[0, 2, 1] + by_hand[0, 3, 2] + by_hand[0, 4, 3])
    assert logps[1].item() == 0.0 and counts.tolist() == [3, 0, 1]
    assert torch.allclose(logps[2], by_hand[2, 4, 6])


# ---- 梯度累积 ---------------------------------------------------------------------------------

VOCAB, SEQ = 40, 12


class FixedPairs:
    """总是同一组 8 对，按给定的微批次大小依次切开（例如 [3, 5]）。"""

    def __init__(self, sizes):
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randint(4, VOCAB, (16, SEQ), generator=generator)
        self.targets = torch.full((16, SEQ), IGNORE_INDEX)
        lengths = torch.randint(2, 6, (16,), generator=generator)
        for row in range(16):
            self.targets[row, SEQ - lengths[row]:] = torch.randint(4, VOCAB, (int(lengths[row]),), generator=generator)
        self.sizes, self.calls = sizes, 0

    def next_batch(self, batch_size):
        start = sum(self.sizes[:self.calls])
        rows = list(range(start, start + self.sizes[self.calls]))
        self.calls += 1
        index = torch.tensor(rows + [8 + row for row in rows])   # 这几对的 chosen 在上、rejected 在下
        return {"inputs": self.inputs[index], "targets": self.targets[index], "pairs": len(rows)}

    def state_dict(self):
        return {}


def one_step(tmp_path, sizes, name):
    config = build_config({
        "model": dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=SEQ, dropout=0.0),
        # eps 很大：Adam 第一步的更新 ≈ lr·g/eps 与梯度成正比（eps 很小时是 lr·sign(g)，看不出梯度的大小）
        "optim": dict(lr=1.0, min_lr=1.0, warmup_steps=0, weight_decay=0.0, grad_clip=0.0, eps=10.0),
        "train": dict(out_dir=str(tmp_path / name), max_steps=1, micro_batch_size=max(sizes), grad_accum=len(sizes),
                      device="cpu", dtype="float32"),
        "dpo": dict(beta=0.5, label_smoothing=0.1, sft_weight=0.5),
    })
    torch.manual_seed(0)
    model = GPT(config.model)
    objective = DPOObjective(freeze(model), pad_id=3, **vars(config.dpo))
    trainer = Trainer(config, model, None, objective, FixedPairs(sizes))
    row = trainer.train_step(1)
    return trainer.model, row


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    big, big_row = one_step(tmp_path, [8], "big")
    torch.manual_seed(0)
    start = GPT(big.config)
    moved = max((p - q).abs().max().item() for p, q in zip(big.parameters(), start.parameters()))
    assert moved > 1e-4  # 这一步确实改动了参数
    for sizes in ([4, 4], [3, 5]):  # [3, 5]：若按“每个微批次的平均再除以 2”，结果就对不上
        small, row = one_step(tmp_path, sizes, "x".join(map(str, sizes)))
        for (name, p), q in zip(small.named_parameters(), big.parameters()):
            assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), (sizes, name)
        assert row["loss"] == pytest.approx(big_row["loss"], rel=1e-5)
        assert row["rewards/margin"] == pytest.approx(big_row["rewards/margin"], rel=1e-4, abs=1e-7)


# ---- 端到端 -----------------------------------------------------------------------------------

def test_dpo_raises_the_margin_through_the_cli(tmp_path, start_checkpoint, dpo_data):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "dpo.yaml", start_checkpoint, dpo_data, run_dir, max_steps=20, eval_every=10,
                          dpo={"beta": 0.5, "sft_weight": 0.1})
    result = run_cli("dpo", "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    history = rows(run_dir)
    train = {r["step"]: r for r in history if "loss" in r}
    evals = [r for r in history if "val_loss" in r]
    assert train[1]["rewards/margin"] == pytest.approx(0.0, abs=1e-5)   # 第一步：策略 = 参考模型
    assert train[20]["rewards/margin"] > 1.0 and train[20]["loss"] < train[1]["loss"]
    assert evals[-1]["val_rewards/margin"] > evals[0]["val_rewards/margin"] > 0
    assert evals[-1]["val_rewards/accuracy"] == 1.0
    assert {"val_rewards/chosen", "val_rewards/rejected"} <= set(evals[-1])
    assert not {"val_ppl", "val_bpc"} & set(evals[-1])   # DPO 的损失不是交叉熵：没有困惑度，也没有 bpc
    assert "完成 / done" in result.stdout and "val_rewards/accuracy=1" in result.stdout


def test_reference_model_stays_frozen_and_resume_is_exact(tmp_path, start_checkpoint, dpo_data, monkeypatch):
    references = []
    real_freeze = dpo_module.freeze
    monkeypatch.setattr(dpo_module, "freeze", lambda model: references.append(real_freeze(model)) or references[-1])
    full = run_dpo(load_config(str(write_config(tmp_path / "a.yaml", start_checkpoint, dpo_data, tmp_path / "a"))))
    assert full["step"] == 12

    reference = references[0]
    initial = GPT(reference.config)
    load_model_weights(initial, start_checkpoint / MODEL_FILE)
    assert not reference.training and not any(p.requires_grad for p in reference.parameters())
    for name, tensor in initial.state_dict().items():
        assert torch.equal(reference.state_dict()[name], tensor), name
    trained = GPT(reference.config)
    load_model_weights(trained, latest_checkpoint(tmp_path / "a") / MODEL_FILE)
    assert not torch.equal(trained.lm_head.weight, initial.lm_head.weight)

    # 第 9 步崩溃（检查点在第 6 步），续训后与不中断的运行逐位相同
    calls = {"n": 0}
    real_call = DPOObjective.__call__

    def crash_in_step_9(self, model, batch, device):
        calls["n"] += model.training
        if calls["n"] == 9:
            raise RuntimeError("simulated crash")
        return real_call(self, model, batch, device)

    part_config = write_config(tmp_path / "b.yaml", start_checkpoint, dpo_data, tmp_path / "b")
    monkeypatch.setattr(DPOObjective, "__call__", crash_in_step_9)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_dpo(load_config(str(part_config)))
    monkeypatch.setattr(DPOObjective, "__call__", real_call)
    resumed = run_dpo(load_config(str(part_config)), resume=True)
    assert resumed["step"] == 12
    expected = {r["step"]: r for r in rows(tmp_path / "a") if "loss" in r}
    got = {r["step"]: r for r in rows(tmp_path / "b") if "loss" in r}
    assert sorted(got) == sorted(expected)
    for step in expected:
        for key in ("loss", "rewards/margin", "rewards/accuracy", "grad_norm"):
            assert got[step][key] == expected[step][key], (step, key)
    resumed_model = GPT(reference.config)
    load_model_weights(resumed_model, latest_checkpoint(tmp_path / "b") / MODEL_FILE)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(resumed_model.state_dict()[name], tensor), name


def test_config_and_data_errors_are_clear(tmp_path, start_checkpoint, dpo_data, news_tokenizer_dir):
    for bad, key in (("dpo.beta=0", "dpo.beta"), ("dpo.label_smoothing=0.5", "dpo.label_smoothing"),
                     ("dpo.sft_weight=-1", "dpo.sft_weight"), ("dpo.gamma=1", "dpo.gamma")):
        with pytest.raises(TowerGPTError, match=f"--set {bad} 键/key '{key}'"):
            load_config("tiny", [bad])

    from towergpt.data.prepare import prepare_sft

    source = tmp_path / "sft.jsonl"
    source.write_text(json.dumps({"prompt": "问", "response": "答"}, ensure_ascii=False) + "\n", encoding="utf-8")
    prepare_sft([str(source)], str(news_tokenizer_dir), str(tmp_path / "sft"), max_seq_len=64, workers=1,
                val_fraction=0.0, verbose=False)
    config = write_config(tmp_path / "c.yaml", start_checkpoint, tmp_path / "sft", tmp_path / "c")
    wrong_kind = run_cli("dpo", "--config", config)
    assert wrong_kind.returncode == 2 and "--format dpo" in wrong_kind.stderr
    assert "Traceback" not in wrong_kind.stderr
    with pytest.raises(TowerGPTError, match="init_from"):
        run_dpo(load_config(str(write_config(tmp_path / "d.yaml", "", dpo_data, tmp_path / "d"))))
