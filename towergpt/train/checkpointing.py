"""检查点：原子地写入、只保留最近 K 个、断点续训。

一个检查点目录 `checkpoints/step_00001000/` 里有：
    model.safetensors   模型权重（不经 pickle，加载安全）
    config.json         模型结构
    tokenizer.model     分词器（检查点自带，单独拿走也能用）
    trainer_state.pt    优化器、GradScaler、随机数状态、数据读到哪里、第几步……
`checkpoints/latest` 是一个文本文件，写着最新检查点的目录名。

为什么“先写临时目录再改名”？写几百 MB 文件的中途可能断电、被 kill。
rename 在同一文件系统上是原子操作：要么完全是旧的，要么完全是新的，
所以 latest 永远不会指向一个写了一半的检查点。
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from towergpt.checkpoint import LATEST_FILE, MODEL_FILE, load_model_weights, save_model_files
from towergpt.errors import TowerGPTError

STATE_FILE = "trainer_state.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, trainer_state: dict, keep_last: int) -> Path:
    """写第 step 步的检查点，更新 latest，删掉多余的旧检查点。返回检查点目录。"""
    checkpoints = Path(run_dir) / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    final = checkpoints / checkpoint_name(step)
    temporary = checkpoints / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)

    save_model_files(model, tokenizer, temporary)
    torch.save(trainer_state, temporary / STATE_FILE)
    _fsync_dir(temporary)

    if final.exists():  # 续训后重新到达同一步：用新的替换旧的
        shutil.rmtree(final)
    os.replace(temporary, final)
    _write_atomically(checkpoints / LATEST_FILE, final.name + "\n")
    _prune(checkpoints, keep_last, keep=final.name)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """运行目录里最新的完整检查点；没有则返回 None。"""
    pointer = Path(run_dir) / "checkpoints" / LATEST_FILE
    if not pointer.is_file():
        return None
    directory = pointer.parent / pointer.read_text(encoding="utf-8").strip()
    if not (directory / MODEL_FILE).is_file() or not (directory / STATE_FILE).is_file():
        raise TowerGPTError(f"{pointer} 指向的检查点不完整 / latest points to an incomplete checkpoint: {directory}")
    return directory


def load_checkpoint(directory: Path, model) -> dict:
    """把权重载入 model，返回训练状态 dict（weights_only=True：不执行任何 pickle 代码）。"""
    load_model_weights(model, directory / MODEL_FILE)
    return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _fsync_dir(directory: Path) -> None:
    """把目录里的文件真正刷到磁盘上（否则断电后“改名成功”而内容还在缓存里）。"""
    for file in directory.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


def _prune(checkpoints: Path, keep_last: int, keep: str) -> None:
    """只保留最近的 keep_last 个检查点（以及 latest 指向的那个），并清理残留的临时目录。"""
    steps = sorted(p for p in checkpoints.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in steps[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
    for leftover in checkpoints.glob(".tmp-*"):
        if not leftover.name.endswith(f"-{os.getpid()}"):
            shutil.rmtree(leftover, ignore_errors=True)
