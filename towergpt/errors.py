"""用户可以改正的错误 / Errors a user can fix.

凡是“用户给错了东西”（文件不存在、某行 JSON 坏了、词表太大……）都抛出 `TowerGPTError`，
命令行在最外层把它打印成一行清楚的中文+英文说明，而不是一大串 traceback。
程序自身的 bug 则照常抛出普通异常，方便开发者调试。
"""

from __future__ import annotations


class TowerGPTError(Exception):
    """一条给用户看的错误：说清楚哪个文件、哪一行、哪个字段、怎么改。"""


def where(path, line: int | None = None, field: str | None = None) -> str:
    """拼出错误位置，例如 `data.jsonl:17 字段 'text'`。"""
    text = str(path)
    if line is not None:
        text += f":{line}"
    if field is not None:
        text += f" 字段/field '{field}'"
    return text
