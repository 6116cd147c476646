"""TowerGPT 的模型：一个现代的“只有解码器”的 GPT，从上到下读完就懂。

结构（与 Llama 系列同一家族）：

    token id ──► 词向量 ──► [ Block × n_layer ] ──► RMSNorm ──► 输出头 ──► 每个位置对下一个 token 的打分
                              │
                              ├─ x = x + Attention(RMSNorm(x))   因果自注意力，RoPE 位置编码，GQA
                              └─ x = x + SwiGLU(RMSNorm(x))      前馈网络

符号约定（注释里反复出现）：
    B  批大小 batch size           T  本次输入的序列长度
    C  隐藏维度 d_model             V  词表大小 vocab_size
    H  查询头数 n_head              Hkv 键/值头数 n_kv_head
    D  每个头的维度 head_dim = C / H
    S  键的总长度 = KV 缓存里已有的长度 + T

参考：
    GPT-2 / nanoGPT（整体骨架、残差投影的缩放初始化、权重共享）
    RMSNorm: Zhang & Sennrich 2019      RoPE: Su et al. 2021 (RoFormer)
    SwiGLU: Shazeer 2020                GQA: Ainslie et al. 2023
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# 输出头 + 交叉熵的分块算法（训练时不造出 (B, T, V) 的 logits）是单独的一课；IGNORE_INDEX 也定义在那里
from towergpt.chunked_loss import IGNORE_INDEX, chunked_target_logprobs, mean_cross_entropy, target_logprobs_from_logits


@dataclass
class GPTConfig:
    """模型的全部超参数。保存检查点时原样写进 config.json。"""

    vocab_size: int = 8000
    n_layer: int = 6
    n_head: int = 6
    n_kv_head: int = 6          # 键/值头数：等于 n_head 是普通多头注意力，更少就是 GQA
    d_model: int = 384
    max_seq_len: int = 256      # 模型能看到的最长上下文（RoPE 表就按它预先算好）
    dropout: float = 0.0
    ffn_hidden: int = 0         # SwiGLU 中间层宽度；0 表示自动取约 8/3·d_model（向上取到 64 的倍数）
    rope_theta: float = 10000.0  # RoPE 的“底数”，越大能区分的距离越远
    norm_eps: float = 1e-5
    tie_embeddings: bool = True  # 输入词向量与输出头共用一份权重

    def __post_init__(self) -> None:
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model ({self.d_model}) 必须能被 n_head ({self.n_head}) 整除 / must divide")
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head ({self.n_head}) 必须能被 n_kv_head ({self.n_kv_head}) 整除 / must divide")
        if self.head_dim % 2 != 0:
            raise ValueError(f"每个头的维度 head_dim={self.head_dim} 必须是偶数（RoPE 两两旋转）/ must be even")
        if self.ffn_hidden == 0:
            # SwiGLU 有三个矩阵而普通 MLP 有两个；取 8/3·C 让参数量与 4·C 的普通 MLP 相当
            self.ffn_hidden = 64 * math.ceil(8 * self.d_model / 3 / 64)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# 1. RMSNorm：只做“缩放”的归一化
# ---------------------------------------------------------------------------

class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight。

    LayerNorm 先减均值再除标准差；RMSNorm 省掉减均值这一步，只按均方根缩放。
    实践中效果一样好、更省算力，所以 Llama 等现代模型都用它。
    它的作用：让每层输入的数值尺度稳定，深层网络才训得动。
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))  # 每个通道一个可学习的缩放系数，初始为 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# ---------------------------------------------------------------------------
# 2. RoPE：用“旋转”把位置写进查询和键
# ---------------------------------------------------------------------------

def rope_tables(head_dim: int, max_seq_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """预先算好每个位置、每对维度的旋转角的 cos 和 sin，形状都是 (max_seq_len, head_dim)。

    把一个头的 D 维向量看成 D/2 个二维平面里的点；位置 p 处，第 i 个平面转过角度
    p · theta^(-2i/D)。低维转得快（分辨近处），高维转得慢（分辨远处）。
    两个向量旋转后做点积，结果只取决于它们的位置之差 —— 注意力因此“感知相对位置”。
    这里用“前一半/后一半配对”的写法（与 Hugging Face 的 Llama 相同，导出时无需重排权重）。
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))  # (D/2,)
    positions = torch.arange(max_seq_len, dtype=torch.float64)                                   # (max_T,)
    angles = torch.outer(positions, inv_freq)                                                    # (max_T, D/2)
    angles = torch.cat([angles, angles], dim=-1)                                                 # (max_T, D)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """旋转 x：(B, heads, T, D)；cos/sin：(B, 1, T, D)，已按每个 token 的位置取好。

    二维旋转 (a, b) -> (a·cosθ - b·sinθ, b·cosθ + a·sinθ)。
    rotate_half 把 (前一半 a, 后一半 b) 变成 (-b, a)，于是一行公式同时转完所有平面。
    """
    # 混合精度（bf16 autocast）时 q、k 是 bf16，而 cos/sin 表是 fp32：直接相乘会把结果“提升”成 fp32，
    # 白白多出几次整张量的类型转换。先把表转成 x 的精度（Hugging Face 的 Llama 也是这样做的）。
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return x * cos + rotated_half * sin


# ---------------------------------------------------------------------------
# 3. KV 缓存：生成时每步只算新 token，旧 token 的键和值存起来复用
# ---------------------------------------------------------------------------

class KVCache:
    """预先分配好的键/值缓存。

    生成第 n 个 token 时，前 n-1 个 token 的键和值和上一步完全一样（因果注意力下，
    旧 token 看不到新 token），重算是浪费。于是：先把整段提示词“预填充”一次，
    之后每步只喂 1 个新 token，把它的键值写进缓存的下一个空位。
    预先分配固定大小的张量（而不是每步 torch.cat）避免反复申请内存。

    `length` 是已经写入的 token 数；把它改小就能“回退”（聊天时丢弃一段历史）。
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        shape = (batch_size, config.n_kv_head, max_len, config.head_dim)  # (B, Hkv, max_len, D)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """把本步的 k, v (B, Hkv, T, D) 写到第 layer 层的空位，返回到目前为止全部的键值 (B, Hkv, S, D)。"""
        start, end = self.length, self.length + k.shape[2]
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


# ---------------------------------------------------------------------------
# 4. 因果自注意力（支持 GQA、padding 掩码、KV 缓存）
# ---------------------------------------------------------------------------

def repeat_kv(x: torch.Tensor, repeats: int) -> torch.Tensor:
    """(B, Hkv, S, D) → (B, Hkv·repeats, S, D)：每组键值复制给组内的每个查询头（相邻的头共用一组）。"""
    B, Hkv, S, D = x.shape
    return x[:, :, None].expand(B, Hkv, repeats, S, D).reshape(B, Hkv * repeats, S, D)


class CausalSelfAttention(nn.Module):
    """每个位置只能“回头看”自己和之前的位置。

    GQA（分组查询注意力）：H 个查询头共享 Hkv 组键/值（H 是 Hkv 的整数倍）。
    键值头少了，KV 缓存就小了 H/Hkv 倍，生成更快、更省内存，效果几乎不降。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        self.dropout = config.dropout
        # 一个大矩阵同时算出 q、k、v，比三个小矩阵乘法更快
        qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.d_model, qkv_out, bias=False)
        self.out_proj = nn.Linear(config.d_model, config.d_model, bias=False)  # 残差输出投影
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, mask, is_causal: bool, kv_cache: KVCache | None, layer: int):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        # 拆成多个头，并把“头”这一维提到前面，方便每个头独立做注意力
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)

        # 位置信息只加在 q 和 k 上（它们决定“看谁”）；v 是“看到的内容”，不需要位置
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)

        if kv_cache is not None:
            k, v = kv_cache.update(layer, k, v)                          # (B, Hkv, S, D)

        # GQA：每组键值要给组内 H/Hkv 个查询头共用。SDPA 的 enable_gqa=True 直接按组去读同一份 k、v，
        # 不必先把它们复制成 (B, H, S, D)（复制既占内存，反向时还要把梯度加回去）。
        # 但 GPU 上只有 flash 内核支持它，而 flash 只接受 fp16/bf16、不接受显式掩码：那些情况下
        # PyTorch 会悄悄退回最慢的朴素实现，不如先复制键值再走融合内核（与 Hugging Face 的做法相同）。
        gqa = {}
        if self.n_kv_head != self.n_head:
            if q.device.type == "cpu" or (mask is None and q.dtype in (torch.float16, torch.bfloat16)):
                gqa = {"enable_gqa": True}
            else:
                k, v = repeat_kv(k, self.n_head // self.n_kv_head), repeat_kv(v, self.n_head // self.n_kv_head)

        # softmax(q·kᵀ/√D + 掩码) · v。PyTorch 的融合实现（flash / memory-efficient）
        # 不会真的造出 (T, S) 的注意力矩阵，又快又省内存。
        # 因果掩码（is_causal=True 或显式的 mask）训练和评估都必须有！
        # 常见错误：评估时（model.eval() 或不算梯度时）丢了因果掩码，模型能偷看答案，评估损失好得不真实。
        y = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            **gqa,
        )                                                                # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                 # 各头拼回 (B, T, C)
        return self.resid_dropout(self.out_proj(y))


# ---------------------------------------------------------------------------
# 5. SwiGLU 前馈网络
# ---------------------------------------------------------------------------

class SwiGLU(nn.Module):
    """FFN(x) = W_down( SiLU(W_gate·x) ⊙ W_up·x )。

    注意力负责在 token 之间“交流信息”，前馈网络负责在每个 token 内部“加工信息”。
    门控（gate）让网络按内容决定每个中间通道放行多少，比 GELU 的普通 MLP 学得更好。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden, bias=False)
        self.down_proj = nn.Linear(config.ffn_hidden, config.d_model, bias=False)  # 残差输出投影
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x)))


# ---------------------------------------------------------------------------
# 6. Transformer 块：前置归一化（pre-norm）+ 残差
# ---------------------------------------------------------------------------

class Block(nn.Module):
    """x = x + Attn(Norm(x)); x = x + FFN(Norm(x))。

    “前置归一化”把 Norm 放在子层之前，残差通路上是一条干净的加法高速路，
    梯度可以直达底层，所以深层网络也训得稳（GPT-2 之后的模型都这样做）。
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = SwiGLU(config)

    def forward(self, x, cos, sin, mask, is_causal, kv_cache, layer):
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, is_causal, kv_cache, layer)
        x = x + self.ffn(self.ffn_norm(x))
        return x


# ---------------------------------------------------------------------------
# 7. 完整的 GPT
# ---------------------------------------------------------------------------

class GPT(nn.Module):
    """词向量 → n_layer 个 Block → RMSNorm → 输出头。

    用法：
        logits = model(idx)                       # idx (B, T) → logits (B, T, V)
        logits, loss = model(idx, targets)        # targets (B, T)，IGNORE_INDEX 的位置不计损失
        logprobs = model(idx, targets, per_token=True)  # (B, T) 每个目标 token 的 log 概率（DPO、GRPO 用）
        logits = model(idx, attention_mask=mask)  # mask (B, S)：1 是真 token，0 是 padding
        logits = model(idx, kv_cache=cache)       # 生成：接着缓存里已有的内容往后算
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.final_norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # 权重共享：“把 id 变成向量”和“把向量变回 id 的打分”用同一张表。
            # 省下 V×C 个参数（小模型里这部分占比很大），而且通常效果更好。
            self.lm_head.weight = self.embed.weight

        # RoPE 表是固定的数，不需要学习，也不必存进检查点（persistent=False）
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # 给了 targets 时输出头 + 交叉熵每块算几个位置（0 = 一次算出整批的 logits）。训练代码按
        # train.loss_chunk_tokens 设置它；它只是算法、不是结构，所以不在 GPTConfig 里、不进检查点。
        self.loss_chunk_tokens = 0

        self.apply(self._init_weights)
        # 每个残差分支的输出投影再缩小 1/√(2·n_layer)：残差流上共叠加 2·n_layer 个分支，
        # 这样叠加后的方差不会随层数增长（GPT-2 论文的做法）。
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, param in self.named_parameters():
            if name.endswith("out_proj.weight") or name.endswith("down_proj.weight"):
                nn.init.normal_(param, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # 所有矩阵从 N(0, 0.02) 出发：足够小，初始输出接近均匀分布（初始损失 ≈ ln V）
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    # ---- 前向 ----------------------------------------------------------------

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        per_token: bool = False,
        temperature: float = 1.0,
    ):
        """idx (B, T) → logits (B, T, V)；给了 targets 则返回 (logits, loss)。

        per_token=True 时改为返回每个目标 token 的 log 概率 (B, T)（IGNORE_INDEX 处为 0），
        temperature 是先把 logits 除以的温度（GRPO 用）。loss_chunk_tokens > 0 时分块算
        （chunked_loss.py），(B, T, V) 的 logits 从不出现：返回的是 (None, loss) 或 (B, T) 的 log 概率。
        这些都在 forward 里算，训练时的 DDP / FSDP / compile 外壳才管得到输出头的权重。

        attention_mask (B, S)：S = 缓存里已有的长度 + T，1/True 表示真 token，0 表示 padding。
        左 padding 和右 padding 都支持：每个真 token 的位置编号只数它前面的真 token，
        所以同一句话无论前面垫了多少 padding，算出的结果都一样。
        """
        B, T = idx.shape
        start = kv_cache.length if kv_cache is not None else 0
        if start + T > self.config.max_seq_len:
            raise ValueError(
                f"序列长度 {start + T} 超过模型的上下文长度 max_seq_len={self.config.max_seq_len} / "
                f"sequence of {start + T} tokens exceeds max_seq_len={self.config.max_seq_len}"
            )
        if kv_cache is not None and start + T > kv_cache.max_len:
            raise ValueError(f"KV 缓存已满（{kv_cache.max_len}）/ KV cache full ({kv_cache.max_len} tokens)")
        if temperature != 1.0 and not per_token:
            raise ValueError("temperature 只用于 per_token=True / temperature needs per_token=True")

        positions = self._positions(B, T, start, attention_mask, idx.device)   # (B, T)
        cos = self.rope_cos[positions].unsqueeze(1)                             # (B, 1, T, D)
        sin = self.rope_sin[positions].unsqueeze(1)
        mask, is_causal = self._attention_mask(T, start, attention_mask, idx.device)

        x = self.dropout(self.embed(idx))                                       # (B, T, C)
        for layer, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, is_causal, kv_cache, layer)
        x = self.final_norm(x)                                                  # (B, T, C)
        if kv_cache is not None:
            kv_cache.length += T
        if targets is not None and self.loss_chunk_tokens > 0:
            # 分块：每块位置的 logits 造出来、用完就扔，反向时重算；整批的 (B, T, V) 从不出现
            logprobs = chunked_target_logprobs(x, self.lm_head.weight, targets, self.loss_chunk_tokens,
                                               temperature)                     # (B, T)
            return logprobs if per_token else (None, mean_cross_entropy(logprobs, targets))

        logits = self.lm_head(x)                                                # (B, T, V)
        if targets is None:
            return logits
        if per_token:
            return target_logprobs_from_logits(logits, targets, temperature)   # (B, T)
        # 交叉熵 = -log(模型给正确下一个 token 的概率)，对所有不被忽略的位置取平均
        loss = F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def _positions(self, B, T, start, attention_mask, device) -> torch.Tensor:
        """每个 token 的位置编号 (B, T)。"""
        if attention_mask is None:
            return torch.arange(start, start + T, device=device).expand(B, T)
        # 有 padding 时：位置 = 它之前（含自己）真 token 的个数 - 1；padding 位置随便给 0
        counted = attention_mask.long().cumsum(dim=-1) - 1                     # (B, S)
        return counted[:, start:start + T].clamp(min=0)

    def _attention_mask(self, T, start, attention_mask, device) -> tuple[torch.Tensor | None, bool]:
        """返回 (mask, is_causal)。mask 是布尔张量 (B, 1, T, S)，True 表示“可以看”。

        尽量走 PyTorch 最快的路径：
        - 没有 padding、查询从位置 0 开始（训练、评估、首次预填充）：只需 is_causal=True；
        - 没有 padding、只有 1 个新查询（逐 token 生成）：它在最末尾，本来就能看全部历史，不需要掩码。
          （注意这里不能用 is_causal=True：PyTorch 会把这 1 个查询当成第 0 个位置，只让它看第 0 个键。）
        其余情况（有 padding，或在已有缓存后面一次接多个 token）显式构造掩码。
        """
        if attention_mask is None and start == 0:
            return None, True
        if attention_mask is None and T == 1:
            return None, False
        S = start + T
        query_pos = torch.arange(start, S, device=device).view(T, 1)
        key_pos = torch.arange(S, device=device).view(1, S)
        allowed = (key_pos <= query_pos).view(1, 1, T, S)                      # 因果：只看自己和过去
        if attention_mask is not None:
            real_keys = attention_mask.bool().view(-1, 1, 1, S)                # (B, 1, 1, S)
            # padding 查询可能一个真键都看不到，softmax 会得到 NaN；让每个位置至少能看见自己。
            # （padding 位置的输出没人用，这只是为了数值干净。）
            itself = key_pos == query_pos                                      # (T, S)
            allowed = (allowed & real_keys) | itself.view(1, 1, T, S)
        return allowed, False

    # ---- 工具 ----------------------------------------------------------------

    def new_kv_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """为生成准备一个空的 KV 缓存（设备和精度与模型一致）。"""
        max_len = max_len or self.config.max_seq_len
        return KVCache(self.config, batch_size, max_len, self.embed.weight.device, self.embed.weight.dtype)

    def num_params(self, exclude_embedding: bool = False) -> int:
        """参数个数（共享的权重只数一次）。exclude_embedding=True 时不数词向量表。"""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            total -= self.embed.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """训练时每个 token 的浮点运算数（前向 + 反向），用于估算算力利用率（MFU）。

        6N：每个参数在前向做 1 次乘加（2 FLOPs），反向约为前向的 2 倍，合计 6·N；
        再加注意力里 q·kᵀ 和 注意力·v 两次矩阵乘：每层 12·T·C（同样 ×3 算上反向），
        其中 T 是序列长度（PaLM 论文附录 B 的估算方法）。
        """
        seq_len = seq_len or self.config.max_seq_len
        n = self.num_params(exclude_embedding=True)  # 查词向量表不是矩阵乘，不算
        if self.config.tie_embeddings:
            n += self.lm_head.weight.numel()  # 共享权重时输出头没被数进 n，但它仍要做一次 V×C 的矩阵乘
        return 6 * n + 12 * self.config.n_layer * seq_len * self.config.d_model
