"""TowerGPT 与 Hugging Face Llama 之间的“翻译表”：模型配置和权重名字，两个方向。

TowerGPT 的模型与 Llama 是同一种结构（RMSNorm、RoPE、GQA、SwiGLU、无偏置），
只是名字不同、q/k/v 三个矩阵被我们合成了一个（`qkv`，一次矩阵乘法更快）：

    TowerGPT                              Hugging Face LlamaForCausalLM
    embed.weight                          model.embed_tokens.weight
    blocks.{i}.attn_norm.weight           model.layers.{i}.input_layernorm.weight
    blocks.{i}.attn.qkv.weight            model.layers.{i}.self_attn.{q,k,v}_proj.weight（按行切三段）
    blocks.{i}.attn.out_proj.weight       model.layers.{i}.self_attn.o_proj.weight
    blocks.{i}.ffn_norm.weight            model.layers.{i}.post_attention_layernorm.weight
    blocks.{i}.ffn.{gate,up,down}_proj    model.layers.{i}.mlp.{gate,up,down}_proj.weight
    final_norm.weight                     model.norm.weight
    lm_head.weight                        lm_head.weight（权重共享时不单独存）

RoPE 不用重排：我们的 apply_rope 用的就是 HF Llama 的“前一半/后一半配对”（rotate_half）写法。
（Meta 原版权重用“相邻两维配对”，HF 的转换脚本会重排 q/k 的行；我们和 HF 一致，所以原样拷贝。）
"""

from __future__ import annotations

import torch

from towergpt.errors import TowerGPTError
from towergpt.model import GPTConfig

LLAMA_ARCHITECTURE = "LlamaForCausalLM"

# GPTConfig 里每个字段在 Llama 里都有对应；新加的字段若不在这里，导出时会明确报错
EXPORTABLE_FIELDS = {
    "vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "max_seq_len", "dropout",
    "ffn_hidden", "rope_theta", "norm_eps", "tie_embeddings",
}

# 每一层里“一对一改名”的权重（qkv 要切分，单独处理）
LAYER_RENAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.out_proj.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn.gate_proj.weight": "mlp.gate_proj.weight",
    "ffn.up_proj.weight": "mlp.up_proj.weight",
    "ffn.down_proj.weight": "mlp.down_proj.weight",
}
QKV_NAMES = ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")


# ---------------------------------------------------------------------------
# 配置：GPTConfig ⇄ Llama 的 config.json
# ---------------------------------------------------------------------------

def llama_config(config: dict, tokenizer, dtype_name: str) -> dict:
    """由 GPTConfig.to_dict() 得到 HF 的 config.json 内容。config 里有 Llama 表达不了的字段就报错。"""
    unknown = sorted(set(config) - EXPORTABLE_FIELDS)
    if unknown:
        raise TowerGPTError(
            f"模型配置里的 {', '.join(unknown)} 在 Llama 结构里没有对应项，无法导出为 LlamaForCausalLM"
            f" / the model uses {', '.join(unknown)}, which Llama cannot express"
        )
    return {
        "architectures": [LLAMA_ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": config["vocab_size"],
        "hidden_size": config["d_model"],
        "intermediate_size": config["ffn_hidden"],
        "num_hidden_layers": config["n_layer"],
        "num_attention_heads": config["n_head"],
        "num_key_value_heads": config["n_kv_head"],   # 小于注意力头数就是 GQA
        "head_dim": config["d_model"] // config["n_head"],
        "hidden_act": "silu",                         # SwiGLU 的门用 SiLU
        "max_position_embeddings": config["max_seq_len"],
        "rms_norm_eps": config["norm_eps"],
        "rope_theta": config["rope_theta"],
        "rope_scaling": None,                         # 我们的 RoPE 没有任何外推缩放
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": config["tie_embeddings"],
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
        "torch_dtype": dtype_name,                    # transformers 4.x 读这个键
        "dtype": dtype_name,                          # transformers 5.x 读这个键
    }


def gpt_config_from_llama(raw: dict, source: str, max_seq_len: int | None = None):
    """由 HF Llama 的 config.json（已读成 dict）得到 GPTConfig；不支持的特性逐项说清楚。

    max_seq_len：不为 None 时覆盖 max_position_embeddings（例如只想用 4096 的上下文，
    RoPE 表就不必按 131072 去预先算）。
    """
    _check_llama_features(raw, source)
    hidden, heads = _require(raw, "hidden_size", source), _require(raw, "num_attention_heads", source)
    if hidden % heads:
        raise TowerGPTError(f"{source}: hidden_size {hidden} 不能被 num_attention_heads {heads} 整除 / must divide")
    head_dim = raw.get("head_dim") or hidden // heads
    if head_dim != hidden // heads:
        raise TowerGPTError(
            f"{source} 字段/field 'head_dim': {head_dim} ≠ hidden_size / num_attention_heads = {hidden // heads}；"
            f"TowerGPT 的每头维度固定为 d_model / n_head / TowerGPT needs head_dim = hidden_size / num_attention_heads"
        )
    try:
        return GPTConfig(
            vocab_size=_require(raw, "vocab_size", source),
            n_layer=_require(raw, "num_hidden_layers", source),
            n_head=heads,
            n_kv_head=raw.get("num_key_value_heads") or heads,
            d_model=hidden,
            max_seq_len=max_seq_len or raw.get("max_position_embeddings", 2048),
            dropout=0.0,
            ffn_hidden=_require(raw, "intermediate_size", source),
            rope_theta=float(_rope_theta(raw)),
            norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(raw.get("tie_word_embeddings", False)),  # LlamaConfig 的默认值是 False
        )
    except (TypeError, ValueError) as error:
        raise TowerGPTError(f"{source}: 配置无效 / invalid config: {error}") from None


def _check_llama_features(raw: dict, source: str) -> None:
    """Llama 的一些可选特性 TowerGPT 的模型没有：遇到就报错，而不是悄悄算错。"""
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    if model_type != "llama" and LLAMA_ARCHITECTURE not in architectures:
        raise TowerGPTError(
            f"{source} 字段/field 'model_type': {model_type!r}；只支持 Llama 结构（model_type 'llama'）"
            f" / only Llama-shaped models (model_type 'llama') can be imported"
        )
    unsupported = {
        "attention_bias": "注意力层带偏置 / attention projections with bias",
        "mlp_bias": "前馈层带偏置 / MLP projections with bias",
    }
    for field, meaning in unsupported.items():
        if raw.get(field):
            raise TowerGPTError(f"{source} 字段/field '{field}': TowerGPT 的模型不支持{meaning}")
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise TowerGPTError(
            f"{source} 字段/field 'hidden_act': {act!r}；TowerGPT 的 SwiGLU 只用 silu / only 'silu' is supported"
        )
    if _rope_type(raw) not in (None, "default"):
        raise TowerGPTError(
            f"{source} 字段/field 'rope_scaling': 类型 {_rope_type(raw)!r} 的 RoPE 缩放（长上下文外推）TowerGPT 不支持"
            f" / RoPE scaling is not supported"
        )


def _rope_type(raw: dict):
    """transformers 4.x 写 rope_scaling，5.x 写 rope_parameters；没有缩放时返回 None 或 'default'。"""
    for key in ("rope_scaling", "rope_parameters"):
        value = raw.get(key)
        if isinstance(value, dict):
            kind = value.get("rope_type", value.get("type"))
            if kind not in (None, "default"):
                return kind
    return None


def _rope_theta(raw: dict) -> float:
    parameters = raw.get("rope_parameters")
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return parameters["rope_theta"]
    return raw.get("rope_theta", 10000.0)


def _require(raw: dict, field: str, source: str):
    if field not in raw:
        raise TowerGPTError(f"{source} 缺少字段 / missing field '{field}'")
    return raw[field]


# ---------------------------------------------------------------------------
# 权重：TowerGPT 名字 ⇄ HF 名字
# ---------------------------------------------------------------------------

def to_llama_tensors(state: dict, config) -> dict:
    """TowerGPT 的 state_dict → HF 的张量字典（每个张量独立、连续，safetensors 才肯存）。"""
    H, Hkv, D = config.n_head, config.n_kv_head, config.head_dim
    tensors = {"model.embed_tokens.weight": state["embed.weight"], "model.norm.weight": state["final_norm.weight"]}
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = state["lm_head.weight"]
    for layer in range(config.n_layer):
        ours, theirs = f"blocks.{layer}.", f"model.layers.{layer}."
        for our_name, their_name in LAYER_RENAMES.items():
            tensors[theirs + their_name] = state[ours + our_name]
        # qkv 的输出行依次是 H 个查询头、Hkv 个键头、Hkv 个值头，每头 D 行
        q, k, v = state[ours + "attn.qkv.weight"].split([H * D, Hkv * D, Hkv * D], dim=0)
        for name, part in zip(QKV_NAMES, (q, k, v)):
            tensors[theirs + name] = part
    expected = _expected_our_names(config)
    leftover = sorted(set(state) - expected)
    if leftover:
        raise TowerGPTError(
            f"模型里有 Llama 结构放不下的权重 / weights Llama cannot hold: {', '.join(leftover[:5])}"
        )
    return {name: tensor.detach().clone().contiguous() for name, tensor in tensors.items()}


def from_llama_tensors(tensors: dict, config, source: str) -> dict:
    """HF 的张量字典 → TowerGPT 的 state_dict（q/k/v 拼回 qkv）。缺的、多的权重都报错。"""
    state, used = {}, set()

    def take(name: str):
        if name not in tensors:
            raise TowerGPTError(f"{source}: 缺少权重 / missing weight {name}")
        used.add(name)
        return tensors[name]

    state["embed.weight"] = take("model.embed_tokens.weight")
    state["final_norm.weight"] = take("model.norm.weight")
    if config.tie_embeddings:
        used.add("lm_head.weight")  # 权重共享：有些导出会多存一份输出头，它与词向量表相同，忽略即可
        state["lm_head.weight"] = state["embed.weight"]
    else:
        state["lm_head.weight"] = take("lm_head.weight")
    for layer in range(config.n_layer):
        ours, theirs = f"blocks.{layer}.", f"model.layers.{layer}."
        for our_name, their_name in LAYER_RENAMES.items():
            state[ours + our_name] = take(theirs + their_name)
        state[ours + "attn.qkv.weight"] = torch.cat([take(theirs + name) for name in QKV_NAMES], dim=0)
    # 旧版 transformers 会把 RoPE 的 inv_freq 也存进检查点：它是按公式算出来的，不是权重
    leftover = sorted(name for name in set(tensors) - used if not name.endswith("rotary_emb.inv_freq"))
    if leftover:
        has_bias = any(name.endswith(".bias") for name in leftover)
        hint = "（带 bias 的层 TowerGPT 不支持 / biases are not supported）" if has_bias else ""
        raise TowerGPTError(
            f"{source}: 有 TowerGPT 的模型里没有的权重{hint} / unexpected weights: {', '.join(leftover[:5])}"
        )
    return state


def _expected_our_names(config) -> set[str]:
    names = {"embed.weight", "final_norm.weight", "lm_head.weight"}
    for layer in range(config.n_layer):
        names.update(f"blocks.{layer}.{name}" for name in [*LAYER_RENAMES, "attn.qkv.weight"])
    return names
