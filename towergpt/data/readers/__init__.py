"""语料读取器：把 .txt / .jsonl / .json / .parquet 文件流式地读成一条条文本或记录。

为什么要“流式”（streaming）？
    预训练语料动辄几个 GB，甚至几十 GB。如果 `json.load(f)` 一口气读进内存，
    小机器会直接被撑爆。这里的每个读取器都一边读一边产出（`yield`），
    任何时刻内存里只有“当前这一行 / 这一条记录 / 这一批行”，和文件大小无关。

两个出口：
    `iter_texts(path, field)`  产出 `(编号, 文本)`，给预训练用；
    `iter_records(path)`       产出 `(编号, 整条记录 dict)`，给对话（SFT）、偏好（DPO）数据用。
两者共用同一套“逐行 / 流式解析 + 坏记录处理”的代码，区别只在最后一步“从一条记录里取什么”
（取一个文本字段，还是要整个对象）——这一步是可替换的（见 records.py 的 `TextField` 和 `whole_object`）。

编号的含义：
    - .txt     编号是这一段（文档）第一行的行号；
    - .jsonl   编号是行号；
    - .json    编号是它在数组里的序号（从 1 开始），报错时说“记录/record N”，原因里再附上行号；
    - .parquet 编号是行序号（从 1 开始）。

出错时的原则：用户一眼就能知道是哪个文件、哪一行、哪个字段、为什么错、怎么改。
所以所有用户造成的错误都变成一条 `TowerGPTError`，而不是一长串 traceback。
对于海量“网上扒来的”语料，坏记录在所难免：`skip_bad=True` 时，坏记录不会中断读取，
而是交给回调 `on_bad(位置, 原因)` 记下来，然后跳过。

这个包里一种格式一个文件，这里只有对外接口（按扩展名分派、坏记录报错还是跳过）：
    records.py     共用：坏记录 BadRecord、取值步骤、把错误讲成人话（json_type_name、describe_keys）
    txt.py         .txt：空行分段，超长的行按句末切开，按片读、内存有界
    jsonl.py       .jsonl：逐行解析
    fast_json.py   可选的 orjson 快路径：它拿得准的行才用它，其余交给 json，报错与以前相同
    json_array.py  .json：数组里的元素一个一个地流式解析
    parquet.py     .parquet：一批一批地读列（需要 pyarrow）
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from towergpt.data.readers.json_array import read_json_array
from towergpt.data.readers.jsonl import read_jsonl
from towergpt.data.readers.parquet import read_parquet_column, read_parquet_rows
from towergpt.data.readers.records import BadRecord, Item, OnBad, TextField, describe_keys, json_type_name, whole_object
from towergpt.data.readers.txt import read_txt
from towergpt.errors import TowerGPTError, where

__all__ = ["SUPPORTED_SUFFIXES", "OnBad", "check_input", "iter_texts", "iter_records", "record_location",
           "json_type_name", "describe_keys"]

# 支持的扩展名。扩展名决定怎么解析文件，所以未知扩展名直接报错，而不是“猜”。
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


# ---------------------------------------------------------------------------
# 对外接口
# ---------------------------------------------------------------------------

def check_input(path: str | os.PathLike) -> Path:
    """检查语料文件存在、是普通文件、扩展名受支持；返回 Path。出错抛 TowerGPTError。

    训练分词器等长任务会在开始前先检查所有输入，免得读了半小时才发现最后一个文件名打错了。
    """
    path = Path(path)
    if not path.exists():
        raise TowerGPTError(f"找不到文件 / file not found: {path}")
    if path.is_dir():
        raise TowerGPTError(f"{path} 是目录，请给出具体的语料文件 / is a directory, expected a file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        supported = " ".join(SUPPORTED_SUFFIXES)
        raise TowerGPTError(
            f"{path}: 不认识的扩展名 '{path.suffix}'，支持 {supported}"
            f" / unknown file extension '{path.suffix}', supported: {supported}"
        )
    return path


def iter_texts(
    path: str | os.PathLike,
    field: str = "text",
    skip_bad: bool = False,
    on_bad: OnBad | None = None,
) -> Iterator[tuple[int, str]]:
    """流式读取一个语料文件，逐条产出 `(编号, 文本)`。

    参数:
        path:     .txt / .jsonl / .json / .parquet 文件。
        field:    JSON 记录里（或 Parquet 里）存放文本的字段名 / 列名，默认 "text"；.txt 不用它。
        skip_bad: False（默认）时遇到坏记录立即抛 TowerGPTError；True 时跳过坏记录，
                  并调用 `on_bad(位置, 原因)`（如果给了的话），让调用者统计或打印。
        on_bad:   见上。

    空字符串会照常产出（由调用者决定要不要计数、丢弃），不会被悄悄吞掉。
    文件不存在、扩展名未知等问题在调用时立即报错（而不是等到第一次迭代）。
    """
    path = check_input(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        items = read_txt(path)
    elif suffix == ".parquet":
        items = read_parquet_column(path, field)
    elif suffix == ".jsonl":
        # 只取一个字符串字段：可以先试 orjson（装了的话），结果与 json 逐字相同（为什么只在这里用，见 fast_json.py）
        items = read_jsonl(path, TextField(field), fast=True)
    else:
        items = read_json_array(path, TextField(field))
    return _handle_bad_records(items, skip_bad, on_bad)


def iter_records(
    path: str | os.PathLike,
    skip_bad: bool = False,
    on_bad: OnBad | None = None,
) -> Iterator[tuple[int, dict]]:
    """流式读取一个结构化数据文件，逐条产出 `(编号, 整条记录)`，记录是一个 dict。

    用于对话、偏好这类“一条记录有好几个字段”的数据：
        .jsonl    每行一个 JSON 对象，编号是行号；
        .json     JSON 数组里的每个对象（流式解析），编号是序号（从 1 开始）；
        .parquet  每一行变成 {列名: 值}（嵌套的列表、结构体变成 list / dict），编号是行序号。
    不是对象的记录（数组、字符串、数字……）、坏 JSON、非 UTF-8 的行都是坏记录，
    按 skip_bad / on_bad 处理，规则与 `iter_texts` 相同。`record_location(path, 编号)` 给出报错用的位置。
    纯文本 .txt 表达不了“谁说了什么”，直接报错。
    """
    path = check_input(path)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        raise TowerGPTError(
            f"{path}: 对话数据必须是 JSON / JSONL / Parquet（每条记录一段对话），纯文本分不出谁说了什么"
            f" / dialogue data must be JSON/JSONL/Parquet (one conversation per record), not plain text"
        )
    if suffix == ".parquet":
        items = read_parquet_rows(path)
    else:
        items = _JSON_READERS[suffix](path, whole_object)
    return _handle_bad_records(items, skip_bad, on_bad)


def record_location(path: str | os.PathLike, number: int) -> str:
    """`iter_records` / `iter_texts` 产出的编号 -> 给人看的位置：`a.jsonl:17`、`a.json 记录/record 17`、`a.parquet 行/row 17`。"""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return f"{path} 记录/record {number}"
    if suffix == ".parquet":
        return f"{path} 行/row {number}"
    return where(path, number)


def _handle_bad_records(items: Iterator[Item], skip_bad: bool, on_bad: OnBad | None) -> Iterator[tuple[int, str]]:
    """把读取器产出的坏记录变成报错或回调，好记录原样交出。"""
    for item in items:
        if not isinstance(item, BadRecord):
            yield item
        elif skip_bad:
            if on_bad is not None:
                on_bad(item.location, item.reason)
        else:
            raise TowerGPTError(f"{item.location}: {item.reason}")


# JSON 类扩展名 -> 读取器（把文件切成一条条 JSON 记录）；取值步骤由调用者传入。
_JSON_READERS = {
    ".jsonl": read_jsonl,
    ".json": read_json_array,
}
