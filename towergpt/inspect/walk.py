"""一层一层地走一遍模型，把平时看不见的中间结果留下来：残差流和注意力权重。

平时的前向（model.py 的 GPT.forward）只交出最后的 logits；注意力又走的是 PyTorch 的融合内核
（scaled_dot_product_attention），它根本不会造出 T×T 的注意力矩阵。检视器需要这两样东西，
于是这里用**模型自己的子模块**，按 GPT.forward 的顺序手动走一遍：

    x₀ = 词向量(ids)                                  残差流的起点（第 0 “层”）
    对每个 Block l：
        h = attn_norm(x)
        A_l = softmax(q·kᵀ/√D + 因果掩码)             ← 显式算出注意力权重 (H, T, T)，只为了看
        x = Block_l(x)                                 ← 残差流真正的更新仍由 Block 自己算
    logits = lm_head(final_norm(x_L))

为什么不用 forward hook 去“偷看”？hook 挂在共享的模型上，服务器里另一个线程正在用同一个模型生成
回答时，它的前向也会被 hook 截住，数据就串了。这里什么都不挂、什么都不改，只读权重，所以可以与生成同时进行。

代价是“手动走一遍”必须与 GPT.forward 一致：tests/test_inspect.py 核对两件事——
走完得到的 logits 与 model(ids) 相同；显式的注意力权重乘上 v、再过 out_proj，等于注意力模块自己的输出。
哪天 model.py 改了结构而这里没跟上，测试会失败，而不是悄悄给出错的图。

符号同 model.py：T 序列长度，C 隐藏维度，V 词表大小，L 层数，H 查询头数，Hkv 键值头数，D 每头维度。
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from towergpt.checkpoint import unwrap_model
from towergpt.model import apply_rope, repeat_kv


@dataclass
class Walk:
    """走一遍留下的东西（都已搬回 CPU、float32）。"""

    logits: torch.Tensor      # (T, V) 与 model(ids)[0] 相同
    residuals: torch.Tensor   # (L + 1, T, C) 第 0 个是词向量，第 l 个是第 l 个 Block 的输出
    attention: torch.Tensor   # (L, H, T, T) 每行是一个查询位置对所有键位置的权重，行和为 1，对角线以上为 0


def attention_weights(attn, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """一层的注意力权重：x 是 attn_norm 之后的输入 (1, T, C)，返回 (H, T, T)。

    与 model.py 的 CausalSelfAttention.forward 同样算 q、k（同一个 qkv 矩阵、同样的 RoPE），
    再把融合内核里“看不见”的那一步写出来：scores = q·kᵀ/√D，对角线以上（未来）填 -inf，按行 softmax。
    """
    _, T, _ = x.shape
    q, k, _ = attn.qkv(x).split(
        [attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim, attn.n_kv_head * attn.head_dim], dim=-1
    )
    q = apply_rope(q.view(1, T, attn.n_head, attn.head_dim).transpose(1, 2), cos, sin)       # (1, H, T, D)
    k = apply_rope(k.view(1, T, attn.n_kv_head, attn.head_dim).transpose(1, 2), cos, sin)    # (1, Hkv, T, D)
    k = repeat_kv(k, attn.n_head // attn.n_kv_head)                                           # (1, H, T, D)
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(attn.head_dim)             # (1, H, T, T)
    future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)             # 第 i 行第 j>i 列
    scores = scores.masked_fill(future, float("-inf"))
    return torch.softmax(scores, dim=-1)[0]                                                   # (H, T, T)


@torch.no_grad()
def walk(model, ids: list[int]) -> Walk:
    """在一条序列 ids（长度 T ≤ max_seq_len）上走一遍模型。模型应处于 eval 模式（关掉 dropout）。"""
    model = unwrap_model(model)   # 服务端可能把模型 torch.compile 过：子模块与权重是同一份
    T = len(ids)
    if not 0 < T <= model.config.max_seq_len:
        raise ValueError(f"need 1..{model.config.max_seq_len} tokens, got {T}")
    device = model.embed.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=device)                 # (1, T)
    cos = model.rope_cos[:T].view(1, 1, T, -1)                                 # (1, 1, T, D) 位置 0..T-1
    sin = model.rope_sin[:T].view(1, 1, T, -1)

    x = model.dropout(model.embed(idx))                                         # (1, T, C)
    residuals, attention = [x[0]], []
    for layer, block in enumerate(model.blocks):
        attention.append(attention_weights(block.attn, block.attn_norm(x), cos, sin))
        # 与 GPT.forward 一样调用 Block：没有 padding、从位置 0 开始，所以 is_causal=True、不需要显式掩码
        x = block(x, cos, sin, None, True, None, layer)                         # (1, T, C)
        residuals.append(x[0])
    logits = model.lm_head(model.final_norm(x))[0]                              # (T, V)
    return Walk(logits=logits.float().cpu(), residuals=torch.stack(residuals).float().cpu(),
                attention=torch.stack(attention).float().cpu())


@torch.no_grad()
def lens_logits(model, residual: torch.Tensor) -> torch.Tensor:
    """logit lens：把某一层的残差流 (T, C) 直接送进最后的 RMSNorm 和输出头，得到 (T, V)。

    意思是“如果网络在这一层就停下，它会预测什么”。最后一层的结果就是模型真正的输出；
    越往前的层，答案越模糊——读者可以看到答案是在第几层“成形”的。
    """
    model = unwrap_model(model)
    weight = model.lm_head.weight
    hidden = residual.to(device=weight.device, dtype=weight.dtype)
    return model.lm_head(model.final_norm(hidden)).float().cpu()
