"""三种数据集（预训练、SFT、DPO）共用的小工具：检查参数、核对 prepare 写出的文件、只读地映射成数组。

`towergpt data prepare` 把 token、损失掩码、索引写成小端序的二进制文件，每个文件该有多少个数
记在 meta.json 里。打开之前先核对文件大小：大小不对，说明文件被截断（拷贝中断、磁盘满）或被替换了，
这时直接说清楚、建议重新 prepare，而不是让 np.memmap 读出一堆没有意义的数字。
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from towergpt.errors import TowerGPTError

SPLITS = ("train", "val")


def check_dataset_args(split: str, seq_len: int, rank: int, world_size: int) -> None:
    """三种数据集共用的参数检查。"""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seq_len < 1:
        raise TowerGPTError(f"序列长度必须是正整数 / seq_len must be positive, got {seq_len}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


def prepare_command(kind: str) -> str:
    """重新生成 kind 种数据（"pretrain"、"sft"、"dpo"）的命令；预训练是默认格式，不必写 --format。"""
    return "towergpt data prepare" if kind == "pretrain" else f"towergpt data prepare --format {kind}"


def check_file_size(path: Path, expected: int, kind: str) -> None:
    """文件不见了或大小（字节）与 meta.json 记录的不符时，说清楚并建议重新 prepare。"""
    command = prepare_command(kind)
    if not path.is_file():
        raise TowerGPTError(
            f"{path}: 文件不见了，数据目录不完整，请重新运行 {command}"
            f" / file missing: the data directory is incomplete, run `{command}` again"
        )
    actual = path.stat().st_size
    if actual != expected:
        state = "被截断了 / is truncated" if actual < expected else "比记录的大 / is larger than recorded"
        raise TowerGPTError(
            f"{path}: 文件大小 {actual:,} 字节，meta.json 记录应为 {expected:,} 字节，文件{state}；"
            f"请重新运行 {command}"
            f" / file size {actual:,} bytes but meta.json expects {expected:,}: run `{command}` again"
        )


def open_memmap(path: Path, dtype_name: str, count: int, kind: str) -> np.memmap:
    """先核对大小，再只读地把文件映射成长 count 的一维数组（访问哪段，操作系统才从磁盘读哪段）。"""
    dtype = np.dtype(dtype_name).newbyteorder("<")  # prepare 总是写小端序
    check_file_size(path, int(count) * dtype.itemsize, kind)
    return np.memmap(path, dtype=dtype, mode="r", shape=(int(count),))
