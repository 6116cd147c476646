"""提示词查找的投机解码（prompt lookup decoding）：从上下文里抄一段“草稿”，一次前向核对好几个 token。

为什么能快。批 1 逐 token 生成时，每个 token 都要把全部权重从内存里读一遍，而矩阵只乘一行；
一次送进 1 + k 个 token，权重还是只读一遍，多出来的几行几乎不花时间（见 docs/PERFORMANCE.md 的“只读权重的下限”）。
只要能猜中接下来的几个 token，读一遍权重就能产出好几个。

草稿从哪里来。不用另一个小模型：续写新闻、摘抄原文、改写代码、小模型打转的时候，要写的东西常常就在上下文里。
取序列末尾的 n 个 token（n 从 max_ngram 往下试到 1），在前文里找它**最近**的一次出现，把紧跟其后的 k 个 token
当作草稿。匹配处离末尾不到 k 个 token 时，说明序列正以这个间隔为周期重复，就按周期接着往下猜。

怎样核对。设序列最后一个 token 还没喂给模型（缓存里是它之前的全部）。把它和 k 个草稿 d0..d(k-1) 一起送进模型，
得到 1 + k 个位置的贪心选择 g0..gk：g_i 是模型看完“序列 + d0..d(i-1)”之后最想要的 token。
d0 = g0、d1 = g1、…… 一直对到第一个不对的地方，接受这 a 个，再加上模型自己的 g_a：
每次前向至少产出 1 个 token（和普通解码一样），最多 k + 1 个。

回退缓存。没被接受的草稿已经写进了 KV 缓存，只要把 cache.length 改回“接受到的位置”：后面的槽位
下次会被覆盖，在那之前注意力也看不见它们（见 model.KVCache 与 decode_step.py 的掩码）。

结果与普通贪心解码逐 token 相同：产出的每个 token 都是模型看完它之前全部 token 后的 argmax，草稿只决定
一次前向算几个位置。浮点上，一次算 1 + k 行和一次算 1 行的矩阵乘累加顺序不同，logits 可能差在最后几位；
两个候选的打分几乎相等时 argmax 可能不同（Hugging Face 的实现也一样）。tests/test_prompt_lookup.py 在许多提示词上核对。

只用于贪心解码：采样时“接受”的规则要换成按概率的拒绝采样（Leviathan et al. 2023），这里没有做。

参考：Saxena 2023, https://github.com/apoorvumang/prompt-lookup-decoding ；
Hugging Face transformers 的 `generate(..., prompt_lookup_num_tokens=k)`（它取最早的一次匹配，这里取最近的一次）。
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from towergpt.decode_step import decode
from towergpt.errors import TowerGPTError


@dataclass
class LookupStats:
    """一次投机解码的账：核对了多少次、送去核对多少个草稿、接受了多少个。"""

    forwards: int = 0       # 预填充之后的前向次数（每次 1 个新 token 或 1 + k 个）
    drafted: int = 0        # 送去核对的草稿 token 数
    accepted: int = 0       # 其中与模型的贪心选择相同、被接受的

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class ContextIndex:
    """上下文的 token 序列，外加“每个 token 出现在哪些位置”的索引。

    找末尾 n 元组的上一次出现时，只需看末尾那个 token 以前出现过的几处，不必每步把整段上下文扫一遍。
    """

    def __init__(self, ids: Iterable[int]):
        self.ids: list[int] = []
        self.where: dict[int, list[int]] = defaultdict(list)
        for token in ids:
            self.append(token)

    def append(self, token: int) -> None:
        self.where[token].append(len(self.ids))
        self.ids.append(token)

    def draft(self, max_ngram: int, num_draft: int) -> list[int]:
        """末尾 n 元组（n 从 max_ngram 试到 1）最近一次出现之后的 num_draft 个 token；找不到就是 []。"""
        ids, last = self.ids, len(self.ids) - 1
        earlier = self.where[ids[last]][:-1]          # 末尾 token 以前出现过的位置（不含末尾自己）
        for n in range(min(max_ngram, last), 0, -1):
            tail = ids[last - n + 1:]
            for end in reversed(earlier):             # 最近的一次优先：打转、摘抄时它最像接下来要写的
                if end - n + 1 >= 0 and ids[end - n + 1:end + 1] == tail:
                    period = last - end               # 匹配处到末尾的距离；不够 k 个时按这个周期往下猜
                    return [ids[end + 1 + i % period] for i in range(num_draft)]
        return []


def check_greedy_only(temperature: float, repetition_penalty: float, no_repeat_ngram: int) -> None:
    """投机解码只核对“贪心的选择”，所以别的采样设置都不能有。"""
    if temperature > 0 or repetition_penalty != 1.0 or no_repeat_ngram > 0:
        raise TowerGPTError(
            "提示词查找只用于贪心解码：请用 temperature=0（命令行 --temperature 0），不要重复惩罚和 no_repeat_ngram / "
            "prompt lookup needs greedy decoding (temperature 0, no repetition penalty, no no-repeat-ngram)"
        )


def _check_args(idx: torch.Tensor, max_new_tokens: int, num_draft: int, max_ngram: int, context_limit: int) -> None:
    if idx.dim() != 2 or idx.size(0) != 1 or idx.size(1) < 1:
        raise ValueError(f"idx 的形状应为 (1, T)，T ≥ 1，实际是 {tuple(idx.shape)} / idx must be (1, T)")
    for name, value in (("max_new_tokens", max_new_tokens), ("num_draft", num_draft), ("max_ngram", max_ngram)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} 必须是 ≥ 1 的整数，实际是 {value!r} / {name} must be a positive integer")
    if idx.size(1) > context_limit:
        raise TowerGPTError(f"提示词有 {idx.size(1)} 个 token，超过模型上下文 {context_limit} / "
                            f"prompt of {idx.size(1)} tokens exceeds the context of {context_limit}")


@torch.inference_mode()
def verify_draft(model, cache, last_token: int, draft: list[int], vocab_limit: int) -> list[int]:
    """核对一次草稿，返回这次产出的新 token：被接受的草稿 + 模型自己的下一个（1 到 len(draft) + 1 个）。

    缓存里应是 last_token 之前的全部。last_token 和草稿一起送进模型，之后把 cache.length 回退到
    “last_token + 被接受的草稿”的末尾：没被接受的那几个留在槽位里，但再也看不见，下次会被覆盖。
    返回的最后一个 token 还没喂给模型，留到下一次核对。
    """
    start = cache.length
    device = cache.keys[0].device
    step_input = torch.tensor([[last_token] + draft], device=device)              # (1, 1 + k)
    _, greedy = decode(model, step_input, cache, vocab_limit)
    greedy = greedy[0].tolist()                                                    # g0 .. gk
    accepted = 0
    while accepted < len(draft) and draft[accepted] == greedy[accepted]:
        accepted += 1
    cache.length = start + 1 + accepted
    return draft[:accepted] + [greedy[accepted]]


@torch.inference_mode()
def stream_prompt_lookup(
    model,
    idx: torch.Tensor,
    max_new_tokens: int,
    num_draft: int = 5,
    max_ngram: int = 3,
    eos_id: int | Iterable[int] | None = None,
    vocab_limit: int | None = None,
    stats: LookupStats | None = None,
) -> Iterator[int]:
    """贪心续写 idx (1, T)，逐个产出新 token（与 stream_generate 贪心时相同），每次前向核对 num_draft 个草稿。

    停止规则与 stream_generate 相同：产出 eos_id（可以给多个）、达到 max_new_tokens、序列到了上下文上限。
    model 可以是 GPT，也可以是 compile_for_decoding 的结果（核对走固定形状的图：T = 1 和 T = 1 + k 各编译一次）。
    stats：给一个 LookupStats，就把前向次数、草稿数、接受数记进去。
    """
    context_limit = model.config.max_seq_len
    _check_args(idx, max_new_tokens, num_draft, max_ngram, context_limit)
    stats = stats if stats is not None else LookupStats()
    stop_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    vocab = min(vocab_limit or model.config.vocab_size, model.config.vocab_size)
    context = ContextIndex(idx[0].tolist())
    cache = model.new_kv_cache(batch_size=1, max_len=context_limit)

    was_training = model.training
    model.eval()
    try:
        logits = model(idx, kv_cache=cache)[0, -1]                          # 预填充，与 stream_generate 相同
        new_tokens = [int(logits[:vocab].argmax())]
        produced = 0
        while True:
            for token in new_tokens:
                yield token
                produced += 1
                context.append(token)
                if token in stop_ids or produced >= max_new_tokens or len(context.ids) >= context_limit:
                    return
            # 此刻缓存里是除最后一个 token 以外的全部（cache.length == len(context.ids) - 1）。
            # 草稿总是凑满 k 个，核对的形状才固定；缓存放不下 1 + k 个时（上下文最后几格）改回一步一个。
            room = context_limit - len(context.ids)
            draft = context.draft(max_ngram, num_draft) if room >= num_draft else []
            new_tokens = verify_draft(model, cache, context.ids[-1], draft, vocab)
            accepted = len(new_tokens) - 1
            stats.forwards += 1
            stats.drafted += len(draft)
            stats.accepted += accepted
    finally:
        model.train(was_training)
