"""编译好的“一步解码”：喂几个新 token、写 KV 缓存、给出打分和贪心的选择，整步是一张固定形状的图。

为什么要单独写这一步。`model(token, kv_cache=cache)` 每步的形状都在变：缓存里已有的长度 S 每步加一，
注意力读 `keys[:, :, :S]`。`torch.compile(model, dynamic=True)` 能把它编译成一张“动态形状”的图，
但每次调用都要检查一遍符号形状的守卫（guard）、在 Python 里维护 `cache.length`，选下一个 token
还要回到 Python 里做几次小运算。批 1 时每个 token 的矩阵乘只要一两毫秒，这些零碎加起来就很可观。

这里的办法是让每一步的形状**完全不变**：

    - KV 缓存本来就是预先分配好的 (B, Hkv, max_len, D)（见 model.KVCache）。新 token 的键值用
      `index_copy_` 写到 `positions` 处；注意力总是读整块缓存，用掩码挡住还没写的（和已经回退掉的）位置。
    - 位置是一个张量而不是 Python 整数：位置变了，图不用重新编译，守卫也只需检查张量的形状。
    - 贪心的选择（argmax，只在分词器真有的 id 里挑）也在图里做完，Python 只取回一个整数。
    - CPU 上注意力走 PyTorch 的“math”实现（q·kᵀ → softmax → ·v），由 inductor 融合成几个小循环。
      flash 内核是为长序列设计的：只有 1 个查询时，它分块、分线程、开临时缓冲区的固定开销
      （每层十几微秒）比真正的计算还多。
    - 图的“外壳”用 C++ 生成（inductor 的 cpp_wrapper）：一步有六十来个内核，Python 逐个调用它们
      每个要几微秒，C++ 里几乎为零。
    - 融合出来的小内核只用一个线程（cpp.threads=1；矩阵乘仍由 MKL 用满全部线程）。每个小内核只处理
      几千个数，分给几个线程的同步开销比省下的计算还多；更糟的是机器上另有进程占着核时，每个并行区
      都要等那个被挤下 CPU 的线程，一个 token 能慢好几倍（实测共享的 2 核机器上 8 ms 变 40 ms）。

于是 `torch.compile(..., fullgraph=True, dynamic=False)` 对每一种“新 token 个数 T”只编译一次
（普通解码 T = 1；提示词查找的投机解码一次核对 1 + k 个，见 prompt_lookup.py），之后每步就是一次图调用。

这一步和 `GPT.forward` 走的是同一批子模块（`model.blocks` 里的注意力和前馈网络），只把“位置从哪来、
缓存怎么写、掩码怎么造”换成了固定形状的写法；tests/test_generate.py 检查两者逐 token 相同。
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from towergpt.model import GPT, KVCache


class _WriteAtPositions:
    """在注意力里代替 KVCache.update：把本步的 k、v 写到 positions 处，返回**整块**缓存（形状不变）。

    注意力只要求缓存对象有 update(layer, k, v) 这个方法（见 model.CausalSelfAttention），
    所以不用改模型，换一个“写法”就行。
    """

    def __init__(self, cache: KVCache, positions: torch.Tensor):
        self.cache = cache
        self.positions = positions                                      # (T,)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.cache.keys[layer], self.cache.values[layer]  # (B, Hkv, max_len, D)
        keys.index_copy_(2, self.positions, k)                          # k: (B, Hkv, T, D)
        values.index_copy_(2, self.positions, v)
        return keys, values


def forward_at(model: GPT, tokens: torch.Tensor, start: torch.Tensor, cache: KVCache,
               vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (1, T) 接在缓存的 start 处（start 是形状 (1,) 的张量）。返回 (logits (1, T, V), 贪心 (1, T))。

    贪心[i] 是模型看完 tokens[:i+1] 之后最想要的下一个 token（只在 [0, vocab_limit) 里挑）。
    不改 cache.length：写了几个、留下几个由调用者决定（投机解码要把没被接受的那些“回退”掉）。
    """
    T = tokens.size(1)
    positions = start + torch.arange(T, device=tokens.device)                      # (T,)
    cos = model.rope_cos[positions].view(1, 1, T, -1)                               # (1, 1, T, D)
    sin = model.rope_sin[positions].view(1, 1, T, -1)
    # 第 i 个新 token 能看见缓存里位置 ≤ positions[i] 的键：之前的全部、自己，以及本步在它前面的几个。
    # 位置 > positions[i] 的槽位要么还没写过（是 0），要么是上次回退掉的旧值，都必须挡住。
    key_positions = torch.arange(cache.max_len, device=tokens.device)              # (max_len,)
    mask = (key_positions.view(1, -1) <= positions.view(-1, 1)).view(1, 1, T, -1)  # (1, 1, T, max_len)

    writer = _WriteAtPositions(cache, positions)
    # CPU 上用 math 注意力（见模块开头）；GPU 上照常让 PyTorch 挑融合内核
    attention = sdpa_kernel(SDPBackend.MATH) if tokens.device.type == "cpu" else contextlib.nullcontext()
    x = model.embed(tokens)                                                          # (1, T, C)
    with attention:
        for layer, block in enumerate(model.blocks):
            x = block(x, cos, sin, mask, False, writer, layer)
    logits = model.lm_head(model.final_norm(x))                                     # (1, T, V)
    return logits, logits[..., :vocab_limit].argmax(dim=-1)                         # (1, T, V), (1, T)


class CompiledDecoder:
    """`compile_for_decoding` 返回的东西：用法与原模型相同，另带一个编译好的 `step`。

    - 当作模型调用（预填充、聊天时一次接一整段、批量解码）走 `torch.compile(model, dynamic=True)`，和以前一样；
    - `step(tokens, cache, vocab_limit)` 走上面的固定形状的一步（stream_generate 和投机解码用它）。
    其余属性（config、new_kv_cache、train/eval……）都转给原模型；`_orig_mod` 这个名字让
    checkpoint.unwrap_model 能剥出原模型，与 torch.compile 的外壳一致。
    """

    def __init__(self, model: GPT):
        self._orig_mod = model
        self._forward = torch.compile(model, dynamic=True)
        # fullgraph=True：整步必须是一张图，哪里断开了立刻报错，而不是悄悄变慢；
        # dynamic=False：形状固定，每种 T 只编译一次；cpp_wrapper、cpp.threads：见模块开头
        self._step = torch.compile(forward_at, fullgraph=True, dynamic=False,
                                   options={"cpp_wrapper": True, "cpp.threads": 1})

    def __call__(self, *args, **kwargs):
        return self._forward(*args, **kwargs)

    def __getattr__(self, name: str):
        # 只有在自己身上找不到的属性才会走到这里；_orig_mod 还没设好（例如 copy 时）就不要再转，免得无限递归
        if name == "_orig_mod":
            raise AttributeError(name)
        return getattr(self._orig_mod, name)

    def step(self, tokens: torch.Tensor, cache: KVCache, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
        """把 tokens (1, T) 写进缓存并前进 T 个位置；返回 (logits (1, T, V), 贪心 (1, T))。"""
        if cache.length + tokens.size(1) > cache.max_len:
            raise ValueError(f"KV 缓存已满（{cache.max_len}）/ KV cache full ({cache.max_len} tokens)")
        start = torch.tensor([cache.length], device=tokens.device)
        logits, greedy = self._step(self._orig_mod, tokens, start, cache, vocab_limit)
        cache.length += tokens.size(1)
        return logits, greedy


def decode(model, tokens: torch.Tensor, cache: KVCache, vocab_limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """批 1 时接着缓存往后算 tokens (1, T)：返回 (logits (1, T, V), 贪心 (1, T))，cache.length 前进 T。

    编译过的模型走固定形状的 step（缓存须能再装下 T 个）；没编译的直接调用模型，再在外面取 argmax。
    """
    if isinstance(model, CompiledDecoder):
        return model.step(tokens, cache, vocab_limit)
    logits = model(tokens, kv_cache=cache)
    return logits, logits[..., :vocab_limit].argmax(dim=-1)
