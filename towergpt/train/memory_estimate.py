"""开训前估算一个进程训练时的内存峰值（GPU 上就是显存）：放不放得下，开训前就知道。

    towergpt pretrain --config base --set train.micro_batch_size=8 --dry-run     # 只打印估计，不训练

训练一步时内存里有六样东西（符号同 model.py；N = 参数个数，R = 一次前向的行数，T = 序列长度，
L = 层数，F = ffn_hidden，b = 激活的字节数：fp32 为 4，bf16/fp16 混合精度为 2）：

    权重        4·N              模型权重始终是 fp32 主副本（混合精度只在计算时临时转成 16 位）
    梯度        4·N_可训练        LoRA 时只有适配器可训练（train/lora_setup.py）
    优化器状态  AdamW 每个可训练参数 2 份 fp32（一阶矩、二阶矩）= 8·N_可训练；
                Muon 给隐藏层矩阵只存 1 份动量（4 字节），其余参数照 AdamW；
                GaLore 给隐藏层矩阵存投影到 r 维之后的两份 Adam 状态，外加投影矩阵（见 _galore_bytes）
    参考模型    DPO、GRPO（kl_coef > 0）的冻结拷贝：4·N，没有梯度也没有优化器状态
    激活值      autograd 为反向存下的中间结果，正比于 R·T（见 block_activation_bytes）
    logits      输出头的 (R, T, V)：交叉熵存下的 log_softmax（fp32）、反向开始时它的梯度、再往回一步的梯度，
                同一时刻三份 fp32：12·R·T·V 字节。train.loss_chunk_tokens = m > 0 时只有 m 个位置的一块

峰值不是六样简单相加：反向一层层往回走时，激活值一层层释放，梯度一层层产生，两者不会同时满。
所以按一步里最挤的那一刻算（MemoryEstimate.peak）：

    峰值 = 权重 + 参考模型 + 优化器状态 + max(激活值 + logits,  梯度 + 更新时的临时张量)

第一项是“反向刚开始”（激活全在、logits 的几份梯度刚出来），第二项是“反向结束、优化器更新时”；
开了激活检查点还有第三刻：重算某一块时（存下的块输入 + 这一块的中间结果 + 输出头和上面各块的梯度；
越往下，上面各块的梯度越多、已释放的块输入也越多，最挤的是两者之差最大的那一块）。
这个模型在 CPU 上用真实训练实测核对过（tests/test_memory_estimate.py；三种形状都在 20% 以内），
GPU 上多出的 CUDA 上下文（约 0.5–1 GB）和分配器的碎片不在估计里，见 docs/memory.md 的余量。
"""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from towergpt.checkpoint import read_model_config, resolve_checkpoint
from towergpt.config import RunConfig
from towergpt.data.data_format import TOKENIZER_SUBDIR
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.lora.adapters import parse_targets
from towergpt.model import GPTConfig
from towergpt.tokenizer import Tokenizer
from towergpt.train.distributed import is_main_process
from towergpt.train.optim.build import check_optim_config
from towergpt.train.precision import pick_dtype

FP32 = 4
GIB = 1024 ** 3
FALLBACK_VOCAB = 32000   # 词表跟随分词器（vocab_size: 0）又找不到分词器时，按这么大估计（并打印出来）


@dataclass(frozen=True)
class MemoryEstimate:
    """一步训练的内存估计（字节），以及得出它的几个数（打印表格用）。"""

    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int          # 整个前向存下、反向开始时都还在的激活值
    recompute: int            # 激活检查点：反向时重算的那一块的中间结果（不开时为 0）
    logits: int
    head_gradient: int        # 输出头（与词向量共享）的梯度：反向一开始就产生
    upper_gradients: int      # 激活检查点重算到最下面一块时，上面各块已产生的梯度（减去已释放的块输入）
    update_scratch: int       # 反向结束、优化器更新时的临时张量（词向量梯度的第二份、AdamW 的临时量）
    parameters: int
    trainable: int
    rows: int
    seq_len: int
    dtype: torch.dtype
    notes: tuple[str, ...] = ()

    @property
    def peak(self) -> int:
        """峰值 = 常驻的三样 + 一步里最挤的那一刻（见模块开头）：
        反向开始时（激活 + logits）、激活检查点重算某一块时（激活 + 那一块 + 输出头和上面各块的梯度）、
        反向结束更新参数时（梯度 + 临时张量）。"""
        resident = self.weights + self.reference + self.optimizer
        moments = [self.activations + self.logits, self.gradients + self.update_scratch]
        if self.recompute:
            moments.append(self.activations + self.recompute + self.head_gradient + self.upper_gradients)
        return resident + max(moments)


# ---------------------------------------------------------------------------
# 1. 一个 Block 为反向存下什么（读 model.py 的 Block / CausalSelfAttention / SwiGLU 得来）
# ---------------------------------------------------------------------------

def block_activation_bytes(config: GPTConfig, rows: int, seq_len: int, mixed: bool,
                           dropout_on_cpu: bool = False) -> int:
    """一个 Block 在 rows 行、每行 seq_len 个位置上为反向存下的字节数（不开激活检查点时）。

    逐个子层数（C = d_model，H / Hkv 头数，D = head_dim；每项是“每个 token 多少个数”）：
        RMSNorm ×2     输入 x（残差流，fp32）、x·rstd（fp32）、rstd（1 个）             各 2·C + 1，fp32
        线性层的输入   RMSNorm 的输出：fp32 时存 1 份（qkv 一份，gate/up 共用一份）；
                       autocast 时每个线性层各存一份转成 bf16 的拷贝（gate、up 各一份）    注意力 C、FFN C 或 2·C
        qkv 的输出     v 是它的一个视图，整块 (H + 2·Hkv)·D 都留着                       C + 2·Hkv·D
        RoPE 之后      q、k（旋转产生了新张量）                                           C + Hkv·D
        RoPE 表        autocast 时 apply_rope 每次调用把 cos、sin 转成 bf16：q、k 各两份    4·D（只有混合精度）
        注意力         融合内核存 logsumexp（每头 1 个，fp32）和输出（也就是 out_proj 的输入） H + C
        SwiGLU         gate 输出、SiLU 输出、up 输出、两者之积（down_proj 的输入）         4·F
    另外 autocast 时每个矩阵都被转成 bf16 存一份：每层 2 × 这一层矩阵的参数个数（与 token 数无关）。
    dropout > 0：两个 nn.Dropout 各存一个 C 的掩码（fp32）；CPU 上带 dropout 的注意力没有融合内核，
    退回朴素实现，存下 T×T 的注意力矩阵（softmax、dropout 后、掩码三份）。
    tests/test_memory_estimate.py 用 saved_tensors_hooks 数出 autograd 真正存下的张量，与这里逐字节核对。
    """
    C, H, Hkv, D, F = config.d_model, config.n_head, config.n_kv_head, config.head_dim, config.ffn_hidden
    b = 2 if mixed else FP32
    norms = 2 * (2 * C + 1) * FP32
    linear_inputs = (C + 2 * C) * b if mixed else 2 * C * FP32
    qkv = (C + 2 * Hkv * D) * b
    rotated = (C + Hkv * D) * b + (4 * D * b if mixed else 0)
    attention = H * FP32 + C * b
    swiglu = 4 * F * b
    per_token = norms + linear_inputs + qkv + rotated + attention + swiglu
    if config.dropout > 0:
        per_token += 2 * C * FP32
        if dropout_on_cpu:
            per_token += 3 * H * seq_len * FP32
    weight_copies = 2 * block_matrix_parameters(config) if mixed else 0
    return per_token * rows * seq_len + weight_copies


def activation_bytes(config: GPTConfig, rows: int, seq_len: int, mixed: bool, checkpointing: bool, chunked: bool,
                     dropout_on_cpu: bool = False) -> int:
    """整个前向为反向存下的激活值：词向量 + L 个 Block + 最后的 RMSNorm 与输出头的输入。

    激活检查点（train/activation_checkpointing.py）：每个 Block 只存它的输入 x（C 个 fp32）。
    反向时同一时刻只有一个 Block 被重算，那 1 份 block_activation_bytes 另算（MemoryEstimate.recompute）：
    它出现在 logits 的几份梯度已经释放之后，不和 logits 同时在。
    """
    C, tokens = config.d_model, rows * seq_len
    if checkpointing:
        blocks = config.n_layer * C * FP32 * tokens
    else:
        blocks = config.n_layer * block_activation_bytes(config, rows, seq_len, mixed, dropout_on_cpu)
    embedding = 8 * tokens + (C * FP32 * tokens if config.dropout > 0 else 0)   # token id（int64）、dropout 掩码
    head = (2 * C + 1) * FP32 * tokens                                          # 最后的 RMSNorm
    if chunked:   # 分块的损失自己存 final_norm 的输出（fp32）和每个位置的 logsumexp
        head += (C + 1) * FP32 * tokens
    else:         # 输出头（nn.Linear）存它的输入；autocast 时还有 bf16 的权重拷贝
        head += C * (2 if mixed else FP32) * tokens + (2 * config.vocab_size * C if mixed else 0)
    return embedding + blocks + head


def logits_bytes(config: GPTConfig, tokens: int, mixed: bool, chunk_tokens: int, reference: bool,
                 head_trainable: bool) -> int:
    """输出头 + 交叉熵在反向开始时的峰值（见模块开头“logits”一行）。

    不分块：12·tokens·V。有参考模型时（DPO、GRPO 的 KL），参考模型不求梯度的那次前向发生在策略模型的
    log_softmax 已经存下之后：fp32 时 logits + log_softmax 两份，混合精度时再加 bf16 的 logits，所以取
    4 + 8（fp32）或 4 + 10（混合精度）与 12 中较大的。
    分块（m 个位置一块，chunked_loss.py）：反向时逐块重算：一块 fp32 的 logits（概率原地算）外加混合精度时
    bf16 的乘积与梯度；还有转成 bf16 的输出头权重、fp32 累加的输出头梯度。
    """
    V, C = config.vocab_size, config.d_model
    if chunk_tokens <= 0:
        per_position = 12
        if reference:
            per_position = max(per_position, 4 + (10 if mixed else 8))
        return per_position * tokens * V
    m = min(chunk_tokens, tokens)
    work = (6 if mixed else 4) * m * V
    weight_copy = 2 * V * C if mixed else 0
    return work + weight_copy + (FP32 * V * C if head_trainable else 0)


# ---------------------------------------------------------------------------
# 2. 参数：总数、可训练的、优化器要存多少
# ---------------------------------------------------------------------------

def block_matrix_shapes(config: GPTConfig) -> dict[str, tuple[int, int]]:
    """每个 Block 里五个矩阵的形状 (out, in)，与 model.py 里那五个 nn.Linear 的 weight 相同。

    只从配置数、不构造模型：meta 设备上构造也不分配内存，但它的随机初始化会连带 import torch._dynamo（约 3 秒）。
    tests/test_memory_estimate.py 核对这里数出的参数、隐藏层矩阵与真的模型一致。
    """
    C, F = config.d_model, config.ffn_hidden
    qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
    return {"qkv": (qkv_out, C), "out_proj": (C, C), "gate_proj": (F, C), "up_proj": (F, C), "down_proj": (C, F)}


def block_matrix_parameters(config: GPTConfig) -> int:
    """一个 Block 里五个矩阵的参数个数（qkv、out_proj、gate、up、down）。"""
    return sum(out * inp for out, inp in block_matrix_shapes(config).values())


def _galore_bytes(shape: tuple[int, int], rank: int, proj_type: str, eight_bit: bool) -> int:
    """GaLore 为一个 m×n 矩阵存的：两份投影后的 Adam 状态 + 投影矩阵（fp32）。读 galore_torch 的 GaLoreProjector：

        std          m ≥ n 时从右边投影：梯度 (m, r)、投影 (r, n)；m < n 时从左边：梯度 (r, n)、投影 (m, r)
        reverse_std  反过来；left / right 固定一边；full 两边都投影：梯度 (r, r)、投影 (m, r) + (r, n)
    8 位版本（galore_adamw8bit）的 Adam 状态每个数 1 字节。
    """
    m, n = shape
    r = min(rank, m, n)
    long, short = max(m, n), min(m, n)
    low_rank, projector = {
        "std": (r * long, r * short), "reverse_std": (r * short, r * long),
        "left": (r * n, m * r), "right": (m * r, r * n), "full": (r * r, r * (m + n)),
    }[proj_type]
    return 2 * low_rank * (1 if eight_bit else FP32) + projector * FP32


@dataclass(frozen=True)
class ParameterCounts:
    parameters: int           # 全部参数（共享的权重只数一次）
    adapters: int             # LoRA 适配器的参数（不用 LoRA 时为 0）
    trainable: int
    largest_trainable: int    # 最大的一个可训练张量（逐个参数更新时的临时量按它算）
    optimizer: int            # 优化器状态的字节数


def parameter_counts(config: RunConfig) -> ParameterCounts:
    """数参数和优化器状态。隐藏层矩阵（走 GaLore / Muon 的那些）= 每块五个矩阵，与 optim/groups.py 的规则相同；
    其余（词向量、不共享时的输出头、RMSNorm 的缩放）走 AdamW。LoRA 时只有适配器可训练，全走 AdamW。"""
    model, optim = config.model, config.optim
    C, V, L = model.d_model, model.vocab_size, model.n_layer
    hidden = list(block_matrix_shapes(model).values()) * L
    rest = [V * C] * (1 if model.tie_embeddings else 2) + [C] * (2 * L + 1)     # 词向量（+ 输出头）、RMSNorm
    parameters = sum(out * inp for out, inp in hidden) + sum(rest)
    if config.lora.rank:   # 每个目标矩阵 (out, in) 装上 A (r, in) 和 B (out, r)
        r, shapes = config.lora.rank, block_matrix_shapes(model)
        sizes = [size for name in parse_targets(config.lora.targets)
                 for size in (r * shapes[name][1], shapes[name][0] * r)] * L
        return ParameterCounts(parameters, sum(sizes), sum(sizes), max(sizes), 2 * FP32 * sum(sizes))
    matrices = sum(out * inp for out, inp in hidden)
    if optim.name == "muon":
        state = FP32 * matrices + 2 * FP32 * sum(rest)
    elif optim.name.startswith("galore"):
        eight_bit = optim.name == "galore_adamw8bit"
        state = 2 * FP32 * sum(rest) + sum(_galore_bytes(shape, optim.galore_rank, optim.galore_proj_type, eight_bit)
                                           for shape in hidden)
    else:
        state = 2 * FP32 * parameters
    largest = max([out * inp for out, inp in hidden] + rest)
    return ParameterCounts(parameters, 0, parameters, largest, state)


# ---------------------------------------------------------------------------
# 3. 一种训练的一步：多少行、有没有参考模型
# ---------------------------------------------------------------------------

def rows_per_forward(config: RunConfig, kind: str) -> int:
    """一次前向的行数 R：DPO 把 chosen 和 rejected 拼成 2B 行；GRPO 每个提示词采样 G 个回答，B·G 行。"""
    batch = config.train.micro_batch_size
    return {"dpo": 2 * batch, "grpo": batch * config.grpo.group_size}.get(kind, batch)


def estimate_memory(config: RunConfig, kind: str, dtype: torch.dtype, device_type: str = "cuda") -> MemoryEstimate:
    """按配置估计一步训练的内存（字节）。config.model.vocab_size 必须已经是具体的词表大小。

    kind：pretrain / sft / dpo / grpo。序列长度按 max_seq_len 算：SFT、DPO、GRPO 的批次补齐到批里最长的一条，
    最长不超过它，所以这是上限。dtype 是 autocast 的精度（float32 表示不开混合精度）。
    """
    model_config, train = config.model, config.train
    check_optim_config(config.optim)   # 优化器的设置不对：与开训时同一条清楚的报错
    if model_config.vocab_size <= 0:
        raise TowerGPTError("估计内存需要具体的 model.vocab_size / the estimate needs a concrete model.vocab_size")
    counts = parameter_counts(config)
    mixed = dtype in (torch.bfloat16, torch.float16)
    rows, seq_len = rows_per_forward(config, kind), model_config.max_seq_len
    tokens = rows * seq_len
    chunk = getattr(train, "loss_chunk_tokens", 0)
    reference = kind == "dpo" or (kind == "grpo" and config.grpo.kl_coef > 0)   # 冻结的参考模型
    head_trainable = not counts.adapters   # LoRA 时词向量（= 输出头）冻结，没有它的梯度
    # 反向结束时：共享的词向量梯度要把第二份（词向量那一侧的）加进第一份（输出头那一侧的），临时多一份 V·C；
    # 优化器更新时：CUDA 上的 AdamW 是 fused 的，不要临时张量；别处逐个参数更新，最大的那个参数要两份临时量
    head_gradient = FP32 * model_config.vocab_size * model_config.d_model if head_trainable else 0
    embedding_scratch = head_gradient if model_config.tie_embeddings else 0
    fused = device_type == "cuda" and config.optim.name == "adamw"
    on_cpu = device_type == "cpu"
    # 重算第 k 块（从上往下数）时，上面 k 块的梯度已经产生、它们的块输入已经释放：取最挤的那一块
    layers = model_config.n_layer
    block_gradient = FP32 * (counts.adapters // layers if counts.adapters
                             else block_matrix_parameters(model_config) + 2 * model_config.d_model)
    block_input = FP32 * model_config.d_model * tokens
    upper_gradients = (layers - 1) * max(block_gradient - block_input, 0) if train.activation_checkpointing else 0
    update_scratch = max(embedding_scratch, 0 if fused else 2 * FP32 * counts.largest_trainable)
    return MemoryEstimate(
        weights=FP32 * (counts.parameters + counts.adapters),
        gradients=FP32 * counts.trainable,
        optimizer=counts.optimizer,
        reference=FP32 * counts.parameters if reference else 0,
        activations=activation_bytes(model_config, rows, seq_len, mixed, train.activation_checkpointing, chunk > 0,
                                     dropout_on_cpu=on_cpu),
        recompute=(block_activation_bytes(model_config, rows, seq_len, mixed, on_cpu)
                   if train.activation_checkpointing else 0),
        logits=logits_bytes(model_config, tokens, mixed, chunk, reference, head_trainable),
        head_gradient=head_gradient, upper_gradients=upper_gradients,
        update_scratch=update_scratch,
        parameters=counts.parameters, trainable=counts.trainable, rows=rows, seq_len=seq_len, dtype=dtype,
    )


def largest_micro_batch(config: RunConfig, kind: str, dtype: torch.dtype, budget_bytes: float,
                        limit: int = 1 << 16) -> int:
    """估计峰值不超过 budget_bytes 的最大 train.micro_batch_size（一个都放不下时是 0）。docs/memory.md 的表由它算出。"""
    def peak(batch: int) -> int:
        trial = dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch_size=batch))
        return estimate_memory(trial, kind, dtype).peak

    low, high = 0, limit           # 峰值随批大小单调增加：二分
    while low < high:
        middle = (low + high + 1) // 2
        if peak(middle) <= budget_bytes:
            low = middle
        else:
            high = middle - 1
    return low


# ---------------------------------------------------------------------------
# 4. 打印：开训前的一张小表，以及 --dry-run
# ---------------------------------------------------------------------------

def training_precision(train) -> tuple[str, torch.dtype]:
    """(设备种类, autocast 精度)，与训练时的选择相同（device.py、precision.py）。

    --dry-run 也可以在没有 GPU 的机器上估计 GPU 训练：train.device=cuda 而这里没有 CUDA 时，
    auto 精度按 bf16 算（Ampere 之后的 GPU 都支持）。
    """
    if train.device.startswith("cuda") and not torch.cuda.is_available():
        named = {"float32": torch.float32, "float16": torch.float16}
        return "cuda", named.get(train.dtype, torch.bfloat16)
    device = pick_device(train.device)
    return device.type, pick_dtype(train.dtype, device)


def _size(nbytes: int) -> str:
    return "—" if not nbytes else f"{nbytes / GIB:.2f} GiB" if nbytes >= GIB else f"{nbytes / 1024 ** 2:.1f} MiB"


def _optimizer_words(config: RunConfig) -> str:
    if config.lora.rank:
        return f"LoRA r={config.lora.rank}：只有适配器可训练，AdamW 2 份 fp32 / adapters only"
    galore = f"GaLore r={config.optim.galore_rank}：隐藏层矩阵投影后 2 份 + 投影矩阵 / projected states + projector"
    return {"muon": "Muon：隐藏层矩阵 1 份动量，其余 AdamW 2 份 / 1 state for hidden matrices, AdamW for the rest",
            "galore_adamw": galore, "galore_adamw8bit": galore,
            }.get(config.optim.name, "AdamW：每个可训练参数 2 份 fp32 / 2 fp32 states per trainable parameter")


def format_estimate(estimate: MemoryEstimate, config: RunConfig, kind: str, device_type: str) -> str:
    """估计写成一张小表（中文在前，英文在后）。"""
    train, model = config.train, config.model
    precision = {torch.float32: "fp32", torch.bfloat16: "bf16 混合精度 / mixed",
                 torch.float16: "fp16 混合精度 / mixed"}[estimate.dtype]
    chunk = getattr(train, "loss_chunk_tokens", 0)
    positions = f"{estimate.rows} 行 rows × {estimate.seq_len} 位置 positions"
    lines = [
        f"内存估计 / memory estimate（{kind}，每个进程 / per process，{device_type}，{precision}）",
        f"  微批次 / micro-batch {positions}；激活检查点 / activation checkpointing "
        f"{'开 on' if train.activation_checkpointing else '关 off'}；logits "
        f"{f'每块 {chunk} 个位置 / chunks of {chunk}' if chunk > 0 else '不分块 / not chunked'}",
    ]
    rows = [
        ("权重 / weights", estimate.weights, f"{estimate.parameters / 1e6:.2f}M 参数 params × 4 B（fp32）"),
        ("梯度 / gradients", estimate.gradients, f"{estimate.trainable / 1e6:.2f}M 可训练 trainable × 4 B"),
        ("优化器状态 / optimizer", estimate.optimizer, _optimizer_words(config)),
        ("参考模型 / reference", estimate.reference, "冻结的拷贝，无梯度 / frozen copy, no gradients"
         if estimate.reference else ""),
        ("激活值 / activations", estimate.activations,
         f"{model.n_layer} 层 layers{'，每块只存输入 / block inputs only' if estimate.recompute else ''}"),
        ("重算的一块 / recompute", estimate.recompute, "反向时一次只重算一块 / one block at a time"
         if estimate.recompute else ""),
        ("logits", estimate.logits, f"V = {model.vocab_size}"),
        ("峰值 / peak ≈", estimate.peak, "权重+参考+优化器 + max(激活+logits, 梯度+临时) / see docs/memory.md"),
    ]
    for label, nbytes, words in rows:
        lines.append(f"  {_pad(label, 26)}{_size(nbytes):>11}   {words}")
    lines.append("  （估计值；GPU 上另需 CUDA 上下文约 0.5–1 GB 和分配器碎片的余量 / an estimate: leave room for the "
                 "CUDA context and fragmentation）")
    return "\n".join(lines + [f"  注意 / note: {note}" for note in estimate.notes])


def _pad(text: str, width: int) -> str:
    """按显示宽度补空格（一个汉字占两格）。"""
    shown = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(width - shown, 1)


def report_memory(config: RunConfig, kind: str, notes: tuple[str, ...] = ()) -> MemoryEstimate:
    """开训前打印估计（只在主进程）；返回估计本身。config.model 此时已是真正要训练的模型结构。"""
    device_type, dtype = training_precision(config.train)
    estimate = dataclasses.replace(estimate_memory(config, kind, dtype, device_type), notes=notes)
    if is_main_process():
        print(format_estimate(estimate, config, kind, device_type), flush=True)
    return estimate


def dry_run(config: RunConfig, kind: str) -> MemoryEstimate:
    """`--dry-run`：只确定模型结构（不读权重、不读数据、不分配张量），打印估计后返回。"""
    return report_memory(config, kind, tuple(_resolve_model_config(config, kind)))


def _resolve_model_config(config: RunConfig, kind: str) -> list[str]:
    """把 config.model 换成训练时真正的结构；返回需要告诉用户的说明。

    pretrain：结构来自配置，vocab_size: 0 时跟随数据目录里的分词器；sft / dpo / grpo：结构来自 init_from 检查点的
    config.json（只读这个小文件），dropout 来自本次配置。找不到时按配置里的 model 节估计并说明。
    """
    notes = []
    if kind != "pretrain" and config.init_from:
        model_config = read_model_config(resolve_checkpoint(config.init_from))
        model_config.dropout = config.model.dropout
        config.model = model_config
    elif kind != "pretrain":
        notes.append("init_from 未设置：按配置里的 model 节估计 / init_from not set: using the model section")
    if config.model.vocab_size == 0:
        # 与训练时同一条规则（取到 64 的倍数）；写在这里：pretrain.py 自己 import 本模块
        from towergpt.train.pretrain import resolve_vocab_size

        tokenizer_dir = Path(config.data.path) / TOKENIZER_SUBDIR
        try:
            resolve_vocab_size(config, Tokenizer.load(tokenizer_dir))
        except (TowerGPTError, OSError, RuntimeError):
            config.model.vocab_size = FALLBACK_VOCAB
            notes.append(f"vocab_size: 0 而 {tokenizer_dir} 里没有分词器：按词表 {FALLBACK_VOCAB} 估计，"
                         f"可用 --set model.vocab_size=N 指定 / no tokenizer found: assuming V = {FALLBACK_VOCAB}")
    return notes
