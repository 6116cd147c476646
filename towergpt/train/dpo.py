"""偏好微调（DPO，Direct Preference Optimization）入口：`towergpt dpo --config FILE`。

SFT 教模型“照着好答案说”；DPO 再教它“两个回答里更偏向好的那个”。数据是一对对
(提示, chosen 更好的回答, rejected 更差的回答)，不需要奖励模型，也不需要在线采样。

核心量：一个回答的对数概率 log π(y|x) = 回答里每个 token 的 log 概率之和（提示部分不算）。
隐式奖励（implicit reward）= β · [log π(y|x) − log π_ref(y|x)]，
即“策略模型比参考模型（冻结的 SFT 模型）更愿意说 y 多少”，β 控制这个差值的尺度。

    z    = 奖励(chosen) − 奖励(rejected)
         = β · { [log π(y_w|x) − log π(y_l|x)] − [log π_ref(y_w|x) − log π_ref(y_l|x)] }
    损失 = −(1 − ε) · log σ(z) − ε · log σ(−z)          （ε = label_smoothing，默认 0）
         + sft_weight · (−log π(y_w|x) / |y_w|)         （可选：chosen 上每 token 的负对数似然）

σ 是 sigmoid。z 越大（更偏向 chosen），−log σ(z) 越接近 0；z = 0 时损失是 log 2 ≈ 0.693。
ε > 0（“保守 DPO”）假定每对标注有 ε 的概率是反的：损失不再随 z 无限下降，防止把差距推向无穷。
减去参考模型的那一项让 DPO 只奖励“相对于起点的改变”，β 越大，偏离参考模型的代价越高。
为什么加 SFT 项？纯 DPO 只管两个回答的**差**，可能把两者的概率一起压低；
在 chosen 上加一点普通的语言模型损失，能让好的回答本身保持高概率。

训练循环与预训练、SFT 完全相同（train/loop.py）；这里只提供：
    - 冻结的参考模型：一份 SFT 模型的拷贝，eval 模式（关掉 dropout），requires_grad=False，
      在 torch.no_grad() 下前向——它永远不变，也不占梯度的内存；
    - 目标函数：chosen 和 rejected 拼成 2B 行一次前向，算上面的损失，并报告
      rewards/chosen、rewards/rejected、rewards/margin、rewards/accuracy 四个指标。
      它交给循环的 ObjectiveResult（见 train/objective.py）里，权重是这批的对数（损失是“每对一个数”的平均），
      is_token_cross_entropy 为 False：DPO 的损失不是交叉熵，评估行里于是没有困惑度和 bpc。
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from towergpt.chunked_loss import target_logprobs_from_logits
from towergpt.config import RunConfig
from towergpt.data.data_format import load_meta
from towergpt.data.dpo_dataset import DPOData
from towergpt.errors import TowerGPTError
from towergpt.model import IGNORE_INDEX
from towergpt.train.distributed import is_main_process, rank_and_world
from towergpt.train.loop import Trainer
from towergpt.train.memory_estimate import report_memory
from towergpt.train.objective import ObjectiveResult, target_token_logprobs
from towergpt.train.lora_setup import attach_lora
from towergpt.train.sft import load_initial_model


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """每一行：回答 token 的 log 概率之和，以及回答有几个 token。

    logits (N, T, V)，targets (N, T)（IGNORE_INDEX 的位置不是回答，不计）。返回两个 (N,) 张量。
    每个目标 token 的 log 概率（被忽略的位置给 0）按行求和就是 log π(y|x)；算之前先转成 float32：
    bf16 下几百个 log 概率相加会丢掉不少精度。这是从完整 logits 出发的写法；目标函数本身走
    target_token_logprobs，模型分块时不造出 (N, T, V)（见 train/objective.py）。
    """
    return target_logprobs_from_logits(logits, targets).sum(dim=1), (targets != IGNORE_INDEX).sum(dim=1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, reference_chosen: torch.Tensor,
             reference_rejected: torch.Tensor, beta: float, label_smoothing: float = 0.0,
             chosen_nll_per_token: torch.Tensor | None = None, sft_weight: float = 0.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO 的 sigmoid 损失（公式见模块开头），对 B 对取平均；返回 (损失, 指标)。

    前四个参数都是 (B,)：策略 / 参考模型在 chosen / rejected 上的 log 概率之和。
    chosen_nll_per_token (B,)：chosen 上每 token 的平均负对数似然，sft_weight > 0 时必须给。
    指标（都已 detach）：rewards/chosen、rewards/rejected 是两种回答的平均隐式奖励，
    rewards/margin 是两者之差的平均，rewards/accuracy 是“chosen 的奖励更高”的对所占比例。
    """
    chosen_rewards = beta * (policy_chosen - reference_chosen)           # (B,)
    rejected_rewards = beta * (policy_rejected - reference_rejected)     # (B,)
    z = chosen_rewards - rejected_rewards                                # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    if sft_weight:
        if chosen_nll_per_token is None:
            raise ValueError("sft_weight > 0 needs chosen_nll_per_token")
        losses = losses + sft_weight * chosen_nll_per_token
    metrics = {
        "rewards/chosen": chosen_rewards.detach().mean(),
        "rewards/rejected": rejected_rewards.detach().mean(),
        "rewards/margin": z.detach().mean(),
        "rewards/accuracy": (z.detach() > 0).float().mean(),
    }
    return losses.mean(), metrics


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """参考模型：一份独立的拷贝，eval 模式（dropout 关掉，结果确定），所有参数 requires_grad=False。"""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


class DPOObjective:
    """DPO 的目标函数，接口见 train/objective.py：objective(model, batch, device) -> ObjectiveResult。

    batch 来自 DPOData：{"inputs": (2B, T), "targets": (2B, T), "pairs": B}，前 B 行 chosen，后 B 行 rejected。
    结果的 weight = B（对数），tokens = 2B 行里不是 pad 的 token 数，metrics = 四个 rewards/ 指标。
    """

    def __init__(self, reference: torch.nn.Module, pad_id: int, beta: float = 0.1, label_smoothing: float = 0.0,
                 sft_weight: float = 0.0):
        self.reference = reference
        self.pad_id = pad_id
        self.beta = beta
        self.label_smoothing = label_smoothing
        self.sft_weight = sft_weight
        self._reference_device: torch.device | None = None

    def __call__(self, model, batch: dict, device: torch.device) -> ObjectiveResult:
        pairs = int(batch["pairs"])
        tokens = int((batch["inputs"] != self.pad_id).sum())        # 在 CPU 上数：不必等 GPU
        inputs = batch["inputs"].to(device, non_blocking=True)      # (2B, T)
        targets = batch["targets"].to(device, non_blocking=True)    # (2B, T)
        answer_tokens = (targets != IGNORE_INDEX).sum(dim=1)                           # (2B,)
        # 策略模型：chosen 和 rejected 一次前向（2B 行），梯度从这里流回；每行的 log π(y|x) = 回答 token 之和
        policy_logps = target_token_logprobs(model, inputs, targets).sum(dim=1)        # (2B,)
        # 参考模型：不求梯度，只要它的 log 概率
        with torch.no_grad():
            reference_logps = target_token_logprobs(self._reference_on(device), inputs, targets).sum(dim=1)
        chosen_nll = -policy_logps[:pairs] / answer_tokens[:pairs].clamp(min=1)        # (B,) 每 token 的 NLL
        loss, metrics = dpo_loss(policy_logps[:pairs], policy_logps[pairs:], reference_logps[:pairs],
                                 reference_logps[pairs:], self.beta, self.label_smoothing, chosen_nll,
                                 self.sft_weight)
        return ObjectiveResult(loss=loss, weight=pairs, tokens=tokens, metrics=metrics, is_token_cross_entropy=False)

    def _reference_on(self, device: torch.device) -> torch.nn.Module:
        """第一次用到时把参考模型搬到训练设备上（之后不再搬）。"""
        if self._reference_device != device:
            self.reference.to(device)
            self._reference_device = device
        return self.reference


def run_dpo(config: RunConfig, resume: bool = False) -> dict:
    """准备偏好数据、策略模型和冻结的参考模型，运行训练循环，返回摘要。"""
    if not config.data.path:
        raise TowerGPTError("data.path 未设置：请指向 `towergpt data prepare --format dpo` 的输出"
                            " / data.path is not set")
    data_dir = Path(config.data.path)
    model, tokenizer = load_initial_model(config, data_dir, lora=False)
    reference = freeze(model)   # 在训练改动 model 之前拷贝：参考模型就是起点的 SFT 模型
    attach_lora(model, config)  # 拷完再装 LoRA（配置了的话）：参考模型里不必带着一堆为零的适配器
    seq_len, seed = config.model.max_seq_len, config.train.seed
    rank, world_size = rank_and_world()
    train_data = DPOData(data_dir, "train", seq_len, seed=seed, rank=rank, world_size=world_size)
    has_val = load_meta(data_dir, "dpo")["val"]["pairs"] > 0
    val_data = DPOData(data_dir, "val", seq_len, seed=seed) if has_val else None
    dpo = config.dpo
    if is_main_process():
        print(f"偏好对 / pairs: 训练 train {train_data.num_pairs:,}，验证 val {val_data.num_pairs if val_data else 0:,}；"
              f"beta={dpo.beta:g} label_smoothing={dpo.label_smoothing:g} sft_weight={dpo.sft_weight:g}")
    objective = DPOObjective(reference, tokenizer.pad_id, dpo.beta, dpo.label_smoothing, dpo.sft_weight)
    report_memory(config, "dpo")   # 开训前的内存估计（只在主进程打印）
    trainer = Trainer(config, model, tokenizer, objective, train_data, val_data)
    return trainer.run(resume=resume)
