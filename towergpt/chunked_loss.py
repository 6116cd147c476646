"""一课：分块算“输出头 + 交叉熵”，训练时从不造出 (B, T, V) 的 logits。

像 model.py 和 lora/layer.py 一样，这个文件只依赖 torch，可以单独读懂。它回答三个问题：
为什么要分块、分块的前向怎么算、自己写的反向（autograd.Function.backward）怎么算。

符号（与 model.py 相同）：
    B  批大小      T  序列长度      C  隐藏维度 d_model      V  词表大小
    M  位置总数 = B·T（把批和序列摊平成一维）     m  一块的位置数（loss_chunk_tokens）
    h  最后一层（final_norm 之后）的隐藏状态 (M, C)    W  输出头的权重 (V, C)
    z  logits = h·Wᵀ (M, V)      y  目标 token (M,)      τ  温度（GRPO 用；平时为 1）

## 1. 为什么 logits 是小模型训练里最大的张量

模型里别的激活都是 (B, T, C) 或 (B, T, ffn_hidden) 大小，而 logits 是 (B, T, V)：小模型的 C 只有几百，
V 却有几万。base 预设（C = 768、V = 32000）里 V/C ≈ 42，一份 logits 抵得上 42 份隐藏状态。
fp32 的 logits 要 B·T·V·4 字节：批 16 × 序列 1024 × 词表 32000 × 4 B = 2 GiB。而且不止一份：
    前向  logits（bf16 autocast 时还有 bf16 的一份）→ .float() 的 fp32 一份 → log_softmax 的结果
          （交叉熵要留给反向）又一份；
    反向  d loss / d logits 同样大小，再一份（bf16 时还要转回 bf16，又一份）。
于是几个 GiB 的内存只花在“最后一层的打分”上，挤掉了本可以用来加大批次的空间。

## 2. 分块的前向：每块的 logits 造出来、用完、扔掉

交叉熵其实只需要每个位置的两个数：
    log p(y) = z_y/τ − logsumexp(z/τ)            （logsumexp(a) = log Σ_v exp(a_v)）
所以把 M 个位置切成每块 m 个：每块算出 (m, V) 的 logits，取出目标那一列 z_y 和这一行的 logsumexp，
这块 logits 就可以扔了。同一时刻只有一块 (m, V) 在内存里（m = 4096、V = 32000：fp32 0.5 GiB，
比整批小 M/m 倍）。前向只存 h（它本来就要存）和每个位置的 logsumexp（M 个数）。

## 3. 自己写反向：d loss/d logits = softmax − onehot

autograd 默认会把前向的每个中间结果都存下来给反向用，包括每一块 logits——那就白分块了。
所以这里写一个 torch.autograd.Function：前向只存 h、W、y 和 logsumexp；反向时**重算**每块的 logits。
对一个位置，记 p = softmax(z/τ)（用存下的 logsumexp：p = exp(z/τ − logsumexp)），onehot 是 y 处为 1 的向量：
    d log p(y) / d z = (onehot − p) / τ
    交叉熵 = −log p(y)，所以 d 交叉熵 / d z = (p − onehot) / τ    —— 著名的“softmax 减 onehot”
上游传来的是 γ = d loss / d log p(y)（每个位置一个数；平均交叉熵时 γ = −1/有效位置数），于是每块
    g = d loss / d z = γ · (onehot − p) / τ                       (m, V)
    d loss / d h   = g · W                                        (m, C)   这一块的位置各自的梯度
    d loss / d W  += gᵀ · h                                       (V, C)   所有块的贡献加起来
被忽略的位置（IGNORE_INDEX）输出恒为 0，γ 对它们取 0 即可。代价是输出头的矩阵乘多做一次（重算）：
base 的形状里输出头约占一步计算量的 17%，多做它的 1/3，即多约 6%；换来的是 logits 那几 GiB 只剩一块。
（CPU 上实测，块大小 1024 时一步的峰值内存少约 40%，速度在噪声以内：见 bench/fused_loss.py。）

精度与不分块时相同：logits 用 fp32 算交叉熵（.float()）；autocast 下矩阵乘的输入先转成 autocast 的精度
（与 nn.Linear 在 autocast 下做的一样），反向也用同一个精度；W 的梯度在 fp32 里逐块累加。

一个原语服务所有目标：它给出每个目标 token 的 log 概率 (B, T)。平均交叉熵（预训练、SFT）是它的
负平均；DPO 按行求和；GRPO 除以温度后逐 token 用。

参考：Liger Kernel 的 fused linear cross entropy（Hsu et al. 2024）；Wijmans et al. 2024, “Cut Your Losses in
Large-Vocabulary Language Models”。这里是不写 CUDA 内核、只用 PyTorch 的教学版。
"""

from __future__ import annotations

import torch

# 交叉熵里“这个位置不算损失”的标签值。SFT 时用户说的话、padding 都会被标成它。
IGNORE_INDEX = -100


# ---------------------------------------------------------------------------
# 1. 不分块的写法：完整的 logits → 每个目标 token 的 log 概率（分块的结果必须等于它）
# ---------------------------------------------------------------------------

def target_logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """logits (..., V)、targets (...) → 每个目标 token 的 log 概率 (...)；IGNORE_INDEX 处为 0。

    先转成 fp32 再除以温度、做 log_softmax：bf16 下 log 概率会丢掉不少精度。
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    safe = targets.clamp(min=0)          # IGNORE_INDEX 是负数，不能当下标；取出的值随后清零
    picked = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(targets == IGNORE_INDEX, 0.0)


def mean_cross_entropy(token_logprobs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """平均交叉熵 = −Σ log p(y) / 有效位置数，与 F.cross_entropy(..., ignore_index=IGNORE_INDEX) 相同
    （一个有效位置都没有时同样是 0/0 = nan）。"""
    return -token_logprobs.sum() / (targets != IGNORE_INDEX).sum()


# ---------------------------------------------------------------------------
# 2. 分块的写法
# ---------------------------------------------------------------------------

def chunked_target_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_tokens: int,
                            temperature: float = 1.0) -> torch.Tensor:
    """hidden (..., C)、weight (V, C)、targets (...) → 每个目标 token 的 log 概率 (...)，IGNORE_INDEX 处为 0。

    等于 target_logprobs_from_logits(hidden @ weight.T, targets, temperature)，但每次只造 chunk_tokens 个位置的
    logits，反向时重算（见模块开头）。weight 必须在模型的 forward 里取（FSDP 只在 forward 里给出完整参数）。
    """
    if chunk_tokens <= 0:
        raise ValueError(f"chunk_tokens 必须是正数，实际是 {chunk_tokens} / chunk_tokens must be positive")
    C = hidden.shape[-1]
    flat = ChunkedTargetLogprobs.apply(hidden.reshape(-1, C), weight, targets.reshape(-1), chunk_tokens,
                                       temperature)                                     # (M,)，M = B·T
    return flat.view(targets.shape)                                                     # (B, T)


class ChunkedTargetLogprobs(torch.autograd.Function):
    """前向：逐块算 log p(y)，只存 h、W、y 和每个位置的 logsumexp；反向：逐块重算 logits 求梯度。"""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_tokens: int, temperature: float):
        # hidden (M, C)，weight (V, C)，targets (M,)
        dtype = _matmul_dtype(hidden)
        matrix = weight.to(dtype)                                   # (V, C)，autocast 时转一次、每块共用
        safe = targets.clamp(min=0)                                 # IGNORE_INDEX 不能当下标；结果最后清零
        logsumexp = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)   # (M,)
        picked = torch.empty_like(logsumexp)                                                # (M,) z_y/τ
        for rows in _chunks(len(targets), chunk_tokens):
            logits = _logits(hidden[rows].to(dtype), matrix, temperature)  # (m, V) fp32：只有这一块
            logsumexp[rows] = torch.logsumexp(logits, dim=-1)
            picked[rows] = logits.gather(1, safe[rows, None]).squeeze(1)
            del logits                                              # 用完即扔：下一块复用这块内存
        ctx.save_for_backward(hidden, weight, targets, logsumexp)
        ctx.chunk_tokens, ctx.temperature, ctx.dtype = chunk_tokens, temperature, dtype
        return (picked - logsumexp).masked_fill_(targets == IGNORE_INDEX, 0.0)          # (M,) log p(y)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        # grad_output (M,)：γ = d loss / d log p(y)
        hidden, weight, targets, logsumexp = ctx.saved_tensors
        want_hidden, want_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # LoRA 时 W 是冻结的
        matrix = weight.to(ctx.dtype)                               # (V, C)
        safe = targets.clamp(min=0)
        # 每个位置的系数 γ/τ；被忽略的位置输出恒为 0、与 logits 无关，系数取 0
        scale = (grad_output.float() / ctx.temperature).masked_fill(targets == IGNORE_INDEX, 0.0)   # (M,)
        grad_hidden = torch.empty_like(hidden) if want_hidden else None                             # (M, C)
        # W 的梯度在 fp32 里逐块累加（autocast 时每块的乘积是 bf16，加起来不再丢精度）
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        for rows in _chunks(len(targets), ctx.chunk_tokens):
            h = hidden[rows].to(ctx.dtype)                          # (m, C)
            logits = _logits(h, matrix, ctx.temperature)            # (m, V) 重算：前向没有存它
            probs = logits.sub_(logsumexp[rows, None]).exp_()       # (m, V) softmax，原地算：不多占一块内存
            probs[torch.arange(len(h), device=h.device), safe[rows]] -= 1.0    # softmax − onehot
            grad_logits = probs.mul_(-scale[rows, None]).to(ctx.dtype)         # (m, V) g = γ·(onehot − p)/τ
            if want_hidden:
                grad_hidden[rows] = grad_logits @ matrix            # (m, V)·(V, C) → (m, C)
            if want_weight:
                grad_weight += grad_logits.t() @ h                  # (V, m)·(m, C) → (V, C)
        if want_weight:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None, None           # targets、chunk_tokens、temperature 没有梯度


def _chunks(total: int, size: int):
    """把 [0, total) 切成每段 size 个（最后一段可以短）：给出一串 slice。"""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _logits(h: torch.Tensor, matrix: torch.Tensor, temperature: float) -> torch.Tensor:
    """一块的 logits：(m, C)·(C, V) → (m, V)，转成 fp32（与不分块时的 logits.float() 相同），再除以温度。"""
    logits = (h @ matrix.t()).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def _matmul_dtype(hidden: torch.Tensor) -> torch.dtype:
    """矩阵乘用的精度：autocast 开着时是它的精度（bf16 / fp16），否则就是张量自己的精度。

    自定义 Function 里显式转换，而不靠 autocast 自动转：反向不在 autocast 里运行，显式记下精度，
    前向和反向才用得一样。
    """
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return hidden.dtype
