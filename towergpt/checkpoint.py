"""模型检查点的读写：`model.safetensors` + `config.json` + `tokenizer.model`。

为什么用 safetensors 而不是 torch.save？torch.save 用 pickle，加载时可能执行任意代码；
safetensors 只存纯张量，加载既安全又快（可以直接内存映射）。

一个“运行目录”（run dir）里有 `checkpoints/step_XXXXXXXX/` 若干个检查点，和一个
`checkpoints/latest` 文本文件，里面写着最新检查点的目录名。凡是接受 `--ckpt` 的命令，
既可以给运行目录（自动取最新的检查点），也可以直接给某一个检查点目录。
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_model as safetensors_load_model
from safetensors.torch import save_model as safetensors_save_model

from towergpt.errors import TowerGPTError
from towergpt.model import GPT, GPTConfig

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LATEST_FILE = "latest"


def resolve_checkpoint(path: str | Path) -> Path:
    """把 `--ckpt` 的参数解析成一个具体的检查点目录。"""
    path = Path(path)
    if not path.exists():
        raise TowerGPTError(f"找不到检查点 / checkpoint not found: {path}")
    if (path / MODEL_FILE).is_file():
        return path
    for checkpoints_dir in (path / "checkpoints", path):
        pointer = checkpoints_dir / LATEST_FILE
        if pointer.is_file():
            target = checkpoints_dir / pointer.read_text(encoding="utf-8").strip()
            if not (target / MODEL_FILE).is_file():
                raise TowerGPTError(f"{pointer} 指向的检查点不完整 / points to an incomplete checkpoint: {target}")
            return target
    raise TowerGPTError(
        f"{path} 既不是检查点目录（缺 {MODEL_FILE}）也不是运行目录（缺 checkpoints/{LATEST_FILE}）/ "
        f"neither a checkpoint dir nor a run dir"
    )


def save_model_files(model: GPT, tokenizer, directory: str | Path) -> None:
    """把模型权重、模型配置和分词器写进 directory（目录需已存在或可创建）。"""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # save_model 会正确处理“输入词向量与输出头共用一份权重”这种共享张量
    safetensors_save_model(_unwrap(model), str(directory / MODEL_FILE))
    (directory / CONFIG_FILE).write_text(
        json.dumps(model.config.to_dict(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    tokenizer.save(directory)


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


def read_model_config(directory: str | Path) -> GPTConfig:
    """读 config.json；有未知字段或缺字段时给出清楚的错误。"""
    config_path = Path(directory) / CONFIG_FILE
    raw = read_config_json(config_path)
    known = {f.name for f in fields(GPTConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise TowerGPTError(f"{config_path} 有未知字段 / unknown fields: {', '.join(unknown)}")
    try:
        return GPTConfig(**raw)
    except (TypeError, ValueError) as error:
        raise TowerGPTError(f"{config_path} 配置无效 / invalid config: {error}") from None


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> GPT:
    """从一个检查点目录（或运行目录）构造模型并载入权重，返回 eval 模式的模型。"""
    directory = resolve_checkpoint(directory)
    model = GPT(read_model_config(directory))
    try:
        load_model_weights(model, directory / MODEL_FILE)
    except RuntimeError as error:
        raise TowerGPTError(f"{directory / MODEL_FILE} 与 config.json 不匹配 / weights do not match: {error}") from None
    return model.to(device).eval()


def load_model_weights(model: GPT, weights_path: Path) -> None:
    """把 safetensors 文件里的权重严格地载入 model（多一个、少一个都报错）。"""
    safetensors_load_model(model, str(weights_path), strict=True)


def load(path: str | Path, device: str | torch.device = "cpu"):
    """`towergpt.load(path) -> (model, tokenizer)`：path 是运行目录或检查点目录。"""
    from towergpt.tokenizer import Tokenizer

    directory = resolve_checkpoint(path)
    model = load_model(directory, device)
    tokenizer = Tokenizer.load(directory)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TowerGPTError(
            f"{directory}: 分词器词表 ({tokenizer.vocab_size}) 大于模型词表 ({model.config.vocab_size}) / "
            f"tokenizer vocabulary larger than the model's"
        )
    return model, tokenizer


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """去掉 torch.compile / DDP 的外壳，拿到真正的 GPT。"""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
