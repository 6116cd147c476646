"""强化学习（GRPO）入口：`towergpt grpo --config FILE --set init_from=SFT_RUN --set data.path=PROMPTS.jsonl`。

GRPO（Group Relative Policy Optimization，Shao et al. 2024, DeepSeekMath）在同一个训练循环里做强化学习，
一步是这样的（符号：B 个提示词，每个采样 G 个回答，N = B·G；L 是回答的最大长度）：

    1. 采样     每个提示词放 G 份，用模型自己（KV 缓存、批量）采样 G 个回答                (N 个回答)
    2. 打分     奖励函数给每个回答一个分 r（程序能判对错：答案对不对、格式对不对，train/rewards.py）
    3. 优势     组内标准化：A_i = (r_i − 组内均值) / (组内标准差 + 1e-4)                       (B, G)
                比同组的其他回答好，A 为正（多做）；差，A 为负（少做）。全组一样好（或一样差）时
                A 全是 0：这组提示词没有告诉模型任何东西（“无信号”，指标 reward/no_signal）。
    4. 更新     对回答里的每个 token t，最大化裁剪过的替代目标（PPO 的做法）：
                    ρ_t = π(y_t | 前文) / π_old(y_t | 前文)
                    目标_t = min(ρ_t·A, clip(ρ_t, 1−ε, 1+ε)·A) − β·KL_t
                每个回答内对 token 取平均，再对 N 个回答取平均；损失是它的相反数。

为什么不需要价值网络（PPO 的 critic）？“同一个提示词的 G 个回答的平均奖励”就是这个提示词的基线：
优势只看“比同组好多少”，省掉一个和策略一样大的网络。

π_old 是采样时的策略。这里每批样本只用来更新一次（与训练循环“一步一批”的约定一致，续训也因此逐位精确），
所以 π_old 就是更新前的 π 本身：ρ 的值恒为 1，裁剪不会发生（clip_fraction 为 0），
梯度恰好是 A·∇log π——最朴素的策略梯度（REINFORCE 加组内基线）。裁剪项仍按公式写出并测试：
若以后同一批样本更新多次（ρ 偏离 1），它就是防止一步走太远的那道护栏。

KL_t（grpo.kl_coef > 0 时）：相对冻结的参考模型（起点的 SFT 模型）的 KL，用 DeepSeekMath 的无偏估计
    KL_t = π_ref/π − log(π_ref/π) − 1   （≥ 0，π = π_ref 时为 0），让模型不要离起点太远。
kl_coef = 0（默认）时不建参考模型，也省一次前向。

目标函数把回答个数报成结果的权重（单位 = 回答），梯度累积与多进程照常成立（train/objective.py）。
验证时（model.eval()）每个提示词只贪心地答一次、不更新：val_reward/mean 就是贪心作答的平均奖励
（情感任务里即准确率）。
"""

from __future__ import annotations

from pathlib import Path

import torch

from towergpt.checkpoint import unwrap_model
from towergpt.config import RunConfig
from towergpt.data.prompt_dataset import PromptData, read_prompts, split_prompts
from towergpt.errors import TowerGPTError
from towergpt.generate import generate_batch_greedy, padded_width, sample_batch
from towergpt.model import IGNORE_INDEX
from towergpt.train.distributed import is_main_process, rank_and_world
from towergpt.train.dpo import freeze
from towergpt.train.lora_setup import attach_lora
from towergpt.train.loop import Trainer
from towergpt.train.memory_estimate import report_memory
from towergpt.train.objective import ObjectiveResult, target_token_logprobs
from towergpt.train.rewards import Sample, parse_rewards
from towergpt.train.sft import load_initial_model

STD_EPS = 1e-4


# ---------------------------------------------------------------------------
# 1. 优势与损失（纯函数，测试直接核对）
# ---------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (B, G) → 优势 (B, G)：每行减去行均值、除以行标准差（全组相同时优势全为 0）。"""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + STD_EPS)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
              clip_eps: float, kl_coef: float = 0.0, reference_logprobs: torch.Tensor | None = None):
    """裁剪的策略梯度损失（见模块开头第 4 步）。

    logprobs / old_logprobs / reference_logprobs: (N, L) 每个位置的目标 token 的 log 概率；advantages: (N,)；
    mask: (N, L) 1 = 回答里真实的 token（0 = 提示词、回答已结束后的 padding）。L 可以就是整行的长度 T：
    目标函数传进来的是整行 (N, T)，只有回答的位置 mask 为 1。
    返回 (损失标量, {"clip_fraction", "kl"})：每个回答内对 token 取平均，再对 N 个回答取平均。
    """
    mask = mask.float()
    ratio = torch.exp(logprobs - old_logprobs)                                       # (N, L)
    unclipped = ratio * advantages[:, None]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages[:, None]
    objective = torch.minimum(unclipped, clipped)                                    # (N, L)
    kl = torch.zeros_like(objective)
    if kl_coef and reference_logprobs is not None:
        log_ratio = reference_logprobs - logprobs                                    # log(π_ref / π)
        kl = torch.exp(log_ratio) - log_ratio - 1
        objective = objective - kl_coef * kl
    lengths = mask.sum(dim=1).clamp(min=1)                                           # (N,)
    per_answer = (objective * mask).sum(dim=1) / lengths                             # (N,)
    clipped_tokens = ((ratio - 1).abs() > clip_eps).float() * mask
    stats = {"clip_fraction": clipped_tokens.sum() / mask.sum().clamp(min=1),
             "kl": ((kl * mask).sum(dim=1) / lengths).mean()}
    return -per_answer.mean(), {k: v.detach() for k, v in stats.items()}


# ---------------------------------------------------------------------------
# 2. 目标函数：采样、打分、算损失
# ---------------------------------------------------------------------------

class GRPOObjective:
    """接口见 train/objective.py：objective(model, batch, device) -> ObjectiveResult；batch 是 Prompt 的列表。"""

    def __init__(self, tokenizer, settings, rewards, reference=None):
        self.tokenizer = tokenizer
        self.settings = settings
        self.rewards = rewards          # parse_rewards(settings.rewards) 的结果
        self.reference = reference
        self.stop_ids = (tokenizer.im_end_id, tokenizer.eos_id)

    def __call__(self, model, batch, device: torch.device) -> ObjectiveResult:
        policy = unwrap_model(model)     # 采样用原始模型：DDP / compile 的外壳只在求梯度的那次前向里需要
        if not model.training:          # 验证：每条贪心地答一次，只看奖励
            return self._validate(policy, batch)
        G = self.settings.group_size
        prompts = [list(p.ids) for p in batch for _ in range(G)]                      # N = B·G 条
        answers = sample_batch(policy, prompts, self.settings.max_new_tokens, self.tokenizer.pad_id, self.stop_ids,
                               self.tokenizer.vocab_size, self.settings.temperature)
        scores = self._score([p for p in batch for _ in range(G)], answers)          # (N, 奖励个数)
        total = self._weighted(scores)                                               # (N,)
        advantages = group_advantages(total.view(len(batch), G)).view(-1)           # (N,)
        completions = [ids for ids, _ in answers]
        inputs, targets = _training_rows(prompts, completions, self.tokenizer.pad_id, policy.config.max_seq_len)
        inputs, targets = inputs.to(device), targets.to(device)                       # (N, T), (N, T)
        # 样本来自“除以温度”之后的分布，log 概率也按同一个分布算：策略梯度要求样本来自被求导的那个策略。
        # 只有回答的位置有目标；模型分块时（loss_chunk_tokens）直接给出这些 log 概率，不造出 (N, T, V)
        temperature = self.settings.temperature
        logprobs = target_token_logprobs(model, inputs, targets, temperature)           # (N, T)
        reference = None
        if self.reference is not None and self.settings.kl_coef:
            with torch.no_grad():
                reference = target_token_logprobs(self._reference_on(device), inputs, targets, temperature)
        mask = targets != IGNORE_INDEX                                                  # (N, T) 回答的 token
        loss, stats = grpo_loss(logprobs, logprobs.detach(), advantages.to(device), mask, self.settings.clip_eps,
                                self.settings.kl_coef, reference)
        metrics = {**self._reward_metrics(scores, total, G), **stats,
                   "completion_length": torch.tensor(float(mask.sum()) / len(prompts))}
        tokens = sum(len(p) + len(c) for p, c in zip(prompts, completions))
        return ObjectiveResult(loss=loss, weight=len(prompts), tokens=tokens, metrics=metrics)

    def _validate(self, policy, batch) -> ObjectiveResult:
        prompts = [list(p.ids) for p in batch]
        answers = generate_batch_greedy(policy, prompts, self.settings.max_new_tokens, self.tokenizer.pad_id,
                                        self.stop_ids, self.tokenizer.vocab_size)
        scores = self._score(batch, [(ids, True) for ids in answers])
        total = self._weighted(scores)
        metrics = {"reward/mean": total.mean(), **{f"reward/{r.name}": scores[:, i].mean()
                                                   for i, r in enumerate(self.rewards)}}
        tokens = sum(len(p) + len(a) for p, a in zip(prompts, answers))
        return ObjectiveResult(loss=torch.zeros(()), weight=len(batch), tokens=tokens, metrics=metrics)

    def _score(self, prompts, answers) -> torch.Tensor:
        """每个回答、每个奖励函数的分 (N, 奖励个数)。回答解码时去掉停止 token。"""
        rows = []
        for prompt, (ids, finished) in zip(prompts, answers):
            text = self.tokenizer.decode([t for t in ids if t not in self.stop_ids])
            sample = Sample(prompt.text, text, prompt.answer, finished)
            rows.append([reward(sample) for reward in self.rewards])
        return torch.tensor(rows, dtype=torch.float64)

    def _weighted(self, scores: torch.Tensor) -> torch.Tensor:
        """总奖励 = Σ 权重 × 各奖励 (N,)。逐元素乘再求和：autocast 下矩阵乘会被换成低精度，奖励不该受它影响。"""
        weights = torch.tensor([r.weight for r in self.rewards], dtype=scores.dtype)
        return (scores * weights).sum(dim=1)

    def _reward_metrics(self, scores: torch.Tensor, total: torch.Tensor, G: int) -> dict:
        groups = total.view(-1, G)
        return {
            "reward/mean": total.mean(),
            "reward/std": groups.std(dim=1, unbiased=False).mean(),          # 组内标准差的平均：信号有多强
            "reward/no_signal": (groups.max(dim=1).values == groups.min(dim=1).values).double().mean(),
            **{f"reward/{r.name}": scores[:, i].mean() for i, r in enumerate(self.rewards)},
        }

    def _reference_on(self, device):
        return self.reference.to(device)


def _training_rows(prompts: list[list[int]], answers: list[list[int]], pad_id: int, max_seq_len: int):
    """拼成训练用的 (inputs (N, T), targets (N, T))：targets 只在回答的位置有值，其余是 IGNORE_INDEX。

    每行 = 提示词 + 回答，**右** padding：padding 都在真 token 之后，因果注意力本来就看不见它们，
    于是不用传 attention_mask，模型走最快的 is_causal 路径（显式掩码在 CPU 上要慢一大截）。
    位置 t 的输出预测第 t+1 个 token，所以回答的第 j 个 token 由位置 len(提示词) − 1 + j 预测：
    targets 在这些位置放回答本身；提示词和 padding 的位置是 IGNORE_INDEX（log 概率为 0，mask 也是 0）。
    T 向上取整（generate.padded_width：张量形状种类少，CPU 上快得多）。
    """
    T = padded_width(max(len(p) + len(a) for p, a in zip(prompts, answers)) - 1, max_seq_len)
    rows = len(prompts)
    inputs = torch.full((rows, T), pad_id, dtype=torch.long)
    targets = torch.full((rows, T), IGNORE_INDEX, dtype=torch.long)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        sequence = prompt + answer
        inputs[row, :len(sequence) - 1] = torch.tensor(sequence[:-1])
        targets[row, len(prompt) - 1:len(sequence) - 1] = torch.tensor(answer, dtype=torch.long)
    return inputs, targets


# ---------------------------------------------------------------------------
# 3. 入口
# ---------------------------------------------------------------------------

def run_grpo(config: RunConfig, resume: bool = False) -> dict:
    """读提示词、载入起点模型（和 kl_coef > 0 时的参考模型），运行训练循环，返回摘要。"""
    if not config.data.path or not Path(config.data.path).is_file():
        raise TowerGPTError(f"data.path 应指向提示词文件（.jsonl / .json / .parquet，每条 prompt 或 messages 加 answer），"
                            f"实际是 {config.data.path!r} / data.path must be a prompts file")
    rewards = parse_rewards(config.grpo.rewards)            # 奖励写错了：在载入模型之前就说
    # 起点与 SFT / DPO 相同（init_from）；没有 token 分片可核对：提示词就是用检查点的分词器在这里编码的
    model, tokenizer = load_initial_model(config, None, lora=False)
    reference = freeze(model) if config.grpo.kl_coef else None
    attach_lora(model, config)
    max_prompt = model.config.max_seq_len - config.grpo.max_new_tokens
    if config.grpo.max_prompt_tokens:
        max_prompt = min(max_prompt, config.grpo.max_prompt_tokens)
    prompts, too_long = read_prompts(config.data.path, tokenizer, max_prompt)
    train_prompts, val_prompts = split_prompts(prompts, config.grpo.val_prompts, config.train.seed)
    rank, world_size = rank_and_world()
    train_data = PromptData(train_prompts, config.train.seed, rank, world_size, config.train.micro_batch_size)
    val_data = PromptData(val_prompts, config.train.seed) if val_prompts else None
    if is_main_process():
        print(f"提示词 / prompts: 训练 train {len(train_prompts):,}，验证 val {len(val_prompts):,}"
              f"（超过 {max_prompt} 个 token 的跳过 / skipped as longer than {max_prompt} tokens: {too_long}）；"
              f"每组 G={config.grpo.group_size}，奖励 / rewards {config.grpo.rewards}，kl_coef={config.grpo.kl_coef:g}")
    objective = GRPOObjective(tokenizer, config.grpo, rewards, reference)
    # 采样用全局随机数：从 train.seed 开始，同样的配置两次运行逐位相同；续训时检查点会恢复它的状态
    torch.manual_seed(config.train.seed)
    report_memory(config, "grpo")   # 开训前的内存估计（只在主进程打印）
    return Trainer(config, model, tokenizer, objective, train_data, val_data).run(resume=resume)
