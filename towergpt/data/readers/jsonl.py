""".jsonl 读取器：每行一个 JSON 记录 / JSON Lines reader.

一行就是一条记录，必须整行读进来才能解析。
逐行解析，一行坏了只跳过这一行：坏 JSON、超长整数、嵌套太深、不是合法 UTF-8，都变成一条 BadRecord
（位置是 文件:行号），由外层按 skip_bad 决定报错还是跳过。
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from towergpt.data.readers.records import UTF8_BOM, BadRecord, Extract, Item, json_reason, utf8_reason
from towergpt.errors import where


def read_jsonl(path: Path, extract: Extract) -> Iterator[Item]:
    """JSON Lines：每行一个 JSON 记录，交给取值步骤 extract；空行跳过。"""
    for number, line in _iter_lines(path):
        if isinstance(line, BadRecord):
            yield line
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            yield BadRecord(where(path, number), json_reason(error, _column_of))
            continue
        # 便宜的子串检查：原始行里没有 "\u" 转义就不可能解析出孤立代理项，取值步骤可以省掉那次检查
        yield extract(record, number, where(path, number), "\\u" in line)


def _column_of(error: json.JSONDecodeError) -> tuple[str, str]:
    """JSONL 的一行就是一条记录：语法错误的位置说“第几列”。"""
    return f"第 {error.colno} 列", f"column {error.colno}"


def _iter_lines(path: Path) -> Iterator[tuple[int, str | BadRecord]]:
    """逐行产出 `(行号, 去掉换行符的行)`；不是合法 UTF-8 的行产出一条 BadRecord。

    为什么用二进制模式打开、再一行一行地解码？
        文本模式（open(..., encoding="utf-8")）是按几 KB 的块解码的，遇到坏字节时
        抛出的 UnicodeDecodeError 只知道“块里的第几个字节”，算不出是第几行。
        先按字节切行、再逐行严格解码（errors="strict"，默认值），坏字节的行号就一清二楚，
        而且一行坏了可以只跳过这一行。
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            try:
                line = raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as err:
                yield number, BadRecord(where(path, number), utf8_reason(err))
                continue
            # 只去掉行尾的一个换行（\n 或 Windows 的 \r\n），行内其余字符一个不动。
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            yield number, line

