"""LoRA 的那一层：冻结的 W，加上一个可以训练的低秩修正 B·A。

LoRA（Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"）回答一个问题：
**微调时真的要改动全部参数吗？** 把一个训练好的线性层 y = W·x 改写成

    y = W·x + (α / r) · B·(A·x)          W: (out, in) 冻结    A: (r, in)    B: (out, r)    r ≪ min(out, in)

只训练 A 和 B。符号（与 model.py 一致，再加三个）：
    in / out  线性层的输入、输出维度（例如 qkv 是 C → (H + 2·Hkv)·D）
    r         秩 rank：修正矩阵 ΔW = B·A 的秩最多是 r
    α         alpha：缩放系数

为什么这样能行？经验上，微调时权重的变化 ΔW 是“低秩”的：几个方向就够把一个会续写新闻的模型
变成一个会答“正面 / 负面”的模型。一个 (out, in) 的矩阵有 out·in 个数，B·A 只有 r·(out + in) 个：
quickstart 模型的 qkv（256 → 512）有 13 万个参数，r = 8 的 LoRA 只有 6 千个。
可训练的参数少了，梯度和优化器状态（AdamW 每个参数两份）就少了同样的倍数——显存不够时正是省在这里。

三个细节，每个都有原因：
1. **B 从 0 开始，A 随机。** 于是训练开始时 B·A = 0，模型与起点的检查点**完全相同**，
   微调从“原来的模型”出发，而不是从一个被随机扰动过的模型出发。为什么不两个都是 0？
   那样 A 和 B 的梯度也都是 0（∂/∂A 里乘着 B，∂/∂B 里乘着 A·x），永远学不动。
2. **缩放 α / r。** 换一个秩 r 时，B·A 的量级会跟着变；除以 r 让不同的 r 可以用同一个学习率，
   调 r 时不必重调学习率。α 是与 r 无关的“总力度”，常取 r 的 1 到 2 倍。
3. **可以合并。** 训练完，W' = W + (α/r)·B·A 是一个普通的矩阵：合并之后推理没有任何额外开销，
   模型就是一个普通的 GPT（`towergpt lora merge`）。

这里自己写而不用 peft 这样的库：LoRA 是这门课的一课，几十行就写得完，而且要用模型自己的词汇讲清楚。
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Linear):
    """一个带 LoRA 修正的线性层。它**就是**一个 nn.Linear（子类）：weight 还在原来的名字下，
    所以检查点里底座权重的名字（blocks.0.attn.qkv.weight）不变，多出来的只有 lora_A、lora_B。
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        # 在 meta 设备上构造：nn.Linear 自己的那份 weight 只是个空壳，不占内存，马上换成底座的那份
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None, device="meta")
        self.weight = base.weight                     # 同一个 Parameter，不复制
        self.bias = base.bias
        self.weight.requires_grad_(False)             # 底座冻结：优化器看不到它，也不为它存状态
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.scale = alpha / rank
        # A 随机、B 为零（见模块开头第 1 点）。A 用与 nn.Linear 默认相同的 Kaiming 均匀初始化（peft 也这样做）
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device,
                                               dtype=base.weight.dtype))
        # generator：给了就用它（训练入口按 train.seed 造一个），A 的初值与此前用过多少随机数无关，两次运行完全相同
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) → (..., out)：W·x 再加上 (α/r)·B·(A·x)。

        先算 A·x（(..., r)，很窄）再乘 B，而不是先拼出 (out, in) 的 B·A：
        前者每个 token 只多 r·(in + out) 次乘加，后者要造一个和 W 一样大的矩阵。
        """
        base = F.linear(x, self.weight, self.bias)                             # (..., out)
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)   # (..., in) → (..., r) → (..., out)
        return base + update * self.scale

    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r)·B·A，形状与 weight 相同 (out, in)。"""
        return (self.lora_B @ self.lora_A) * self.scale

    def merged(self) -> nn.Linear:
        """合并成一个普通的 nn.Linear：W' = W + ΔW（见模块开头第 3 点）。"""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha:g}"
