"""读取器共用的部分：坏记录、“取值步骤”、把错误讲成人话 / What every reader shares.

每个读取器（txt.py、jsonl.py、json_array.py、parquet.py）只负责“把文件切成一条条记录”，
遇到问题不直接 raise，而是产出一条 `BadRecord`（位置 + 原因），由外层（readers/__init__.py 的
`iter_texts` / `iter_records`）按 skip_bad 决定报错还是跳过。

JSON 类的读取器切出一条记录后，交给一个“取值步骤”（Extract）决定要什么：
    TextField(字段名)  预训练：取出一个字符串字段（不是对象、缺字段、不是字符串、孤立代理项都是坏记录）
    whole_object       对话、偏好数据：要整条记录，只要求它是一个对象
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Union

# UTF-8 的 BOM（字节顺序标记）。Windows 记事本存 UTF-8 时常在文件开头加这 3 个字节，
# 它不是文本内容，如果不去掉，第一条 JSON 会解析失败、第一段文本会多出一个隐形字符。
UTF8_BOM = b"\xef\xbb\xbf"

# on_bad 回调的类型：on_bad(位置, 原因)，例如 on_bad("a.jsonl:17", "不是合法的 JSON ...")
OnBad = Callable[[str, str], None]


@dataclass
class BadRecord:
    """一条坏记录：由各读取器产出，由 `iter_texts` / `iter_records` 决定是报错还是跳过。

    为什么不在读取器里直接 raise？因为“坏记录怎么处理”是调用者的选择（skip_bad），
    读取器只负责发现问题、说清楚位置和原因，把决定权交给外层，各读取器就不必各写一遍 if。
    """

    location: str
    reason: str


# 读取器产出的东西：要么是正常的 (编号, 文本或记录)，要么是一条坏记录。
Item = Union[tuple[int, object], BadRecord]

# “取值步骤”：extract(记录, 编号, 位置, 可能含转义) -> Item。
# JSONL 和 JSON 数组的读取器负责“把文件切成一条条 JSON 记录”，取值步骤负责“从记录里拿出要的东西”。
# 位置形如 "a.jsonl:17" 或 "a.json 记录/record 17"，取值步骤在报错时可以再接上字段名。
# “可能含转义”：原文里出现过 "\u" 时为 True，见 `TextField` 里孤立代理项的检查。
Extract = Callable[[object, int, str, bool], Item]


# ---------------------------------------------------------------------------
# 1. 取值步骤：一条 JSON 记录 -> 要的东西
# ---------------------------------------------------------------------------

class TextField:
    """取值步骤：从一条 JSON 记录里取出 `field` 对应的字符串；任何不对劲都变成一条说清楚原因的 BadRecord。"""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, record, number: int, location: str, maybe_escaped: bool) -> Item:
        field = self.field
        # 最常见的情况先走：一个对象，字段是字符串（每条记录都要过这里，所以报错用的位置等出错时才拼）
        value = record.get(field) if isinstance(record, dict) else None
        if isinstance(value, str):
            # JSON 允许写 "\ud800" 这种不成对的代理项转义，json.loads 会照单全收，
            # 得到一个无法编码成 UTF-8 的 Python 字符串，到分词时才崩。这里提前拦下。
            if maybe_escaped and _has_lone_surrogate(value):
                return BadRecord(
                    self._location(location),
                    "含有不成对的 \\ud800-\\udfff 转义（孤立代理项），无法编码成 UTF-8"
                    " / contains a lone surrogate escape, not encodable as UTF-8",
                )
            return number, value
        return BadRecord(self._location(location), self._reason(record))

    def _location(self, location: str) -> str:
        return f"{location} 字段/field '{self.field}'"

    def _reason(self, record) -> str:
        """这条记录为什么取不出一个字符串：不是对象、缺字段、值不是字符串。"""
        field = self.field
        if not isinstance(record, dict):
            kind = json_type_name(record)
            return f"这条记录是 {kind}，需要一个对象 {{\"{field}\": \"...\"}} / record is {kind}, expected an object"
        if field not in record:
            keys = describe_keys(record)
            return (f"缺少这个字段，这条记录有的字段：{keys}（可用 --field 指定字段名）"
                    f" / field missing, the record has: {keys} (choose one with --field)")
        kind = json_type_name(record[field])
        return f"值是 {kind}，需要字符串 / value is {kind}, expected a string"


def whole_object(record, number: int, location: str, maybe_escaped: bool) -> Item:
    """取值步骤：要整条记录，只要求它是一个 JSON 对象。

    字段里的孤立代理项由使用记录的一方检查（例如 dialogue.py 检查每条消息的正文），
    因为只有它知道哪些字段真的会被用到。
    """
    if not isinstance(record, dict):
        kind = json_type_name(record)
        return BadRecord(location, f"这条记录是 {kind}，需要一个 JSON 对象 / record is {kind}, expected an object")
    return number, record


def _has_lone_surrogate(text: str) -> bool:
    """字符串里有没有孤立的代理项（U+D800~U+DFFF 单独出现）。"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def describe_keys(record: dict, limit: int = 10) -> str:
    """列出记录的键（值为 null 的标上 (null)，最多 limit 个），帮用户看出是不是字段名写错了。"""
    names = [f"{key!r}(null)" if value is None else repr(key) for key, value in list(record.items())[:limit]]
    if not names:
        return "（无 / none）"
    more = f" ...（共 {len(record)} 个 / {len(record)} in all）" if len(record) > limit else ""
    return ", ".join(names) + more


def json_type_name(value) -> str:
    """用 JSON 的说法称呼一个值的类型（用户写的是 JSON，不是 Python）。"""
    if value is None:
        return "null"
    if isinstance(value, bool):  # bool 是 int 的子类，必须先判断
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


# ---------------------------------------------------------------------------
# 2. 把错误讲成人话
# ---------------------------------------------------------------------------

def utf8_reason(err: UnicodeDecodeError, offset: int = 0) -> str:
    """把 UnicodeDecodeError 讲成人话：第几个字节、是什么字节、可能的原因。

    offset: err.object 在这一行里从第几个字节开始（长行分片解码时不是 0）。
    """
    bad = err.object[err.start:err.end]
    position = offset + err.start + 1
    return (
        f"本行第 {position} 个字节起不是合法的 UTF-8（{bad!r}），文件可能是 GBK 等其他编码，"
        f"请先转成 UTF-8 / not valid UTF-8 at byte {position} of the line ({bad!r}); convert the file to UTF-8"
    )


def json_reason(error: Exception, position: Callable[[json.JSONDecodeError], tuple[str, str]]) -> str:
    """json 解析一条记录失败了，讲清楚为什么。position(错误) 把位置讲成 (中文, 英文)。

    除了语法错误，还有两种“语法没错、Python 却解析不了”的值，也要变成一条坏记录，而不是 traceback：
      - 超过 4300 位的整数：Python 3.11 起默认拒绝把这么长的数字串转成 int（防止有人用
        超长数字拖慢程序），抛 ValueError；
      - 嵌套太深（[[[[...]]]] 套了几万层）：解析器是递归的，抛 RecursionError。
    """
    if isinstance(error, json.JSONDecodeError):
        chinese, english = position(error)
        return f"不是合法的 JSON：{error.msg}（{chinese}）/ invalid JSON: {error.msg} ({english})"
    if isinstance(error, RecursionError):
        return ("数组或对象嵌套太深，无法解析（最多约 1000 层）"
                " / arrays or objects nested too deeply to parse (about 1000 levels at most)")
    limit = getattr(sys, "get_int_max_str_digits", lambda: 4300)()
    return (f"有一个数字太长，无法解析（整数最多 {limit} 位）"
            f" / a number is too long to parse (at most {limit} digits): {first_line(error)}")


def first_line(err: Exception) -> str:
    """第三方库的报错有时很长、有好几行；只取第一行，保证命令行上的错误是一行。"""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__

