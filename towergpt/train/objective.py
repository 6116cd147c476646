"""目标函数的约定：训练循环和评估只认识这里的 ObjectiveResult，不认识任何一种具体的目标。

“目标函数”（objective）回答一个问题：**给模型一批数据，损失是多少？** 预训练、SFT、DPO、GRPO
的区别全在这里（和各自的数据里），训练循环（train/loop.py）对它们一视同仁：

    result = objective(model, batch, device)       # 在 autocast 下调用；返回一个 ObjectiveResult

本模块按顺序讲五件事：

    1. ObjectiveResult   目标函数交给循环的东西：损失、权重、token 数、指标、困惑度有没有意义
    2. ResultSums        把许多个结果按权重加起来（训练的一步、一次验证都要这样做）
    3. evaluate_objective  在一串批次上不求梯度地跑目标函数：训练中的验证和 `towergpt eval` 共用它
    4. language_model_objective  最基本的目标：下一个 token 的交叉熵（预训练、SFT、`towergpt eval`）
    5. target_token_logprobs  每个目标 token 的 log 概率：DPO 和 GRPO 的原料

符号：
    B  批里的行数        T  每行的长度（输入 x 和目标 y 一样长）
    w  一个结果的权重    W  一步（或一次验证）里所有结果的权重之和

**权重（weight）是什么？** 一个结果的 loss 是若干个“单位”上的平均，weight 就是单位的个数：
    语言模型  单位 = 参与损失的目标 token（SFT 里只有助手说的话）
    DPO       单位 = 偏好对（损失是“每对一个数”的平均）
    GRPO      单位 = 采样出的回答（或回答里的 token），要等采样完才知道有多少
许多个结果合起来的平均必须按权重算：Σ(loss × w) / W。简单地对各批的 loss 再取平均，
会让单位少的批次里每个单位分量更重——梯度累积就不再等于“把所有微批次拼成一个大批次”。

**为什么权重放在结果里，而不是让目标函数事先报一个 weight_of(batch)？**
    1. 有的权重只有算过才知道：GRPO 的回答是在目标函数里采样出来的，之前根本不知道有几个 token。
    2. 循环只需要看结果，不必知道批次长什么样（是 (x, y) 还是 dict、哪些位置不计损失）；
       测试里随手包一层的目标函数（比如“第 N 次调用时模拟崩溃”）也照样能用。
    代价是：循环在做第一次反向传播时还不知道这一步的总权重 W。train/loop.py 的办法是先用一个
    “临时分母”反向、最后把梯度乘一个校正系数，结果与事先知道 W 时完全相同（推导见那里的模块说明）。
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from towergpt.checkpoint import unwrap_model
from towergpt.chunked_loss import target_logprobs_from_logits
from towergpt.model import IGNORE_INDEX
from towergpt.train import precision


# ---------------------------------------------------------------------------
# 1. 目标函数交回的结果
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ObjectiveResult:
    """一个批次上目标函数的结果。循环对目标函数的全部了解，就是这五个字段。

    loss:    标量张量，weight 个单位上的**平均**损失；训练时从它反向传播。
    weight:  loss 平均了多少个单位（目标 token、偏好对、回答……，见模块开头）。
             循环用它给各个微批次、各个验证批次加权。
    tokens:  这个批次实际处理了多少个 token（不含 padding），只用来统计吞吐（tok_per_s）。
    metrics: 附加指标 {名字: 标量张量}（DPO 的 rewards/margin 等），与 loss 一样按 weight 加权平均，
             写进训练行；验证时加上 val_ 前缀写进评估行。
    is_token_cross_entropy:  loss 是不是“每个目标 token 的平均交叉熵（nat）”。只有是的时候，
             困惑度 exp(loss) 和每字符比特数 bpc 才有意义（DPO 的损失不是交叉熵，exp 它什么也不是）。
    """

    loss: torch.Tensor
    weight: int
    tokens: int
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    is_token_cross_entropy: bool = False


# ---------------------------------------------------------------------------
# 2. 按权重加起来
# ---------------------------------------------------------------------------

@dataclass
class ResultSums:
    """若干个 ObjectiveResult 按权重相加；平均值 = Σ(值 × w) / W。

    on_host 决定数放在哪里加：
        False（训练的一步）：留在设备上的张量里加。一步只有 grad_accum 个结果，float32 足够准；
               不调用 .item()，CPU 就不必停下来等 GPU 算完，可以接着安排下一个微批次。
        True（评估）：每个结果都 .item() 成 Python 的 float（64 位）再加。评估可能有几十万批，
               float32 的累加会丢掉 loss 的后几位小数。
    """

    on_host: bool = False
    weighted_loss: float | torch.Tensor = 0.0          # Σ loss × w
    weight: int = 0                                     # W = Σ w
    tokens: int = 0                                     # Σ tokens
    weighted_metrics: dict = field(default_factory=dict)   # 名字 -> Σ 指标 × w
    is_token_cross_entropy: bool = False

    def add(self, result: ObjectiveResult) -> None:
        """加上一个结果。权重为 0 的结果（比如一个没有任何目标 token 的批次）只计 token 数：
        它的“平均损失”是 0/0，不代表任何东西。"""
        self.tokens += result.tokens
        self.is_token_cross_entropy = result.is_token_cross_entropy
        if result.weight == 0:
            return
        self.weight += result.weight
        self.weighted_loss = self.weighted_loss + self._number(result.loss) * result.weight
        for name, value in result.metrics.items():
            self.weighted_metrics[name] = self.weighted_metrics.get(name, 0.0) + self._number(value) * result.weight

    def _number(self, value: torch.Tensor):
        return value.item() if self.on_host else value.detach().float()

    @property
    def mean_loss(self) -> float:
        """Σ(loss × w) / W：所有结果拼成一个大批次时的平均损失。"""
        return float(self.weighted_loss) / max(self.weight, 1)

    def mean_metrics(self) -> dict[str, float]:
        return {name: float(total) / max(self.weight, 1) for name, total in sorted(self.weighted_metrics.items())}


def validation_metrics(sums: ResultSums, characters_per_token: float | None = None) -> dict:
    """把验证集上的结果之和写成评估行：val_loss、（交叉熵时）val_ppl 与 val_bpc、val_<指标>。

    困惑度 = exp(每个 token 的交叉熵)：“模型平均在几个候选之间犹豫”；
    bpc = 每个 token 的比特数 / 每个 token 平均几个字符：与分词器无关，不同词表的模型可以直接比。
    characters_per_token 来自验证数据（没有或为 0 时不算 bpc）。
    """
    if sums.weight == 0:
        return {}
    val_loss = sums.mean_loss
    row = {"val_loss": val_loss}
    if sums.is_token_cross_entropy:
        row["val_ppl"] = math.exp(min(val_loss, 50.0))   # 封顶：刚初始化的模型 exp 会溢出
    row.update({f"val_{name}": value for name, value in sums.mean_metrics().items()})
    if sums.is_token_cross_entropy and characters_per_token:
        row["val_bpc"] = val_loss / math.log(2) / characters_per_token
    return row


# ---------------------------------------------------------------------------
# 3. 只前向、不求梯度地评估
# ---------------------------------------------------------------------------

@torch.no_grad()
def evaluate_objective(objective: Callable, model: torch.nn.Module, batches: Iterable, device: torch.device,
                       dtype: torch.dtype, on_result: Callable[[ObjectiveResult], None] = lambda result: None
                       ) -> ResultSums:
    """在每个批次上跑一次目标函数（autocast、no_grad），返回按权重加起来的结果。

    训练中的验证（Trainer.evaluate，任何目标函数）和 `towergpt eval`（语言模型目标）走的是同一条路，
    所以两边报告的 val_loss / loss 是同一个数的同一种算法。on_result(result) 每批调用一次，
    用来推进进度条。调用者负责 model.eval()（关掉 dropout），之后按需切回 model.train()。
    """
    sums = ResultSums(on_host=True)
    for batch in batches:
        with precision.autocast(device, dtype):
            result = objective(model, batch, device)
        sums.add(result)
        on_result(result)
    return sums


# ---------------------------------------------------------------------------
# 4. 语言模型的目标函数
# ---------------------------------------------------------------------------

def language_model_objective(model, batch, device, pad_id: int | None = None) -> ObjectiveResult:
    """下一个 token 的交叉熵。batch = (x, y)，都是 (B, T)：y 是 x 向左错一位，IGNORE_INDEX 的位置不计损失。

    weight = 参与损失的目标 token 数（预训练是 B·T；SFT 只数助手说的话；`towergpt eval` 的滑动窗口只数新的）。
    tokens = 输入的 token 数。预训练的批次没有 padding，就是 B·T；SFT 的批次右补齐了 pad_id，
    给出 pad_id 时只数不是 pad 的 token，吞吐才不会被 padding 虚高。
    两个数都在搬上设备之前、在 CPU 上的批次里数：在 GPU 上数完再 int() 会让 CPU 停下来等 GPU。
    模型设了 loss_chunk_tokens 时，它分块算这个损失、不造出 (B, T, V) 的 logits（model.py、chunked_loss.py）。
    """
    inputs, targets = batch                                                       # (B, T), (B, T)
    weight = int((targets != IGNORE_INDEX).sum())
    tokens = inputs.numel() if pad_id is None else int((inputs != pad_id).sum())
    _, loss = model(inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True))
    return ObjectiveResult(loss=loss, weight=weight, tokens=tokens, is_token_cross_entropy=True)


# ---------------------------------------------------------------------------
# 5. 每个目标 token 的 log 概率（DPO、GRPO）
# ---------------------------------------------------------------------------

def target_token_logprobs(model, inputs: torch.Tensor, targets: torch.Tensor,
                          temperature: float = 1.0) -> torch.Tensor:
    """inputs、targets (N, T) → 每个目标 token 的 log 概率 (N, T)，IGNORE_INDEX 处为 0；logits 先除以 temperature。

    DPO 把它按行加起来（一个回答的 log π(y|x)），GRPO 逐 token 用它。
    模型设了 loss_chunk_tokens 时，直接让模型的 forward 分块给出它：(N, T, V) 的 logits 从不出现，
    这一步也仍在 DDP / FSDP / compile 外壳的 forward 里（FSDP 只在那里给出完整的输出头权重）。
    否则照旧从完整的 logits 算——只认识 model(inputs) 的模型（比如测试里返回固定 logits 的假模型）也能用。
    """
    if getattr(unwrap_model(model), "loss_chunk_tokens", 0) > 0:
        return model(inputs, targets, per_token=True, temperature=temperature)
    return target_logprobs_from_logits(model(inputs), targets, temperature)
