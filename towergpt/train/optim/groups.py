"""参数分组：哪些参数做权重衰减，哪些是走 GaLore / Muon“特殊通道”的隐藏层矩阵。

权重衰减的规则（与 nanoGPT 相同，一眼可见）：
    2 维及以上的张量（线性层矩阵、词向量表）   做权重衰减
    1 维张量（RMSNorm 的缩放系数、偏置）        不做
权重衰减把权重往 0 拉，相当于正则化；对归一化层的缩放系数这样做没有意义，反而有害。

隐藏层矩阵（HIDDEN_MATRICES）：每个 Transformer 块里的五种权重矩阵——
注意力的 qkv、out_proj，SwiGLU 的 gate_proj、up_proj、down_proj。
词向量表（与输出头共享）不算“隐藏层”矩阵：它的每一行只在对应 token 出现时才有梯度，
做低秩投影或正交化都不合适（Muon 的作者也这样建议）；RMSNorm 的缩放系数是一维的，更谈不上。
它们都留给 AdamW。
"""

from __future__ import annotations

import torch

# 走 GaLore / Muon 的矩阵：参数名的倒数第二段（模块名），见 model.py 的 CausalSelfAttention 和 SwiGLU
HIDDEN_MATRICES = ("qkv", "out_proj", "gate_proj", "up_proj", "down_proj")

NamedParams = list[tuple[str, torch.Tensor]]


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """把可训练参数分成“衰减”和“不衰减”两组（共享的权重只出现一次）。"""
    # parameters() 会自动去重共享的权重（词向量表与输出头是同一个张量）
    return split_by_decay([p for p in model.parameters() if p.requires_grad], weight_decay)


def split_by_decay(params: list[torch.Tensor], weight_decay: float) -> list[dict]:
    """按维数分成 decay（≥ 2 维）和 no_decay（< 2 维）两个参数组；GaLore / Muon 用它安排“其余参数”。"""
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


def split_hidden_matrices(model: torch.nn.Module) -> tuple[NamedParams, NamedParams]:
    """把可训练参数分成 (隐藏层矩阵, 其余参数)，各是 (名字, 参数) 的列表；每个参数恰好出现一次。

    名字形如 blocks.0.attn.qkv.weight：最后一段是 weight、倒数第二段在 HIDDEN_MATRICES 里的二维张量
    就是隐藏层矩阵。（被 DDP 包过的模型名字前多一个 module.，不影响判断。）
    """
    hidden, rest = [], []
    for name, param in model.named_parameters():  # 与 parameters() 一样，共享的权重只给一次
        if not param.requires_grad:
            continue
        parts = name.split(".")
        is_hidden = param.dim() == 2 and len(parts) >= 2 and parts[-1] == "weight" and parts[-2] in HIDDEN_MATRICES
        (hidden if is_hidden else rest).append((name, param))
    return hidden, rest
