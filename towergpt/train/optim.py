"""优化器与学习率曲线。

`optim.name` 选优化器（怎么选、各省多少内存，见 docs/optimizers.md）：

    adamw             默认。所有参数都用 AdamW：每个参数存两份同样大小的状态（一阶矩、二阶矩），
                      优化器状态 = 2 × 参数量 × 4 字节。
    galore_adamw      GaLore（Zhao et al. 2024）：隐藏层矩阵的梯度先投影到 r 维子空间，Adam 在小空间里做，
                      更新再投影回原空间。这些矩阵的 Adam 状态从 m×n 缩到 m×r（或 r×n）。需要 galore-torch。
    galore_adamw8bit  同上，Adam 状态再量化成 8 位（bitsandbytes；只能在 CUDA 上用）。
    muon              Muon（Jordan et al. 2024）：隐藏层矩阵用“动量 + Newton–Schulz 正交化”，只存一份动量；
                      其余参数仍用 AdamW。两个优化器包成一个（MuonWithAdamW），训练循环看不出区别。

哪些参数走“特殊通道”（GaLore / Muon）？只有每个 Transformer 块里的五种权重矩阵（HIDDEN_MATRICES）：
    注意力的 qkv、out_proj，SwiGLU 的 gate_proj、up_proj、down_proj。
词向量表（与输出头共享）不算“隐藏层”矩阵：它的每一行只在对应 token 出现时才有梯度，
做低秩投影或正交化都不合适（Muon 的作者也这样建议）；RMSNorm 的缩放系数是一维的，更谈不上。
它们都留给 AdamW。

权重衰减的规则（与 nanoGPT 相同，一眼可见）：
    2 维及以上的张量（线性层矩阵、词向量表）   做权重衰减
    1 维张量（RMSNorm 的缩放系数、偏置）        不做
权重衰减把权重往 0 拉，相当于正则化；对归一化层的缩放系数这样做没有意义，反而有害。

学习率：训练循环每步把学习率曲线的值写进每个参数组：group["lr"] = lr（set_learning_rate 做的就是这件事）。
所有优化器的所有组都按这同一条曲线走。Muon 的组另带 lr_scale = muon_lr / lr，
Muon 真正用的步长 = group["lr"] × lr_scale，在 MuonWithAdamW.step() 里才乘上。
所以 group["lr"] 永远是“曲线上的值”，循环不需要知道用的是哪个优化器。
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings

import torch

from towergpt.config import OptimConfig
from towergpt.errors import TowerGPTError

OPTIMIZERS = ("adamw", "galore_adamw", "galore_adamw8bit", "muon")
# 走 GaLore / Muon 的矩阵：参数名的倒数第二段（模块名），见 model.py 的 CausalSelfAttention 和 SwiGLU
HIDDEN_MATRICES = ("qkv", "out_proj", "gate_proj", "up_proj", "down_proj")
GALORE_PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
MUON_ADJUST_LR = ("original", "match_rms_adamw")
GALORE_INSTALL = 'pip install -e ".[galore]"'


# ---------------------------------------------------------------------------
# 1. 参数分组
# ---------------------------------------------------------------------------

def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """把可训练参数分成“衰减”和“不衰减”两组（共享的权重只出现一次）。"""
    # parameters() 会自动去重共享的权重（词向量表与输出头是同一个张量）
    return _split_by_decay([p for p in model.parameters() if p.requires_grad], weight_decay)


def _split_by_decay(params: list[torch.Tensor], weight_decay: float) -> list[dict]:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]


NamedParams = list[tuple[str, torch.Tensor]]


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


# ---------------------------------------------------------------------------
# 2. 校验与构造
# ---------------------------------------------------------------------------

def check_optim_config(config: OptimConfig, where=lambda key: key) -> None:
    """检查 optim 节里和优化器有关的取值；错误信息点名是哪个键。

    where(key) 把 "optim.galore_rank" 变成带位置的描述（config.py 可以传入“文件:行号”的版本）。
    """
    def fail(key: str, rule: str) -> None:
        raise TowerGPTError(f"{where('optim.' + key)}: {rule}，实际是 {getattr(config, key)!r}")

    if config.name not in OPTIMIZERS:
        raise TowerGPTError(f"{where('optim.name')}: 不支持的优化器 / unknown optimizer '{config.name}'"
                            f"（可用 / known: {', '.join(OPTIMIZERS)}）")
    for key in ("beta1", "beta2", "muon_momentum"):
        if not 0.0 <= getattr(config, key) < 1.0:
            fail(key, "须在 [0, 1) 之间 / must be in [0, 1)")
    for key in ("eps", "weight_decay", "grad_clip", "muon_weight_decay"):
        if getattr(config, key) < 0:
            fail(key, "不能为负 / must not be negative")
    for key in ("galore_rank", "galore_update_proj_gap"):
        if getattr(config, key) < 1:
            fail(key, "必须 ≥ 1 / must be at least 1")
    for key in ("galore_scale", "muon_lr"):
        if not getattr(config, key) > 0:
            fail(key, "必须 > 0 / must be positive")
    if config.galore_proj_type not in GALORE_PROJ_TYPES:
        fail("galore_proj_type", f"只能是 {' / '.join(GALORE_PROJ_TYPES)} / must be one of these")
    if not 1 <= config.muon_ns_steps <= 99:  # torch.optim.Muon 要求少于 100 次
        fail("muon_ns_steps", "须在 1 到 99 之间 / must be in 1..99")
    if config.muon_adjust_lr not in MUON_ADJUST_LR:
        fail("muon_adjust_lr", f"只能是 {' / '.join(MUON_ADJUST_LR)} / must be one of these")


def build_optimizer(model: torch.nn.Module, config: OptimConfig, device: torch.device):
    """按 optim.name 构造优化器。返回的对象都有 param_groups、step()、zero_grad()、
    state_dict()、load_state_dict()、state，训练循环和 GradScaler 对它们一视同仁。"""
    check_optim_config(config)
    if config.name == "adamw":
        # CUDA 上用 fused 实现：一个 kernel 更新所有参数，比逐个张量更新快得多
        return torch.optim.AdamW(
            parameter_groups(model, config.weight_decay), lr=config.lr, betas=(config.beta1, config.beta2),
            eps=config.eps, fused=device.type == "cuda",
        )
    if config.name == "muon":
        return _build_muon(model, config, device)
    return _build_galore(model, config, device)


def set_learning_rate(optimizer, lr: float) -> None:
    """把学习率曲线在这一步的值写进每个参数组。对所有优化器都是同一件事：group["lr"] = lr。

    Muon 的组不用特殊处理：MuonWithAdamW.step() 会在更新时再乘上它的 lr_scale（= muon_lr / lr）。
    """
    for group in optimizer.param_groups:
        group["lr"] = lr


def learning_rate(step: int, config: OptimConfig, max_steps: int) -> float:
    """第 step 步（1 起）的学习率：线性预热到 lr，再按余弦曲线降到 min_lr。

    预热：刚开始参数是随机的，梯度方向很乱，大步长容易把模型“打崩”，所以先小后大。
    余弦衰减：训练后期用小步长在谷底细调，最终损失更低。
    """
    if config.warmup_steps > 0 and step <= config.warmup_steps:
        return config.lr * step / config.warmup_steps
    decay_steps = max(1, max_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 从 1 平滑降到 0
    return config.min_lr + (config.lr - config.min_lr) * cosine


def optimizer_state_bytes(optimizer, params=None) -> int:
    """优化器状态占多少字节：optimizer.state 里所有张量之和（含 GaLore 的投影矩阵）。
    给了 params 就只数这些参数的状态。"""
    wanted = None if params is None else {id(param) for param in params}
    return sum(_tensor_bytes(value) for param, values in optimizer.state.items()
               if wanted is None or id(param) in wanted for value in values.values())


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if hasattr(value, "ortho_matrix"):  # GaLore 的投影器：一个 Python 对象，里面存着投影矩阵
        return _tensor_bytes(value.ortho_matrix)
    return 0


def _load_error(name: str, error: Exception) -> TowerGPTError:
    return TowerGPTError(
        f"检查点里的优化器状态与 optim.name={name} 不符（保存时用的是别的优化器？续训时请保持 optim.name 不变）/ "
        f"the checkpoint's optimizer state does not fit optim.name={name}: {error}"
    )


# ---------------------------------------------------------------------------
# 3. GaLore：梯度低秩投影（galore-torch 包）
# ---------------------------------------------------------------------------
#
# 一个 m×n 的权重矩阵 W，AdamW 要为它存两个 m×n 的状态。GaLore 的观察：训练中梯度 G 近似低秩，
# 于是每隔 update_proj_gap 步对当前梯度做一次 SVD，取前 r 个奇异向量组成投影矩阵 P（n×r 或 m×r），
#     低秩梯度  R = G·P          (m×r)   ← Adam 的两个状态也只有 m×r
#     更新      ΔW = scale · Adam(R)·Pᵀ  (m×n)
# 权重本身仍是完整的 m×n（不同于 LoRA），只是“优化器看到的”梯度被压缩了。
#
# galore-torch 的用法：参数组里带 rank / update_proj_gap / scale / proj_type 四个键，这一组才做投影；
# 不带 rank 的组就是普通 AdamW。常见错误：导入了 GaLore 却不给任何组设 rank，投影一次也没打开，
# 其实一直在跑 AdamW，内存一点没省。

def _build_galore(model: torch.nn.Module, config: OptimConfig, device: torch.device):
    eight_bit = config.name == "galore_adamw8bit"
    if eight_bit and device.type != "cuda":
        raise TowerGPTError(
            f"optim.name=galore_adamw8bit 需要 CUDA GPU（bitsandbytes 的 8 位优化器只在 GPU 上运行），"
            f"当前设备是 {device}；请改用 optim.name=galore_adamw / galore_adamw8bit needs a CUDA GPU and "
            f"bitsandbytes (device is {device}): use optim.name=galore_adamw"
        )
    try:
        optimizer_class = _galore_classes()[config.name]
    except ImportError as error:
        raise TowerGPTError(
            f"optim.name={config.name} 需要可选依赖 galore-torch：{GALORE_INSTALL}（导入失败：{error}）/ "
            f"optim.name={config.name} needs galore-torch: {GALORE_INSTALL}"
        ) from None
    hidden, rest = split_hidden_matrices(model)
    _check_galore_rank(hidden, config.galore_rank)
    groups = [
        {
            "name": "galore", "params": [param for _, param in hidden], "weight_decay": config.weight_decay,
            # 这四个键就是“打开投影”的开关（galore-torch 看到 "rank" 才投影）
            "rank": config.galore_rank, "update_proj_gap": config.galore_update_proj_gap,
            "scale": config.galore_scale, "proj_type": config.galore_proj_type,
        },
        *_split_by_decay([param for _, param in rest], config.weight_decay),
    ]
    betas = (config.beta1, config.beta2)
    if eight_bit:
        return optimizer_class(groups, lr=config.lr, betas=betas, eps=config.eps)
    return optimizer_class(groups, lr=config.lr, betas=betas, eps=config.eps, no_deprecation_warning=True)


def _check_galore_rank(hidden: NamedParams, rank: int) -> None:
    """秩必须小于每个矩阵的短边，否则“投影”既不降维也不省内存，只是白做 SVD。"""
    name, param = min(hidden, key=lambda item: min(item[1].shape))
    if rank >= min(param.shape):
        raise TowerGPTError(
            f"optim.galore_rank={rank} 不小于最小矩阵 {name} {tuple(param.shape)} 的短边 {min(param.shape)}，"
            f"投影不会省任何内存；请设得更小（常用短边的 1/4 到 1/2）/ galore_rank must be smaller than "
            f"{min(param.shape)}, the short side of {name}"
        )


@contextlib.contextmanager
def _quiet_import(logger_name: str):
    """导入 galore-torch 时，bitsandbytes 会在某些 CPU 上打一条与我们无关的日志警告，
    它依赖的代码还会发出 torch.jit 的弃用警告；导入期间把这些噪音压下去（真正的错误照常抛出）。"""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


@functools.cache
def _galore_classes() -> dict[str, type]:
    """导入 galore-torch（只在真用到 GaLore 时才导入这个约 250 MB 的依赖），返回两个可保存的优化器类。"""
    with _quiet_import("bitsandbytes"):
        import galore_torch  # 它的 __init__ 会连带导入 transformers 和 bitsandbytes
        from galore_torch.galore_projector import GaLoreProjector
    return {
        "galore_adamw": _saveable(galore_torch.GaLoreAdamW, "GaLoreAdamW", "galore_adamw", GaLoreProjector),
        "galore_adamw8bit": _saveable(galore_torch.GaLoreAdamW8bit, "GaLoreAdamW8bit", "galore_adamw8bit",
                                      GaLoreProjector),
    }


def _saveable(base: type, class_name: str, optim_name: str, projector_class: type) -> type:
    """给 galore-torch 的优化器补上“能存进检查点”的能力。

    galore-torch 把投影器（GaLoreProjector，一个普通 Python 对象）直接放在 optimizer.state 里。
    原样保存的话，torch.load(weights_only=True) 拒绝还原任意对象，续训就读不回来；
    丢掉它又会让续训后立刻用新梯度重算 SVD，与不中断的训练不再一致。
    所以保存时只存投影矩阵本身（一个张量，键 projector_matrix），读回时再装回投影器对象；
    投影器的其余设置（rank 等）本来就在参数组里。
    """

    class Saveable(base):
        def state_dict(self):
            state_dict = super().state_dict()
            state_dict["state"] = {index: _pack_projector(values) for index, values in state_dict["state"].items()}
            return state_dict

        def load_state_dict(self, state_dict):
            try:
                super().load_state_dict(state_dict)
            except (KeyError, ValueError) as error:
                raise _load_error(optim_name, error) from None
            for group in self.param_groups:
                if "rank" not in group:
                    continue
                for param in group["params"]:
                    values = self.state.get(param)
                    if values and "projector_matrix" in values:
                        projector = projector_class(group["rank"], update_proj_gap=group["update_proj_gap"],
                                                    scale=group["scale"], proj_type=group["proj_type"])
                        projector.ortho_matrix = _to_device(values.pop("projector_matrix"), param.device)
                        values["projector"] = projector

    Saveable.__name__ = Saveable.__qualname__ = class_name
    return Saveable


def _pack_projector(values: dict) -> dict:
    if "projector" not in values:
        return values
    packed = {key: value for key, value in values.items() if key != "projector"}  # 新 dict：不改动优化器本身
    packed["projector_matrix"] = values["projector"].ortho_matrix  # proj_type=full 时是两个矩阵的列表
    return packed


def _to_device(matrix, device):
    if isinstance(matrix, (list, tuple)):
        return [item.to(device) for item in matrix]
    return matrix.to(device) if matrix is not None else None


# ---------------------------------------------------------------------------
# 4. Muon：正交化的动量（torch.optim.Muon）+ AdamW
# ---------------------------------------------------------------------------
#
# Muon 对每个隐藏层矩阵：先做动量 B ← μB + G，再用几次 Newton–Schulz 迭代把 B 变成“近似正交”的矩阵 O
# （奇异值都拉到 1 附近，方向不变），W ← W - lr·O。直觉：梯度矩阵往往被少数几个大奇异方向主导，
# 正交化让每个方向都走相近的一步，那些“小而重要”的方向也学得动。它只存一份动量（AdamW 存两份）。
# Muon 只为二维的隐藏层矩阵设计；词向量、输出头、归一化层交给 AdamW —— 于是一次训练用两个优化器。

def _build_muon(model: torch.nn.Module, config: OptimConfig, device: torch.device) -> "MuonWithAdamW":
    muon_class = getattr(torch.optim, "Muon", None)
    if muon_class is None:
        raise TowerGPTError(
            f"optim.name=muon 需要 PyTorch ≥ 2.9（提供 torch.optim.Muon），当前是 {torch.__version__} / "
            f"optim.name=muon needs torch >= 2.9 (torch.optim.Muon); installed: {torch.__version__}"
        )
    hidden, rest = split_hidden_matrices(model)
    muon = muon_class(
        # lr 先填曲线的峰值 lr：group["lr"] 永远是“曲线上的值”，step() 时再乘 lr_scale
        [{"name": "muon", "params": [param for _, param in hidden], "lr_scale": config.muon_lr / config.lr}],
        lr=config.lr, weight_decay=config.muon_weight_decay, momentum=config.muon_momentum,
        nesterov=config.muon_nesterov, ns_steps=config.muon_ns_steps, adjust_lr_fn=config.muon_adjust_lr,
    )
    adamw = torch.optim.AdamW(
        _split_by_decay([param for _, param in rest], config.weight_decay), lr=config.lr,
        betas=(config.beta1, config.beta2), eps=config.eps, fused=device.type == "cuda",
    )
    return MuonWithAdamW(muon, adamw)


class MuonWithAdamW:
    """把 Muon（隐藏层矩阵）和 AdamW（其余参数）包成“一个”优化器。

    训练循环和 GradScaler 只用到优化器的这几样东西，这里都有：
        param_groups     两个优化器的参数组接在一起（就是它们自己的 dict，改 group["lr"] 直接生效）
        step()           Muon 的组临时把 lr 乘上 lr_scale 再更新，然后 AdamW 更新
        zero_grad()      两个都清
        state_dict()     {"muon": ..., "adamw": ...}：只有张量、数字和字符串，torch.load(weights_only=True) 可读
        state            两个优化器的状态合在一起（只读，用来数内存）
    fp16：GradScaler.unscale_ 按 param_groups 找梯度做反缩放、查 inf，scaler.step 在没有 inf 时调用 step()，
    所以 float16 + GradScaler 也能用；float32 / bfloat16 时 scaler 不启用，直接调用 step()。
    """

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw
        # lr_scale 以当前配置为准：续训时即使检查点里存的是旧值，也换回现在的 muon_lr / lr
        self.lr_scales = [group["lr_scale"] for group in muon.param_groups]

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scheduled = [group["lr"] for group in self.muon.param_groups]
        try:
            for group, lr in zip(self.muon.param_groups, scheduled):
                group["lr"] = lr * group["lr_scale"]
            self.muon.step()
        finally:  # 恢复成曲线上的值：日志、检查点里看到的 lr 与其他优化器一致
            for group, lr in zip(self.muon.param_groups, scheduled):
                group["lr"] = lr
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        if not isinstance(state_dict, dict) or set(state_dict) != {"muon", "adamw"}:
            raise _load_error("muon", "expected the keys 'muon' and 'adamw'")
        try:
            self.muon.load_state_dict(state_dict["muon"])
            self.adamw.load_state_dict(state_dict["adamw"])
        except (KeyError, ValueError) as error:
            raise _load_error("muon", error) from None
        for group, scale in zip(self.muon.param_groups, self.lr_scales):
            group["lr_scale"] = scale

    def __repr__(self) -> str:
        return f"MuonWithAdamW(\n{self.muon!r},\n{self.adamw!r}\n)"
