""".jsonl 读取器：每行一个 JSON 记录 / JSON Lines reader.

一行就是一条记录，必须整行读进来才能解析。
逐行解析，一行坏了只跳过这一行：坏 JSON、超长整数、嵌套太深、不是合法 UTF-8，都变成一条 BadRecord
（位置是 文件:行号），由外层按 skip_bad 决定报错还是跳过。
装了 orjson 时，预训练的文本读取先试它（快一倍），它拿不准的行才走这里的慢路径，结果相同（见 fast_json.py）。
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from towergpt.data.readers import fast_json
from towergpt.data.readers.records import UTF8_BOM, BadRecord, Extract, Item, json_reason, utf8_reason
from towergpt.errors import where


def read_jsonl(path: Path, extract: Extract, fast: bool = False) -> Iterator[Item]:
    """JSON Lines：每行一个 JSON 记录，交给取值步骤 extract；空行跳过。

    fast=True（预训练的文本字段读取这样用）且装了 orjson 时，每行先交给 orjson（见 fast_json.py）：
    它收下的行直接用它的结果；它拒绝或拿不准的行（坏 JSON、非 UTF-8、孤立代理项、空行……）
    走下面以前的慢路径，报错和跳过与不装 orjson 时逐字相同。
    """
    parse_fast = fast_json.parse_line if fast and fast_json.AVAILABLE else None
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if parse_fast is not None:
                record = parse_fast(raw)
                if record is not fast_json.UNSURE:
                    # orjson 收下的记录里不可能有孤立代理项（它拒绝 "\\ud800"），取值步骤不必再查：“可能含转义”= False
                    yield extract(record, number, where(path, number), False)
                    continue
            item = _read_line(path, number, raw, extract)
            if item is not None:
                yield item


def _read_line(path: Path, number: int, raw: bytes, extract: Extract) -> Item | None:
    """慢路径：一行原始字节 -> 一条记录或一条 BadRecord；空行返回 None。

    为什么用二进制模式打开、再一行一行地解码？
        文本模式（open(..., encoding="utf-8")）是按几 KB 的块解码的，遇到坏字节时
        抛出的 UnicodeDecodeError 只知道“块里的第几个字节”，算不出是第几行。
        先按字节切行、再逐行严格解码（errors="strict"，默认值），坏字节的行号就一清二楚，
        而且一行坏了可以只跳过这一行。
    """
    try:
        line = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as err:
        return BadRecord(where(path, number), utf8_reason(err))
    # 只去掉行尾的一个换行（\n 或 Windows 的 \r\n），行内其余字符一个不动。
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except (ValueError, RecursionError) as error:
        return BadRecord(where(path, number), json_reason(error, _column_of))
    # 便宜的子串检查：原始行里没有 "\u" 转义就不可能解析出孤立代理项，取值步骤可以省掉那次检查
    return extract(record, number, where(path, number), "\\u" in line)


def _column_of(error: json.JSONDecodeError) -> tuple[str, str]:
    """JSONL 的一行就是一条记录：语法错误的位置说“第几列”。"""
    return f"第 {error.colno} 列", f"column {error.colno}"
