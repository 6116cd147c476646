"""检视结果：一个可以直接写成 JSON 的 dict（格式 "towergpt.inspect/1"，每个字段的含义见 docs/inspect.md）。

    {
      "schema": "towergpt.inspect/1",
      "model": {"n_layer", "n_head", "n_kv_head", "vocab_size", "max_seq_len"},
      "mode": "text" | "chat",
      "text": 原文（对话模式下是各条消息 [{"role", "content"}]）,
      "tokens": [TokenInfo…],                      见 tokens.py
      "predictions": [每个位置一项：{
          "position": i,
          "top": [{"id", "piece", "text", "prob"} × k]      位置 i 之后的下一个 token，概率从大到小
          "entropy_bits": 整个分布的熵（比特）：模型有多犹豫
          "next": {"id", "piece", "text", "prob", "surprisal_bits", "rank"} | null   真正的下一个 token
      }],
      "attention": {"n_layer", "n_head", "n_kv_head", "head_group": [每个查询头用第几组键值],
                    "weights": [层][头][查询 i][键 j]},    行和为 1，j > i 处为 0
      "logit_lens": [每层一项：{"layer": l, "name", "top": [每个位置 top-k], "next_prob": [每个位置]}]
    }

“惊讶度”（surprisal）= -log₂ p(真正的下一个 token)：1 比特 = 在两个等可能的选项里猜中一个；
模型完全确定时是 0，越“意外”越大。把一句话里每个 token 的惊讶度加起来，就是这句话的交叉熵（比特）。
"""

from __future__ import annotations

import math

import torch

from towergpt.inspect.tokens import TokenInfo, chat_tokens, classify, text_tokens
from towergpt.checkpoint import unwrap_model
from towergpt.inspect.walk import lens_logits, walk

SCHEMA = "towergpt.inspect/1"
DIGITS = 6   # JSON 里的数保留 6 位有效数字（注意力权重保留 6 位小数）：足够看清，又不让文件太大


def rounded(value: float) -> float:
    """保留 DIGITS 位有效数字：很小的概率（1e-7）也不会被“四舍五入”成 0，惊讶度才算得回来。"""
    return float(f"{value:.{DIGITS}g}")


def inspect_text(model, tokenizer, text: str, top_k: int = 5) -> dict:
    """检视一段普通文本（前面加 <s>，与预训练时每篇文档的开头一样）。"""
    return inspect_tokens(model, tokenizer, text_tokens(tokenizer, text), top_k, "text", text)


def inspect_chat(model, tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                 top_k: int = 5) -> dict:
    """检视一段对话（按唯一的对话模板渲染）；add_generation_prompt 时末尾接“轮到助手了”。"""
    tokens = chat_tokens(tokenizer, messages, add_generation_prompt)
    return inspect_tokens(model, tokenizer, tokens, top_k, "chat", [dict(m) for m in messages])


def inspect_tokens(model, tokenizer, tokens: list[TokenInfo], top_k: int, mode: str, text) -> dict:
    """检视一张已经切好的 token 表（tokens.py 的 text_tokens / chat_tokens）；text 原样写进结果。"""
    config = unwrap_model(model).config
    if len(tokens) > config.max_seq_len:
        raise ValueError(f"{len(tokens)} tokens > max_seq_len {config.max_seq_len}")
    ids = [t.id for t in tokens]
    result = walk(model, ids)
    # 只在分词器认识的 id 里列候选：模型的词表可能比分词器大（为了对齐而补的空位），那些 id 解码不出文字
    vocab = tokenizer.vocab_size
    lens = [_lens_layer(model, tokenizer, layer, result.residuals[layer], ids, top_k, vocab)
            for layer in range(config.n_layer + 1)]
    return {
        "schema": SCHEMA,
        "model": {key: getattr(config, key) for key in ("n_layer", "n_head", "n_kv_head", "vocab_size", "max_seq_len")},
        "mode": mode,
        "text": text,
        "tokens": [t.to_dict() for t in tokens],
        "predictions": predictions(tokenizer, result.logits, ids, top_k, vocab),
        "attention": attention_block(result.attention, config),
        "logit_lens": lens,
    }


def predictions(tokenizer, logits: torch.Tensor, ids: list[int], top_k: int, vocab: int) -> list[dict]:
    """每个位置 i：对第 i+1 个 token 的预测（top-k、熵），以及真正的第 i+1 个 token 得到的概率。"""
    log_probs = torch.log_softmax(logits.double(), dim=-1)                  # (T, V) 在整个词表上归一化
    probs = log_probs.exp()
    entropy = -(probs * log_probs).nan_to_num().sum(-1) / math.log(2)       # (T,) 比特
    top = probs[:, :vocab].topk(min(top_k, vocab), dim=-1)
    rows = []
    for position in range(len(ids)):
        row = {"position": position, "top": _candidates(tokenizer, top.indices[position], top.values[position]),
               "entropy_bits": rounded(float(entropy[position])), "next": None}
        if position + 1 < len(ids):
            actual = ids[position + 1]
            p = float(probs[position, actual])
            rank = int((probs[position] > probs[position, actual]).sum()) + 1   # 1 = 模型的首选
            row["next"] = {**_candidate(tokenizer, actual, p), "rank": rank,
                           "surprisal_bits": rounded(-float(log_probs[position, actual]) / math.log(2))}
        rows.append(row)
    return rows


def attention_block(attention: torch.Tensor, config) -> dict:
    """(L, H, T, T) 的注意力权重，外加“每个查询头属于第几组键值”（GQA：相邻的 H/Hkv 个头共用一组）。"""
    group_size = config.n_head // config.n_kv_head
    return {
        "n_layer": config.n_layer, "n_head": config.n_head, "n_kv_head": config.n_kv_head,
        "head_group": [head // group_size for head in range(config.n_head)],
        "weights": attention.double().round(decimals=DIGITS).tolist(),
    }


def _lens_layer(model, tokenizer, layer: int, residual: torch.Tensor, ids: list[int], top_k: int,
                vocab: int) -> dict:
    probs = torch.softmax(lens_logits(model, residual).double(), dim=-1)    # (T, V)
    top = probs[:, :vocab].topk(min(top_k, vocab), dim=-1)
    following = ids[1:]
    return {
        "layer": layer,
        "name": "embedding" if layer == 0 else f"block {layer}",
        "top": [_candidates(tokenizer, top.indices[i], top.values[i]) for i in range(len(ids))],
        "next_prob": [rounded(float(probs[i, following[i]])) if i < len(following) else None
                      for i in range(len(ids))],
    }


def _candidates(tokenizer, indices: torch.Tensor, values: torch.Tensor) -> list[dict]:
    return [_candidate(tokenizer, int(i), float(p)) for i, p in zip(indices, values)]


def _candidate(tokenizer, token_id: int, prob: float) -> dict:
    piece, text, kind = classify(tokenizer, token_id)
    return {"id": token_id, "piece": piece, "text": text, "kind": kind, "prob": rounded(prob)}
