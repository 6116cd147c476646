"""数据目录的磁盘格式：写的一方（prepare）和读的一方（三种数据集）共用的约定 / The on-disk format.

`towergpt data prepare` 写出一个数据目录（布局图见 data/prepare.py 开头）：
小端序的二进制 token 文件、损失掩码、索引，外加一份说明书 meta.json。
这个文件只放“两边都必须一致”的东西：

    1. 名字与类型：meta.json、tokenizer/、skipped.txt 这些文件名，token / 掩码 / 索引的 dtype，格式版本号；
    2. 读 meta.json：`load_meta` 一次说清楚“这不是数据目录 / 版本不对 / 种类不对”；
    3. 写 meta.json：三种数据共有的字段（分词器、dtype、划分参数），对话与偏好数据共有的布局字段；
    4. 打开数据文件：每个文件该有多少个数记在 meta.json 里，打开之前先核对文件大小。
       大小不对，说明文件被截断（拷贝中断、磁盘满）或被替换了，这时直接说清楚、建议重新 prepare，
       而不是让 np.memmap 读出一堆没有意义的数字。

为什么单独成一个文件？写的一方改了 dtype、读的一方没改，读出来的就是乱码 token，而且不会报错。
两边从同一处取这些约定，就不会各说各话。
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from towergpt.errors import TowerGPTError

# ---------------------------------------------------------------------------
# 1. 名字与类型
# ---------------------------------------------------------------------------

META_FILE = "meta.json"
SKIPPED_FILE = "skipped.txt"
TOKENIZER_SUBDIR = "tokenizer"

# 数据目录格式的版本号。以后改了文件布局就把它加一，读取端据此给出清楚的报错，
# 而不是把新格式的文件当旧格式读，得到一堆乱码 token。
FORMAT_VERSION = 1

# 支持的数据种类
FORMATS = ("pretrain", "sft", "dpo")

# 每种数据都分成这两个划分
SPLITS = ("train", "val")

# 对话数据里损失掩码和索引的存储类型（固定小端序）
MASK_DTYPE = np.dtype("u1")
INDEX_DTYPE = np.dtype("<i8")


def token_dtype(vocab_size: int) -> np.dtype:
    """选择存 token id 的整数类型：词表不超过 65536 用 uint16（每个 token 2 字节），否则 uint32。

    uint16 能表示 0..65535，正好 65536 个 id。中文小模型的词表通常是几千到几万，
    用 uint16 比 uint32 省一半磁盘和内存带宽。明确写成小端序（'<'），
    这样在任何机器上写出的文件都一样，读取端也按小端序解释。
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


# ---------------------------------------------------------------------------
# 2. 读 meta.json
# ---------------------------------------------------------------------------

def load_meta(data_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """读取并检查数据目录里的 meta.json；kind 给出时还要求种类匹配（例如 "pretrain"）。

    训练脚本拿到的 `data.path` 可能写错（指向语料文件、指向分词器目录、旧版本的数据……），
    在这里一次说清楚，而不是让 np.memmap 读出一堆没有意义的数字。
    """
    data_dir = Path(data_dir)
    meta_path = data_dir / META_FILE
    hint = "请先运行 towergpt data prepare / run `towergpt data prepare` first"
    if not data_dir.is_dir():
        raise TowerGPTError(f"数据目录不存在 / data directory not found: {data_dir}（{hint}）")
    if not meta_path.is_file():
        raise TowerGPTError(
            f"{data_dir} 不是 `towergpt data prepare` 写出的数据目录（缺少 {META_FILE}）"
            f" / not a prepared data directory (no {META_FILE}); {hint}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TowerGPTError(f"{meta_path}: 无法读取 / unreadable: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise TowerGPTError(
            f"{meta_path}: 数据格式版本是 {version}，本程序只认识 {FORMAT_VERSION}，请用当前版本重新 prepare"
            f" / format version {version}, expected {FORMAT_VERSION}: prepare the data again"
        )
    if kind is not None and meta.get("kind") != kind:
        raise TowerGPTError(
            f"{meta_path}: 这是 {meta.get('kind')!r} 数据，这里需要 {kind!r}（prepare 时用 --format {kind}）"
            f" / holds {meta.get('kind')!r} data, expected {kind!r} (prepare with --format {kind})"
        )
    return meta


def prepare_command(kind: str) -> str:
    """重新生成 kind 种数据（"pretrain"、"sft"、"dpo"）的命令；预训练是默认格式，不必写 --format。"""
    return "towergpt data prepare" if kind == "pretrain" else f"towergpt data prepare --format {kind}"


# ---------------------------------------------------------------------------
# 3. 写 meta.json：各种数据共有的字段
# ---------------------------------------------------------------------------

def common_meta(tokenizer, kind: str, dtype: np.dtype, val_fraction: float, seed: int, shard_tokens: int) -> dict:
    """三种数据的 meta.json 共有的字段：格式版本、种类、分词器是哪一个、token 怎么存、划分参数。"""
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "dtype": dtype.name,             # "uint16" 或 "uint32"，字节序固定为小端
        "byte_order": "little",
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }


def record_layout(tokenizer, max_seq_len: int) -> dict:
    """对话与偏好数据的 meta.json 共有的字段。"""
    return {
        "max_seq_len": max_seq_len,      # 每条序列至多 max_seq_len + 1 个 token
        "im_start_id": tokenizer.im_start_id,
        "im_end_id": tokenizer.im_end_id,
        "mask_dtype": MASK_DTYPE.name,   # "uint8"：1 = 这个 token 算损失
        "index_dtype": "int64",          # 即 INDEX_DTYPE（小端）
    }


# ---------------------------------------------------------------------------
# 4. 打开数据文件（三种数据集共用）
# ---------------------------------------------------------------------------

def check_dataset_args(split: str, seq_len: int, rank: int, world_size: int) -> None:
    """三种数据集共用的参数检查。"""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if seq_len < 1:
        raise TowerGPTError(f"序列长度必须是正整数 / seq_len must be positive, got {seq_len}")
    if not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")


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
