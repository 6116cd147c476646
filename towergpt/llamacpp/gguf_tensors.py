"""权重：TowerGPT → Hugging Face Llama（hf/llama_format.py）→ GGUF 的张量名，外加 q/k 的行重排。

GGUF 里的名字是 llama.cpp 自己定的（`gguf` 包的 TENSOR_NAMES 表，下面直接用它，不手抄字符串）：

    Hugging Face Llama                            GGUF
    model.embed_tokens.weight                     token_embd.weight
    model.layers.{i}.input_layernorm.weight       blk.{i}.attn_norm.weight
    model.layers.{i}.self_attn.q_proj.weight      blk.{i}.attn_q.weight      （行重排，见下）
    model.layers.{i}.self_attn.k_proj.weight      blk.{i}.attn_k.weight      （行重排，见下）
    model.layers.{i}.self_attn.v_proj.weight      blk.{i}.attn_v.weight
    model.layers.{i}.self_attn.o_proj.weight      blk.{i}.attn_output.weight
    model.layers.{i}.post_attention_layernorm...  blk.{i}.ffn_norm.weight
    model.layers.{i}.mlp.{gate,up,down}_proj      blk.{i}.ffn_{gate,up,down}.weight
    model.norm.weight                             output_norm.weight
    lm_head.weight                                output.weight  （权重共享时不写：llama.cpp 找不到它就用 token_embd）

为什么 q/k 要重排行：RoPE 把一个头的 D 维向量分成 D/2 对、每对转一个角度，但“哪两维算一对”有两种写法。
    - 我们和 Hugging Face 的 Llama：第 i 维与第 i + D/2 维一对（“前一半/后一半”，rotate_half）；
    - llama.cpp 的 llama 结构：第 2i 维与第 2i+1 维一对（“相邻两维”，Meta 最初的写法）。
    两种写法里第 i 对的转速都是 theta^(-2i/D)。所以只要把 W_q、W_k 每个头的输出行重新排列：
        新的第 2i 行 = 原来的第 i 行，新的第 2i+1 行 = 原来的第 i + D/2 行，
    llama.cpp 按“相邻两维”转出来的 q、k，就是我们转出来的 q、k 换了一个维度顺序。
    点积 q·k 与维度顺序无关，注意力分数因此一模一样；v 和其余矩阵不受 RoPE 影响，原样拷贝。
    常见错误：忘了重排。模型照样能载入、能生成，只是位置信息全乱了，输出是流利的胡话。
"""

from __future__ import annotations

import gguf
import torch

from towergpt.hf.llama_format import LAYER_RENAMES, QKV_NAMES, to_llama_tensors

T = gguf.MODEL_TENSOR
# HF 每层里的名字 → GGUF 的张量种类
LAYER_TENSORS = {
    "input_layernorm.weight": T.ATTN_NORM,
    QKV_NAMES[0]: T.ATTN_Q,
    QKV_NAMES[1]: T.ATTN_K,
    QKV_NAMES[2]: T.ATTN_V,
    "self_attn.o_proj.weight": T.ATTN_OUT,
    "post_attention_layernorm.weight": T.FFN_NORM,
    "mlp.gate_proj.weight": T.FFN_GATE,
    "mlp.up_proj.weight": T.FFN_UP,
    "mlp.down_proj.weight": T.FFN_DOWN,
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": T.TOKEN_EMBD,
    "model.norm.weight": T.OUTPUT_NORM,
    "lm_head.weight": T.OUTPUT,
}
assert set(LAYER_RENAMES.values()) | set(QKV_NAMES) == set(LAYER_TENSORS)  # 两张表必须一一对应


def gguf_name(kind, layer: int | None = None) -> str:
    """GGUF 的张量名，例如 blk.3.attn_q.weight。"""
    return gguf.TENSOR_NAMES[kind].format(bid=layer) + ".weight"


def rotate_half_to_interleaved(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """重排 W_q 或 W_k 的行：每个头里“前一半/后一半配对”→“相邻两维配对”（见模块说明）。

    weight：(heads·D, C)。第 h 个头的行 [h·D, (h+1)·D) 看成 (2, D/2)：第 0 行块是各对的前一维，
    第 1 行块是后一维。交换这两个轴，就变成 (D/2, 2)：每一对的两维挨在一起。
    """
    rows, columns = weight.shape
    half = rows // heads // 2
    return (weight.reshape(heads, 2, half, columns)     # (H, 2, D/2, C)
                  .transpose(1, 2)                     # (H, D/2, 2, C)
                  .reshape(rows, columns))             # (H·D, C)


def interleaved_to_rotate_half(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """上面的逆操作（读回 GGUF 核对时用）。"""
    rows, columns = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, half, 2, columns).transpose(1, 2).reshape(rows, columns)


def gguf_tensors(state: dict, config) -> dict[str, torch.Tensor]:
    """TowerGPT 的 state_dict → {GGUF 名字: 张量}，q/k 已重排。权重共享时不含 output.weight。"""
    hf = to_llama_tensors(state, config)   # 顺带检查：有 Llama 放不下的权重就报错
    tensors = {}
    for hf_name, kind in GLOBAL_TENSORS.items():
        if hf_name in hf:
            tensors[gguf_name(kind)] = hf[hf_name]
    for layer in range(config.n_layer):
        prefix = f"model.layers.{layer}."
        for hf_name, kind in LAYER_TENSORS.items():
            tensor = hf[prefix + hf_name]
            if kind is T.ATTN_Q:
                tensor = rotate_half_to_interleaved(tensor, config.n_head)
            elif kind is T.ATTN_K:
                tensor = rotate_half_to_interleaved(tensor, config.n_kv_head)  # GQA：键只有 Hkv 个头
            tensors[gguf_name(kind, layer)] = tensor
    return tensors
