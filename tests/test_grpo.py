"""GRPO：组内优势、零信号的组没有梯度、裁剪目标与手算一致、奖励函数的解析，以及一个玩具任务上奖励会升高。"""

import json
import math

import pytest
import torch

from conftest import tiny_gpt
from towergpt.checkpoint import save_model_files
from towergpt.config import load_config
from towergpt.errors import TowerGPTError
from towergpt.tokenizer import Tokenizer
from towergpt.train.grpo import group_advantages, grpo_loss, run_grpo
from towergpt.train.rewards import Sample, parse_rewards


def cjk_fraction(prompt: str, completion: str, answer: str) -> float:
    """玩具奖励：回答里汉字所占的比例（随机模型也有一半左右，组内有高有低，信号很密）。"""
    text = completion.strip()
    return sum("\u4e00" <= ch <= "\u9fff" for ch in text) / max(len(text), 1)


def test_advantages_are_zero_mean_per_group_and_zero_when_the_group_agrees():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 2.0]])
    advantages = group_advantages(rewards)
    torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(3), atol=1e-6, rtol=0)
    assert torch.equal(advantages[1], torch.zeros(4))                    # 全组一样：没有信号
    assert advantages[0, 0] > 0 > advantages[0, 1]                       # 比同组好的为正，差的为负
    assert advantages[2].std(unbiased=False) == pytest.approx(1.0, abs=1e-3)


def test_a_group_where_every_answer_scores_the_same_gives_no_gradient():
    logprobs = torch.randn(4, 3, requires_grad=True)
    advantages = group_advantages(torch.full((1, 4), 0.7)).view(-1)
    loss, _ = grpo_loss(logprobs, logprobs.detach(), advantages, torch.ones(4, 3), clip_eps=0.2)
    loss.backward()
    assert torch.count_nonzero(logprobs.grad) == 0


def test_the_clipped_objective_matches_a_hand_computed_value():
    """两个回答，各 2 个 token（第二个回答只有 1 个真 token）：

    回答 1（A = +1）：ρ = 1.5、0.9 → min(1.5, 1.2) = 1.2、min(0.9, 0.9) = 0.9 → 平均 1.05
    回答 2（A = −2）：ρ = 0.5 → min(0.5·(−2), 0.8·(−2)) = min(−1, −1.6) = −1.6
    损失 = −(1.05 + (−1.6)) / 2 = 0.275；裁剪的 token：ρ=1.5 和 ρ=0.5，3 个里 2 个。
    """
    old = torch.zeros(2, 2)
    logprobs = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = grpo_loss(logprobs, old, torch.tensor([1.0, -2.0]), mask, clip_eps=0.2)
    assert float(loss) == pytest.approx(0.275, abs=1e-6)
    assert float(stats["clip_fraction"]) == pytest.approx(2 / 3, abs=1e-6)


def test_the_kl_penalty_is_the_unbiased_estimator_and_zero_at_the_reference():
    logprobs = torch.log(torch.tensor([[0.5]]))
    reference = torch.log(torch.tensor([[0.25]]))
    _, stats = grpo_loss(logprobs, logprobs, torch.zeros(1), torch.ones(1, 1), 0.2, kl_coef=0.1,
                         reference_logprobs=reference)
    expected = 0.5 - math.log(0.5) - 1                                   # π_ref/π − log(π_ref/π) − 1
    assert float(stats["kl"]) == pytest.approx(expected, abs=1e-6)
    _, same = grpo_loss(logprobs, logprobs, torch.zeros(1), torch.ones(1, 1), 0.2, 0.1, logprobs)
    assert float(same["kl"]) == 0


def test_rewards_parse_with_weights_and_explain_bad_names():
    rewards = parse_rewards("sentiment:2,format:0.5")
    assert [(r.name, r.weight) for r in rewards] == [("sentiment", 2.0), ("format", 0.5)]
    sample = Sample("问", " 正面", "正面", finished=False)
    assert [r(sample) for r in rewards] == [1.0, 0.0]                   # 对了，但没有自己停下
    custom = parse_rewards("test_grpo:cjk_fraction")[0]
    assert custom(Sample("", "好a", "", True)) == 0.5
    with pytest.raises(TowerGPTError, match="不认识的奖励"):
        parse_rewards("accuracy")
    with pytest.raises(TowerGPTError, match="找不到"):
        parse_rewards("no_such_module:reward")


@pytest.fixture(scope="module")
def toy_setup(news_tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpo")
    tokenizer = Tokenizer.load(news_tokenizer_dir)
    save_model_files(tiny_gpt(tokenizer.vocab_size, seed=0), tokenizer, folder / "start")
    with open(folder / "prompts.jsonl", "w", encoding="utf-8") as handle:
        for word in ["经济", "人民", "发展", "世界", "和平", "改革", "文化", "科技"] * 4:
            handle.write(json.dumps({"prompt": f"说一句关于{word}的话", "answer": ""}, ensure_ascii=False) + "\n")
    return folder


def grpo_config(folder, name, steps, **extra):
    settings = [f"init_from={folder / 'start'}", f"data.path={folder / 'prompts.jsonl'}",
                f"train.out_dir={folder / name}", f"train.max_steps={steps}", "train.micro_batch_size=4",
                "train.eval_every=0", f"train.save_every={steps}", "train.log_every=1", "train.device=cpu",
                "train.dtype=float32", "train.threads=1", "optim.lr=0.01", "optim.min_lr=0.001",
                "optim.warmup_steps=1", "grpo.group_size=8", "grpo.max_new_tokens=6", "grpo.val_prompts=4",
                "grpo.rewards=test_grpo:cjk_fraction", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config("tiny", settings)


def test_on_a_toy_task_with_a_checkable_reward_the_reward_rises(toy_setup):
    run_grpo(grpo_config(toy_setup, "toy", 30))
    rows = [json.loads(line) for line in (toy_setup / "toy" / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r and "val_loss" not in r]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, (first, last)
    for key in ("reward/std", "reward/no_signal", "completion_length", "clip_fraction"):
        assert key in rows[0]
    assert rows[0]["clip_fraction"] == 0.0        # 每批样本只更新一次：ρ 恒为 1，不会被裁剪


def test_a_crashed_grpo_run_resumes_bitwise(toy_setup, monkeypatch):
    """采样用的是全局随机数（检查点里存着它的状态），所以第 7 步崩溃、从第 5 步续训后，每一步都与不中断时相同。"""
    from towergpt.train.grpo import GRPOObjective

    run_grpo(grpo_config(toy_setup, "straight", 8, **{"train.save_every": 5}))
    real_call, calls = GRPOObjective.__call__, {"n": 0}

    def crash_in_step_7(self, model, batch, device):
        calls["n"] += model.training
        if calls["n"] == 7:
            raise RuntimeError("simulated crash")
        return real_call(self, model, batch, device)

    monkeypatch.setattr(GRPOObjective, "__call__", crash_in_step_7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_grpo(grpo_config(toy_setup, "crashed", 8, **{"train.save_every": 5}))
    monkeypatch.setattr(GRPOObjective, "__call__", real_call)
    run_grpo(grpo_config(toy_setup, "crashed", 8, **{"train.save_every": 5}), resume=True)

    def by_step(name):
        rows = [json.loads(line) for line in (toy_setup / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["loss"], r["reward/mean"], r["grad_norm"]) for r in rows if "grad_norm" in r}
    assert by_step("crashed") == by_step("straight")


def test_length_buckets_keep_every_prompt_once_per_epoch_and_batches_even():
    """分桶只改变“谁和谁一批”：一个 epoch 里每条提示词恰好一次，而一批里的长度相近（padding 少）。"""
    import random

    from towergpt.data.prompt_dataset import Prompt, PromptData

    rng = random.Random(0)
    prompts = [Prompt(tuple(range(rng.randint(5, 200))), ({"role": "user", "content": str(i)},), "")
               for i in range(640)]
    bucketed, plain = PromptData(prompts, seed=1, batch_size=8), PromptData(prompts, seed=1)
    seen, waste, plain_waste = [], 0, 0
    for _ in range(80):
        batch, other = bucketed.next_batch(8), plain.next_batch(8)
        seen += [p.messages[0]["content"] for p in batch]
        waste += sum(max(len(p.ids) for p in batch) - len(p.ids) for p in batch)
        plain_waste += sum(max(len(p.ids) for p in other) - len(p.ids) for p in other)
    assert sorted(seen) == sorted(str(i) for i in range(640))
    assert waste < plain_waste / 5


def test_a_bad_prompt_record_names_its_file_line_and_field(tmp_path, news_tokenizer_dir):
    from towergpt.data.prompt_dataset import read_prompts

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "好", "answer": "是"}\n{"messages": [], "answer": "x"}\n', encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"prompts.jsonl:2.*prompt"):
        read_prompts(path, Tokenizer.load(news_tokenizer_dir), 200)
    path.write_text('{"prompt": "好", "answer": 3}\n', encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"prompts.jsonl:1.*answer"):
        read_prompts(path, Tokenizer.load(news_tokenizer_dir), 200)
