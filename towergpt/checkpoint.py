"""模型检查点的读写：`model.safetensors` + `config.json` + `tokenizer.model`（+ `checksums.json`）。

为什么用 safetensors 而不是 torch.save？torch.save 用 pickle，加载时可能执行任意代码；
safetensors 只存纯张量，加载既安全又快（可以直接内存映射）。

一个“运行目录”（run dir）里有 `checkpoints/step_XXXXXXXX/` 若干个检查点，和一个
`checkpoints/latest` 文本文件，里面写着最新检查点的目录名。凡是接受 `--ckpt` 的命令，
既可以给运行目录（自动取最新的检查点），也可以直接给某一个检查点目录。

校验和（`checksums.json`）：保存时最后写入，记下目录里每个文件的字节数和 sha256。
为什么需要它？磁盘坏道、拷贝到一半、同步工具只传了一部分……文件被截断或改写后，
safetensors 只能发现“文件头坏了”，权重区里翻转了几 KB 它照样读进来，训练就从一堆垃圾继续。
有了记录，载入前逐个文件核对，坏了就说清楚是哪个检查点、哪个文件。
没有 `checksums.json` 的老检查点照样能载入：只做能做的检查（safetensors 文件头、torch.load 的报错）。
代价：sha256 在开发机上约 1.2–1.5 GB/s（55 MB 的权重文件在页缓存里约 35–45 ms，冷读约 110 ms，
而这次读也顺便把文件读进了缓存，随后的载入就快了），所以每次载入都校验（见 docs/training.md）。
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as safetensors_load_file
from safetensors.torch import load_model as safetensors_load_model
from safetensors.torch import save_file as safetensors_save_file
from safetensors.torch import save_model as safetensors_save_model

from towergpt.errors import TowerGPTError, where
from towergpt.lora import adapter_tensors, apply_lora, has_lora, load_adapter_tensors, merge_lora
from towergpt.lora.files import is_lora_checkpoint, read_lora_info, write_lora_info
from towergpt.model import GPT, GPTConfig
from towergpt.tokenizer import Tokenizer

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST_FILE = "latest"
STATE_FILE = "trainer_state.pt"       # 只有训练写的检查点才有（优化器、随机数状态……），见 train/checkpointing.py
CHECKSUM_FILE = "checksums.json"

CHECKSUM_FORMAT = "towergpt-checksums"
_HASH_CHUNK = 1 << 20                 # 每次读 1 MiB 喂给 sha256：内存占用固定，速度已是最快（实测）


class DamagedCheckpointError(TowerGPTError):
    """检查点里的文件坏了（被截断、清空、内容被改写）。

    它是 TowerGPTError 的子类：命令行照样打印成一行。单独一个类，是为了让续训能认出
    “这个检查点坏了”，从而退回更早的完整检查点；别的错误（配置不对、文件可疑）则照常停下。
    """

    def __init__(self, directory: Path, problem: str):
        self.directory = Path(directory)
        super().__init__(f"检查点已损坏 / damaged checkpoint {self.directory}: {problem}")


# ---------------------------------------------------------------------------
# 找到要载入的检查点
# ---------------------------------------------------------------------------

def resolve_checkpoint(path: str | Path) -> Path:
    """把 `--ckpt` 的参数解析成一个具体的检查点目录。"""
    path = Path(path)
    if not path.exists():
        raise TowerGPTError(f"找不到检查点 / checkpoint not found: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for checkpoints_dir in (path / "checkpoints", path):
        target = read_latest(checkpoints_dir, required=(MODEL_FILE,))
        if target is not None:
            return target
    raise TowerGPTError(
        f"{path} 既不是检查点目录（缺 {MODEL_FILE}）也不是运行目录（缺 checkpoints/{LATEST_FILE}）/ "
        f"neither a checkpoint dir nor a run dir"
    )


def read_latest(checkpoints_dir: str | Path, required: typing.Iterable[str] = ()) -> Path | None:
    """checkpoints/latest 写着的那个检查点目录；没有 latest 文件时返回 None。

    读 latest 只有这一处：推理（resolve_checkpoint）和训练（train/checkpointing.py 的续训、保存）都调它。
    required 里的每个文件那个目录都必须有，少一个就报错（推理要权重，续训还要 trainer_state.pt）：
    与其载入到一半才失败，不如一开始就说清楚是哪个目录缺了文件。
    """
    pointer = Path(checkpoints_dir) / LATEST_FILE
    if not pointer.is_file():
        return None
    target = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not all((target / name).is_file() for name in required):
        raise TowerGPTError(f"{pointer} 指向的检查点不完整 / points to an incomplete checkpoint: {target}")
    return target


def older_checkpoints(directory: Path) -> list[Path]:
    """与 directory 同在一个 checkpoints/ 里、步数更小的检查点，新的在前（目录名补了 0，按字符串比较即可）。"""
    directory = Path(directory)
    parent = directory.parent
    if not parent.is_dir():
        return []
    siblings = [p for p in parent.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name < directory.name]
    return sorted(siblings, reverse=True)


# ---------------------------------------------------------------------------
# 保存
# ---------------------------------------------------------------------------

def save_model_files(model: GPT, tokenizer, directory: str | Path, checksums: bool = True) -> None:
    """把模型权重、模型配置和分词器写进 directory（目录需已存在或可创建）。

    checksums=True 时最后再写 checksums.json。训练保存检查点时还要多写 trainer_state.pt，
    所以它传 False，等所有文件写完再统一记录（校验和必须是最后一个写的文件）。
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    if has_lora(model):
        # LoRA：只存适配器（底座是冻结的，原样在底座检查点里），lora.json 记下底座是谁（见 lora/files.py）
        safetensors_save_file(adapter_tensors(model), str(directory / MODEL_FILE))
        write_lora_info(directory, model.lora)
    else:
        # save_model 会正确处理“输入词向量与输出头共用一份权重”这种共享张量
        safetensors_save_model(model, str(directory / MODEL_FILE))
    (directory / CONFIG_FILE).write_text(
        json.dumps(model.config.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    tokenizer.save(directory)
    if checksums:
        write_checksums(directory)


def file_sha256(path: Path) -> str:
    """按块读文件算 sha256（十六进制）。与命令行 `sha256sum 文件` 的结果相同，可以手工核对。"""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksums(directory: str | Path) -> Path:
    """给 directory 里的每个文件记下字节数和 sha256，写成 checksums.json。

    为什么两样都记？字节数不用读文件就能比，被截断的文件（最常见的损坏）一眼就能认出来；
    sha256 才能发现“大小没变、内容被改”的情况。
    """
    directory = Path(directory)
    files = {
        path.name: {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(directory.iterdir())
        if path.is_file() and path.name != CHECKSUM_FILE
    }
    manifest = {"format": CHECKSUM_FORMAT, "version": 1, "algorithm": "sha256", "files": files}
    path = directory / CHECKSUM_FILE
    path.write_text(json.dumps(manifest, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# 校验
# ---------------------------------------------------------------------------

def read_checksums(directory: Path) -> dict | None:
    """读 checksums.json，返回 {文件名: {"bytes", "sha256"}}；老检查点没有这个文件时返回 None。"""
    path = Path(directory) / CHECKSUM_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedCheckpointError(directory, f"{CHECKSUM_FILE} 无法读取 / unreadable: {one_line(error)}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(_valid_entry(entry) for entry in files.values()):
        raise DamagedCheckpointError(directory, f"{CHECKSUM_FILE} 内容不完整 / malformed")
    return files


def _valid_entry(entry) -> bool:
    return (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
            and isinstance(entry.get("bytes"), int) and not isinstance(entry.get("bytes"), bool))


def verify_checksums(directory: str | Path, only: typing.Iterable[str] | None = None,
                     skip: typing.Iterable[str] = ()) -> bool:
    """核对 checksums.json 里记录的文件（only 给出时只核对这几个，skip 里的跳过）。

    返回 True 表示核对过了，False 表示这是没有校验和的老检查点（什么也没核对）；
    任何一个文件不对都抛出 DamagedCheckpointError，指明是哪个文件、哪里不对。
    """
    directory = Path(directory)
    recorded = read_checksums(directory)
    if recorded is None:
        return False
    wanted = set(recorded) if only is None else set(only) & set(recorded)
    for name in sorted(wanted - set(skip)):
        _verify_file(directory, name, recorded[name])
    return True


def _verify_file(directory: Path, name: str, entry: dict) -> None:
    """先比字节数（不用读文件），再比 sha256。"""
    path = directory / name
    if not path.is_file():
        raise DamagedCheckpointError(directory, f"缺少 {name}（{CHECKSUM_FILE} 里有记录）/ {name} is missing")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise DamagedCheckpointError(
            directory, f"{name} 有 {size} 字节，保存时是 {entry['bytes']} 字节（被截断或改写）"
                       f" / {name} has {size} bytes, {entry['bytes']} when saved (truncated?)")
    if file_sha256(path) != entry["sha256"]:
        raise DamagedCheckpointError(
            directory, f"{name} 的 sha256 与 {CHECKSUM_FILE} 的记录不符（内容被改写）"
                       f" / {name} does not match its recorded sha256 (contents changed)")


# ---------------------------------------------------------------------------
# 模型配置
# ---------------------------------------------------------------------------

def read_config_json(config_path: Path) -> dict:
    """读一个模型的 config.json（TowerGPT 的或 HF 的）；缺文件、不是合法 JSON、顶层不是对象时说清楚。"""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TowerGPTError(f"缺少模型配置 / missing model config: {config_path}") from None
    except json.JSONDecodeError as error:
        raise TowerGPTError(f"{config_path}:{error.lineno} 不是合法 JSON / invalid JSON: {error.msg}") from None
    if not isinstance(raw, dict):
        raise TowerGPTError(f"{config_path}: 顶层应为 JSON 对象 / must be a JSON object")
    return raw


# 每个数值字段允许的范围：(检查, 中文说明, 英文说明)。
# 为什么要查？n_head 为 0 会在整除处崩溃、n_layer 为负会悄悄搭出一个空模型——都不如一句清楚的话。
_FIELD_RANGES = {
    "vocab_size": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "n_layer": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "n_head": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "n_kv_head": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "d_model": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "max_seq_len": (lambda v: v >= 1, "≥ 1", ">= 1"),
    "ffn_hidden": (lambda v: v >= 0, "≥ 0（0 表示自动）", ">= 0 (0 = automatic)"),
    "dropout": (lambda v: 0 <= v < 1, "在 [0, 1) 之间", "in [0, 1)"),
    "rope_theta": (lambda v: v > 0, "> 0", "> 0"),
    "norm_eps": (lambda v: v > 0, "> 0", "> 0"),
}
_TYPE_NAMES = {int: ("整数", "an integer"), float: ("数字", "a number"), bool: ("true 或 false", "true or false")}


def read_model_config(directory: str | Path) -> GPTConfig:
    """读 config.json；有未知字段、缺字段、类型不对或数值越界时给出清楚的错误（指明文件和字段）。"""
    config_path = Path(directory) / CONFIG_FILE
    raw = read_config_json(config_path)
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TowerGPTError(f"{config_path} 有未知字段 / unknown fields: {', '.join(unknown)}")
    values = {name: _checked_field(config_path, name, value) for name, value in raw.items()}
    try:
        return GPTConfig(**values)
    except (TypeError, ValueError) as error:
        raise TowerGPTError(f"{config_path} 配置无效 / invalid config: {error}") from None


def _checked_field(config_path: Path, name: str, value):
    """检查一个字段的类型和范围，返回可以交给 GPTConfig 的值（整数写成的浮点字段转成 float）。

    为什么不直接交给 GPTConfig？dataclass 不检查类型：n_layer 是字符串 "four" 时，
    要到搭模型的 range("four") 才报一个看不出是哪个文件的 TypeError。
    注意 Python 里 True 也是 int：整数字段要专门排除 bool。
    """
    expected = typing.get_type_hints(GPTConfig)[name]
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = {bool: isinstance(value, bool),
          int: is_number and isinstance(value, int),
          float: is_number and math.isfinite(value)}[expected]
    if not ok:
        cn, en = _TYPE_NAMES[expected]
        raise TowerGPTError(f"{where(config_path, field=name)} 应为{cn}，实际是 {json.dumps(value, ensure_ascii=False)}"
                            f" / must be {en}, got {type(value).__name__}")
    if expected is float:
        value = float(value)
    if name in _FIELD_RANGES:
        check, cn, en = _FIELD_RANGES[name]
        if not check(value):
            raise TowerGPTError(f"{where(config_path, field=name)} 应{cn}，实际是 {value} / must be {en}, got {value}")
    return value


# ---------------------------------------------------------------------------
# 载入
# ---------------------------------------------------------------------------

def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """从一个检查点目录（或运行目录）构造模型并载入权重，返回 eval 模式的模型。

    先核对校验和（trainer_state.pt 除外：生成、对话、服务用不到它，何必多读一个比权重还大的文件），
    坏了就说清楚，并指出同一运行里更早的检查点，用户可以用 --ckpt 换一个。
    """
    directory = resolve_checkpoint(directory)
    try:
        verify_checksums(directory, skip=(STATE_FILE,))
        if is_lora_checkpoint(directory):
            model = _load_lora_model(directory)
        else:
            model = GPT(read_model_config(directory))
            read_weights(model, directory / MODEL_FILE)
    except DamagedCheckpointError as error:
        raise DamagedCheckpointError(directory, _problem(error) + _older_hint(directory)) from None
    return model.to(device).eval()


def _load_lora_model(directory: Path) -> GPT:
    """LoRA 检查点：载入 lora.json 记下的底座（核对 sha256），装上适配器，合并成一个普通 GPT。"""
    info = read_lora_info(directory)
    base = Path(info.base_checkpoint)
    if not (base / MODEL_FILE).is_file():
        raise TowerGPTError(f"{directory / 'lora.json'}: 底座检查点 {base} 不见了；LoRA 检查点只有适配器，"
                            f"离开底座无法使用（可在底座还在时用 `towergpt lora merge` 合并成普通检查点）"
                            f" / the base checkpoint is missing")
    if weights_sha256(base) != info.base_sha256:
        raise TowerGPTError(f"{directory / 'lora.json'}: 底座 {base / MODEL_FILE} 的内容变了（sha256 不符），"
                            f"这些适配器是针对原来那份权重训练的 / the base weights changed since training")
    model = load_model(base)                # 底座本身也可以是 LoRA 检查点：递归地合并好
    apply_lora(model, info)
    read_weights(model, directory / MODEL_FILE)
    return merge_lora(model)


def weights_sha256(directory: Path) -> str:
    """检查点 model.safetensors 的 sha256：checksums.json 里有记录就用记录（不必再读一遍文件）。"""
    recorded = read_checksums(directory) or {}
    if MODEL_FILE in recorded:
        return recorded[MODEL_FILE]["sha256"]
    return file_sha256(Path(directory) / MODEL_FILE)


def load_model_weights(model: GPT, weights_path: Path) -> None:
    """把 safetensors 文件里的权重严格地载入 model（多一个、少一个都报错），载入前核对它的校验和。"""
    weights_path = Path(weights_path)
    verify_checksums(weights_path.parent, only=(weights_path.name,))
    read_weights(model, weights_path)


def read_weights(model: GPT, weights_path: Path) -> None:
    """只读权重、不核对校验和（调用者已经核对过）；文件坏了、与模型对不上都变成一行错误。

    装了 LoRA 的模型（续训一个 LoRA 运行）只读适配器：底座权重已经从底座检查点载入。
    """
    try:
        if has_lora(model):
            _check_same_base(model, weights_path.parent)
            load_adapter_tensors(model, safetensors_load_file(str(weights_path)), str(weights_path))
            return
        safetensors_load_model(model, str(weights_path), strict=True)
    except SafetensorError as error:
        # 截断、清空的文件：文件头读不完整（"header too small"、"file not fully covered"）
        raise DamagedCheckpointError(
            weights_path.parent, f"{weights_path.name} 无法解析 / cannot be parsed: {one_line(error)}") from None
    except (RuntimeError, ValueError) as error:
        # 文件本身完好，只是张量的名字或形状与模型结构不一致：不是“损坏”，是配错了
        raise TowerGPTError(f"{weights_path} 与 config.json 不匹配 / weights do not match: {one_line(error)}") from None


def _check_same_base(model, directory: Path) -> None:
    """续训 LoRA 时，检查点记下的底座必须就是这次载入的底座。"""
    if is_lora_checkpoint(directory) and read_lora_info(directory).base_sha256 != model.lora.base_sha256:
        raise TowerGPTError(f"{directory / 'lora.json'} 记下的底座与这次的 init_from 不是同一份权重"
                            f" / these adapters were trained on a different base checkpoint")


def load(path: str | Path, device: str | torch.device = "cpu"):
    """`towergpt.load(path) -> (model, tokenizer)`：path 是运行目录或检查点目录。"""
    directory = resolve_checkpoint(path)
    model = load_model(directory, device)
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TowerGPTError(
            f"{directory}: 分词器词表 ({tokenizer.vocab_size}) 大于模型词表 ({model.config.vocab_size}) / "
            f"tokenizer vocabulary larger than the model's"
        )
    return model, tokenizer


# ---------------------------------------------------------------------------
# 小工具
# ---------------------------------------------------------------------------

def _problem(error: DamagedCheckpointError) -> str:
    """DamagedCheckpointError 的消息去掉开头的“检查点已损坏 … 目录:”，只留下哪里坏了。"""
    return str(error).split(f"{error.directory}: ", 1)[-1]


def _older_hint(directory: Path) -> str:
    """坏的检查点旁边若还有更早的，告诉用户最近的那个（它本身有没有坏，要载入时才知道）。"""
    older = older_checkpoints(directory)
    if not older:
        return ""
    return f"；更早的检查点可用 --ckpt 指定 / an older checkpoint to try with --ckpt: {older[0]}"


def one_line(error: BaseException) -> str:
    """把多行的底层报错压成一行（torch 的报错常有好几段），太长就截断。"""
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """去掉 DDP 和 torch.compile 的外壳，拿到真正的 GPT（参数、子模块都是同一份）。

    训练时的包法是 DDP(compile(model))（train/distributed.py 的 wrap_model），所以先剥 DDP（.module），
    再剥 compile（._orig_mod）；只包了其中一层、或一层都没包的模型也照样对。
    """
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
