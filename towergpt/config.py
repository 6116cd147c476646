"""训练配置：YAML 文件 + 命令行 `--set section.key=value` 覆盖，读成带类型的 dataclass。

一个配置文件有四节（外加 SFT/DPO 用的 init_from，以及只有 DPO 才读的 dpo 节）：

    model:  模型结构（见 model.GPTConfig）
    data:   数据目录（`towergpt data prepare` 的输出）
    train:  训练循环：步数、批大小、评估/保存频率、设备、精度……
    optim:  优化器与学习率曲线
    dpo:    偏好微调的 β、标签平滑、SFT 项权重（见 docs/dpo.md）
    lora:   LoRA 的秩、α、dropout、装在哪些矩阵上（sft / dpo / grpo；rank 0 = 不用，见 docs/lora.md）
    grpo:   强化学习：每组几个回答、奖励函数、裁剪、KL（见 docs/rl.md）

每个键都有默认值和说明（见下方各 dataclass 的注释，以及 docs/training.md）。
写错键名、类型不对、数值越界，都会得到一条指明“哪个文件第几行哪个键”的错误。
运行目录里会保存“解析后的完整配置” config.yaml，任何一次训练都可以原样复现。
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from towergpt.errors import TowerGPTError
from towergpt.lora.adapters import parse_targets
from towergpt.model import GPTConfig

PRESET_DIR = Path(__file__).parent / "configs"


@dataclass
class DataConfig:
    path: str = ""                 # `towergpt data prepare` 写出的目录
    eval_batches: int = 20         # 每次评估最多用多少个批次的验证集（0 = 全部）


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"  # 运行目录：检查点、metrics.jsonl、TensorBoard 日志都在这里
    max_steps: int = 1000          # 优化器更新的总步数（0 = 不限，只按 max_minutes 的时间预算）
    max_minutes: float = 0.0       # 时间预算（分钟，0 = 不用）：学习率曲线按已用时间走，到时保存并停止（见 train/budget.py）
    micro_batch_size: int = 8      # 每次前向的序列条数
    grad_accum: int = 1            # 梯度累积：累积几次前向再更新一次；等效批大小 = 两者之积
    eval_every: int = 100          # 每多少步评估一次验证集（0 = 只在结束时）
    save_every: int = 200          # 每多少步存一次检查点（0 = 只在结束时）
    keep_last: int = 3             # 只保留最近的几个检查点
    log_every: int = 10            # 每多少步写一行训练指标
    seed: int = 1337               # 随机种子：初始化、数据顺序、dropout 全由它决定
    device: str = "auto"           # auto / cpu / cuda / cuda:1 / mps
    dtype: str = "auto"            # auto / float32 / bfloat16 / float16（自动混合精度）
    compile: bool = False          # 用 torch.compile 编译模型（首次较慢，之后更快）
    threads: int = 0               # CPU 线程数（0 = PyTorch 默认）
    max_bad_steps: int = 5         # 连续多少步损失/梯度非有限值（NaN/inf）就保存并停止
    distributed: str = "ddp"       # 用 torchrun 多进程时的并行方式：ddp（数据并行）/ fsdp（参数分片）
    loss_chunk_tokens: int = 1024  # 输出层 + 交叉熵每块算多少个位置（不造出 B×T×V 的 logits，见 chunked_loss.py；0 = 整批一次算）
    activation_checkpointing: bool = False  # 每个 Transformer 块只存输入、反向时重算：省激活显存，多约 1/3 的计算


@dataclass
class OptimConfig:
    name: str = "adamw"            # 优化器：adamw / galore_adamw / galore_adamw8bit / muon（见 docs/optimizers.md）
    lr: float = 1e-3               # 峰值学习率（预热结束时达到）
    min_lr: float = 1e-4           # 余弦衰减的下限
    warmup_steps: int = 100        # 线性预热的步数
    weight_decay: float = 0.1      # 权重衰减，只作用于矩阵（不作用于归一化层的缩放参数）
    grad_clip: float = 1.0         # 梯度裁剪的全局范数上限（0 = 不裁剪）
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    # ---- GaLore（name = galore_adamw / galore_adamw8bit）：只作用于注意力和 MLP 的权重矩阵 ----
    galore_rank: int = 128               # 梯度投影到的低秩子空间的维数 r：Adam 的两份状态从 m×n 缩成 m×r（或 r×n）
    galore_update_proj_gap: int = 200    # 每隔多少步用当前梯度的 SVD 重新挑一次子空间（SVD 较贵，不能每步做）
    galore_scale: float = 0.25           # 低秩更新投影回原空间后乘的系数 α（GaLore 论文的默认值）
    galore_proj_type: str = "std"        # 从哪一侧投影：std（短边一侧，省得最多）/ reverse_std / left / right / full
    # ---- Muon（name = muon）：注意力和 MLP 的权重矩阵用 Muon，其余参数仍用 AdamW ----
    muon_lr: float = 0.005               # Muon 矩阵的峰值学习率；与 lr 走同一条预热 + 余弦曲线（按 muon_lr / lr 等比缩放）
    muon_momentum: float = 0.95          # 动量系数 μ：梯度的指数滑动平均
    muon_nesterov: bool = True           # 用 Nesterov 动量（先“往前看一步”再正交化）
    muon_ns_steps: int = 5               # Newton–Schulz 迭代次数：把更新矩阵近似正交化（1~99）
    muon_weight_decay: float = 0.0       # Muon 矩阵的解耦权重衰减（每步乘 1 - 实际lr·λ）；AdamW 部分仍用 weight_decay
    muon_adjust_lr: str = "original"     # 按矩阵形状调整步长：original（√max(1, 行/列)）/ match_rms_adamw（0.2·√max(行, 列)）


@dataclass
class DPOConfig:
    beta: float = 0.1              # β：隐式奖励 = β·(策略 − 参考模型的对数概率)；越大越不许偏离参考模型
    label_smoothing: float = 0.0   # 保守 DPO：假定每对标注有这么大的概率是反的（0 ≤ 值 < 0.5；0 = 标准 DPO）
    sft_weight: float = 0.0        # 另加在 chosen 回答上的 SFT 损失（每 token 的负对数似然）的权重（0 = 不加）


@dataclass
class GRPOConfig:
    group_size: int = 8            # G：每个提示词采样几个回答；优势 = 组内的相对好坏（见 docs/rl.md）
    max_new_tokens: int = 8        # 每个回答最多几个 token
    temperature: float = 1.0       # 采样温度；> 1 探索得更多。log 概率按同一温度算（被优化的就是这个“加温”的策略）
    clip_eps: float = 0.2          # 概率比 π/π_old 的裁剪范围 [1-ε, 1+ε]（PPO 的做法）
    kl_coef: float = 0.0           # 对冻结参考模型的 KL 惩罚系数 β（0 = 不加，也不必多做一次参考模型的前向）
    rewards: str = "sentiment"     # 奖励：内置名（sentiment / format）或 模块:函数，逗号分隔，可写权重 sentiment:1,format:0.1
    val_prompts: int = 64          # 从提示词文件里留出多少条做验证（贪心作答，val_reward/mean 即准确率）
    max_prompt_tokens: int = 0     # 渲染后超过这么多 token 的提示词跳过（0 = 只受上下文限制）；一批按最长的补齐，
                                   # 去掉少数很长的提示词，每步能快一倍（见 docs/rl.md）


@dataclass
class LoRAConfig:
    rank: int = 0                  # LoRA 的秩 r（0 = 不用 LoRA，全量微调）；sft / dpo / grpo 都认（见 docs/lora.md）
    alpha: float = 16.0            # 缩放系数 α：修正量乘 α / r；常取 r 的 1 到 2 倍
    dropout: float = 0.0           # 只作用于进入 LoRA 支路的输入（0 ≤ 值 < 1）
    targets: str = "qkv,out_proj,gate_proj,up_proj,down_proj"   # 装 LoRA 的矩阵（逗号分隔），名字同 model.py


@dataclass
class RunConfig:
    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    init_from: str = ""            # SFT / DPO：从哪个检查点（或运行目录）开始

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


SECTIONS = {"model": GPTConfig, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig, "dpo": DPOConfig,
            "lora": LoRAConfig, "grpo": GRPOConfig}


def resolve_config_path(name: str) -> Path:
    """`--config` 可以是文件路径，也可以是内置预设名（tiny / small / base）。"""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESET_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
    raise TowerGPTError(f"找不到配置文件 / config not found: {name}（内置预设 / presets: {presets}）")


def load_config(name: str, overrides: list[str] | None = None) -> RunConfig:
    """读配置文件（或预设），再依次应用 `section.key=value` 覆盖，返回校验过的 RunConfig。"""
    path = resolve_config_path(name)
    text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise TowerGPTError(f"{path}{line} 不是合法的 YAML / invalid YAML: {getattr(error, 'problem', error)}") from None
    if not isinstance(raw, dict):
        raise TowerGPTError(f"{path} 顶层必须是映射（model: / train: ...）/ top level must be a mapping")
    lines = _key_lines(text)
    for override in overrides or []:
        _apply_override(raw, override)
        lines[override.split("=", 1)[0].strip()] = f"--set {override}"  # 报错时指向命令行而非文件
    return build_config(raw, str(path), lines)


def build_config(raw: dict, source: str = "<config>", lines: dict | None = None) -> RunConfig:
    """由一个普通 dict 构造 RunConfig，检查每个键和值的类型。"""
    lines = lines or {}

    def where(key: str) -> str:
        place = lines.get(key)
        if isinstance(place, int):
            return f"{source}:{place} 键/key '{key}'"
        if isinstance(place, str):
            return f"{place} 键/key '{key}'"
        return f"{source} 键/key '{key}'"

    unknown = set(raw) - set(SECTIONS) - {"init_from"}
    if unknown:
        key = sorted(unknown)[0]
        raise TowerGPTError(f"{where(key)}: 未知的配置节 / unknown section（可用 / known: model, data, train, "
                            f"optim, dpo, lora, grpo, init_from）")
    sections = {}
    for name, cls in SECTIONS.items():
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise TowerGPTError(f"{where(name)}: 应为映射 / must be a mapping")
        sections[name] = _build_section(cls, name, values, where)
    init_from = raw.get("init_from") or ""
    if not isinstance(init_from, str):
        raise TowerGPTError(f"{where('init_from')}: 应为路径字符串 / must be a path string")
    config = RunConfig(init_from=init_from, **sections)
    _check_ranges(config, where)
    return config


def _build_section(cls, section: str, values: dict, where):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in values.items():
        full = f"{section}.{key}"
        if key not in known:
            raise TowerGPTError(f"{where(full)}: 未知的键 / unknown key（可用 / known: {', '.join(sorted(known))}）")
        kwargs[key] = _coerce(value, hints[key], where(full))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise TowerGPTError(f"{where(section)}: {error}") from None


def _coerce(value, expected, place: str):
    """按 dataclass 里声明的类型检查/转换一个值（int 可以当 float 用，其余必须类型一致）。"""
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:
            return float(value)  # YAML 把 "1e-3"（无小数点）读成字符串，这里宽容处理
        except ValueError:
            pass
    if expected is bool and not isinstance(value, bool):
        raise TowerGPTError(f"{place}: 应为 true/false，实际是 {value!r} / expected a boolean")
    if expected is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise TowerGPTError(f"{place}: 应为整数，实际是 {value!r} / expected an integer")
    if not isinstance(value, expected):
        raise TowerGPTError(f"{place}: 应为 {expected.__name__}，实际是 {value!r} / wrong type")
    return value


def _check_ranges(config: RunConfig, where) -> None:
    if config.train.max_steps < 0 or config.train.max_minutes < 0:
        raise TowerGPTError(f"{where('train.max_steps')}: max_steps 和 max_minutes 不能为负 / must not be negative")
    if config.train.max_steps == 0 and config.train.max_minutes == 0:
        raise TowerGPTError(f"{where('train.max_steps')}: 至少要给 max_steps 或 max_minutes 之一（都为 0 就永远不停）"
                            f" / set max_steps or max_minutes")
    positive = {
        "train.micro_batch_size": config.train.micro_batch_size,
        "train.grad_accum": config.train.grad_accum,
        "train.log_every": config.train.log_every,
        "model.max_seq_len": config.model.max_seq_len,
        "model.n_layer": config.model.n_layer,
    }
    for key, value in positive.items():
        if value < 1:
            raise TowerGPTError(f"{where(key)}: 必须 ≥ 1，实际是 {value} / must be at least 1")
    if config.optim.lr <= 0 or config.optim.min_lr < 0 or config.optim.min_lr > config.optim.lr:
        raise TowerGPTError(f"{where('optim.lr')}: 需要 0 ≤ min_lr ≤ lr 且 lr > 0 / need 0 <= min_lr <= lr, lr > 0")
    if config.train.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise TowerGPTError(f"{where('train.dtype')}: 只能是 auto / float32 / bfloat16 / float16")
    if config.train.distributed not in ("ddp", "fsdp"):
        raise TowerGPTError(f"{where('train.distributed')}: 只能是 ddp 或 fsdp / must be ddp or fsdp")
    if config.train.keep_last < 1:
        raise TowerGPTError(f"{where('train.keep_last')}: 必须 ≥ 1 / must be at least 1")
    _check_dpo(config.dpo, where)
    _check_lora(config.lora, config.train, where)
    _check_grpo(config.grpo, where)


def _check_grpo(grpo: GRPOConfig, where) -> None:
    """组里至少 2 个回答（1 个就没有“相对好坏”）；其余取值的范围。奖励名在 train/rewards.py 里解析。"""
    if grpo.group_size < 2:
        raise TowerGPTError(f"{where('grpo.group_size')}: 必须 ≥ 2：优势是组内比较出来的 / must be at least 2")
    if grpo.max_new_tokens < 1 or grpo.val_prompts < 0 or grpo.max_prompt_tokens < 0:
        raise TowerGPTError(f"{where('grpo.max_new_tokens')}: max_new_tokens ≥ 1、val_prompts ≥ 0、max_prompt_tokens ≥ 0"
                            f" / out of range")
    if not grpo.temperature > 0:
        raise TowerGPTError(f"{where('grpo.temperature')}: 必须 > 0（训练要采样）/ must be positive")
    if not 0 < grpo.clip_eps < 1 or grpo.kl_coef < 0:
        raise TowerGPTError(f"{where('grpo.clip_eps')}: 需要 0 < clip_eps < 1、kl_coef ≥ 0 / out of range")


def _check_lora(lora: LoRAConfig, train: TrainConfig, where) -> None:
    """秩非负（0 = 关闭）、α 为正、dropout 在 [0, 1)、目标层都认识；LoRA 暂不支持 FSDP（见 docs/lora.md）。"""
    if lora.rank < 0:
        raise TowerGPTError(f"{where('lora.rank')}: 必须 ≥ 0（0 = 不用 LoRA）/ must be >= 0 (0 = off)")
    if not lora.alpha > 0:
        raise TowerGPTError(f"{where('lora.alpha')}: 必须 > 0 / must be positive")
    if not 0.0 <= lora.dropout < 1.0:
        raise TowerGPTError(f"{where('lora.dropout')}: 需要 0 ≤ 值 < 1 / must be in [0, 1)")
    try:
        parse_targets(lora.targets)
    except ValueError as error:
        raise TowerGPTError(f"{where('lora.targets')}: {error}") from None
    if lora.rank and train.distributed == "fsdp":
        raise TowerGPTError(f"{where('lora.rank')}: LoRA 暂不支持 train.distributed=fsdp，请用 ddp（适配器很小，"
                            f"不需要分片）/ LoRA does not support fsdp yet; use ddp")


def _check_dpo(dpo: DPOConfig, where) -> None:
    """DPO 的三个超参数：β 为正；标签平滑在 [0, 0.5)（0.5 意味着“标注完全随机”，什么也学不到）；SFT 权重非负。"""
    if not 0.0 < dpo.beta < float("inf"):
        raise TowerGPTError(f"{where('dpo.beta')}: 必须 > 0（常用 0.1）/ must be positive (0.1 is typical)")
    if not 0.0 <= dpo.label_smoothing < 0.5:
        raise TowerGPTError(f"{where('dpo.label_smoothing')}: 需要 0 ≤ 值 < 0.5（0 = 标准 DPO）"
                            f" / must satisfy 0 <= value < 0.5 (0 = standard DPO)")
    if not 0.0 <= dpo.sft_weight < float("inf"):
        raise TowerGPTError(f"{where('dpo.sft_weight')}: 必须 ≥ 0（0 = 不加 SFT 项）/ must be >= 0 (0 = no SFT term)")


def _apply_override(raw: dict, override: str) -> None:
    """把 `train.max_steps=100` 写进 raw；值按 YAML 解析（100 是整数，true 是布尔，abc 是字符串）。"""
    if "=" not in override:
        raise TowerGPTError(f"--set {override}: 格式应为 section.key=value / expected section.key=value")
    key, text = (part.strip() for part in override.split("=", 1))
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    parts = key.split(".")
    if len(parts) == 1 and parts[0] == "init_from":
        raw["init_from"] = value
        return
    if len(parts) != 2:
        raise TowerGPTError(f"--set {override}: 键应为 section.key，例如 train.max_steps / expected section.key")
    section, name = parts
    if raw.get(section) is None:
        raw[section] = {}
    if not isinstance(raw[section], dict):
        raise TowerGPTError(f"--set {override}: 配置节 {section} 不是映射 / section is not a mapping")
    raw[section][name] = value


def _key_lines(text: str) -> dict[str, int]:
    """记下每个 `section.key` 在 YAML 文件里的行号（1 起），用于报错时指明位置。"""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        section = str(key_node.value)
        lines[section] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for inner_key, _ in value_node.value:
                lines[f"{section}.{inner_key.value}"] = inner_key.start_mark.line + 1
    return lines


def save_config(config: RunConfig, path: str | Path) -> None:
    """把解析后的完整配置写成 YAML（运行目录里的 config.yaml）。"""
    Path(path).write_text(
        yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
