""".json 读取器：顶层是一个数组 `[{...}, {...}, ...]`，流式地一个元素一个元素地解析 / JSON array reader.

内存里只有一块“还没用完的文本”（约 1 MiB，或者当前这条记录有多长就多长），与文件大小无关。
编号是元素在数组里的序号（从 1 开始），报错时说“记录/record N”，原因里再附上行号。
一条记录坏了（语法错误、数字太长、嵌套太深、不是合法 UTF-8）只跳过这一条；
括号不配对这类“下一条从哪里开始已经说不清”的错误，才不得不停下来。
"""

from __future__ import annotations

import codecs
import json
import os
import re
from pathlib import Path
from typing import Iterator

from towergpt.data.readers.records import UTF8_BOM, BadRecord, Extract, Item, json_reason
from towergpt.errors import TowerGPTError

# 读 .json 数组时一次从文件读多少字节（见 `_JsonArrayReader`）。
_JSON_READ_BYTES = 1 << 20  # 1 MiB


def read_json_array(path: Path, extract: Extract) -> Iterator[Item]:
    """JSON 数组 `[{...}, {...}, ...]`：流式地一条一条读，从不把整个数组读进内存。

    `json.load` 会先把整个文件解析成一个巨大的 Python 列表——几 GB 的文件会占用
    好几倍的内存。`_JsonArrayReader` 每次只读 1 MiB，用 Python 自带的 json 解析器
    一条一条地解析数组里的元素，用完即弃。
    为什么不用 ijson（流式 JSON 解析库）？它的 C 后端会把不成对的代理项转义 "\\ud800"
    悄悄改成 "?" 或错误的字符，遇到 "\\udfff" 直接抛 UnicodeDecodeError；几万层的嵌套
    会让它的内存暴涨到几个 GB。Python 的 json 保留孤立代理项（于是能查出来、报出记录号），
    深嵌套时抛 RecursionError（于是能变成一条坏记录），一条记录坏了只跳过这一条。
    """
    with open(path, "rb") as f:
        line = _seek_to_json_array(f, path)
        prefix = f"{path} 记录/record "
        for count, (record, reason, maybe_escaped) in enumerate(_JsonArrayReader(f, path, line), start=1):
            location = prefix + str(count)
            if reason is not None:
                yield BadRecord(location, reason)
            else:
                yield extract(record, count, location, maybe_escaped)


# 找“一条记录在哪里结束”时要停下来看的字符。字符串外面只能出现空白、冒号、数字和
# true / false / null（以及 Python 也接受的 NaN、Infinity）的字母——这些对找边界没有意义，
# 由 C 实现的正则引擎直接跳过。停下来的地方只有三种：
#   1. 引号 "：一个字符串开始了，用 `_string_end` 跳到它的结尾；
#   2. 结构符号 [ ] { } ,：靠它们数层数、找记录之间的逗号；
#   3. 别的字符：文件坏了，而且很可能是引号没配对——这时后面的边界都不可信了。
_JSON_TOKEN = re.compile(r"[^ \t\n\r:0-9.eE+\-truefalsnNIiy]")
_OPENERS = {"]": "[", "}": "{"}
_SPACE_RUN = re.compile(r"[ \t\n\r]*")
_NOT_SPACE = re.compile(r"[^ \t\n\r]")
# 一条记录之后：空白，然后是逗号（后面还有记录）或 ]（数组结束），再跳过后面的空白
_SEPARATOR = re.compile(r"[ \t\n\r]*([,\]])[ \t\n\r]*")
# 解码时 errors="surrogateescape" 把不合法的 UTF-8 字节 0xXX 变成字符 U+DCXX，这里把它们找出来
_ESCAPED_BYTE = re.compile(r"[\udc80-\udcff]")
_DECODER = json.JSONDecoder()


def _string_end(text: str, start: int) -> int:
    """字符串的内容从 text[start] 开始，返回收尾引号之后的位置；字符串还没读完时返回 -1。

    `str.find` 找引号是 C 实现的，比正则逐个字符匹配快得多。找到的引号前面如果有奇数个
    反斜杠，它是转义的 \\"，属于字符串内容，接着往后找。
    """
    while True:
        quote = text.find('"', start)
        if quote < 0:
            return -1
        slash = quote
        while slash > start and text[slash - 1] == "\\":
            slash -= 1
        if (quote - slash) % 2 == 0:
            return quote + 1
        start = quote + 1


class _JsonArrayReader:
    """一条一条地读 JSON 数组的元素，产出 `(记录, 坏记录的原因 或 None, 原文里有没有 \\u 转义)`。

    内存里只有一块“还没用完的文本”（约 1 MiB，或者当前这条记录有多长就多长），与文件大小无关。

    快路：`JSONDecoder.raw_decode(文本, 位置)` 从“位置”开始解析一个 JSON 值，
    返回 (值, 它在哪里结束)——解析和找边界一次完成，全在 C 里。
    慢路（只在快路失败时）：`_record_end` 自己数括号、跳过字符串，找到这条记录在哪里结束：
      - 找到了：这条记录是坏的（语法错误、数字太长、嵌套太深），交出一条坏记录，跳过它接着读；
      - 文本读完了还没找到：记录只是被切在两块之间，再读一块重来；
      - 括号不配对、字符串外面出现怪字符：下一条记录从哪里开始已经说不清了，
        即使 skip_bad 也只能停下来报错（TowerGPTError）。
    """

    def __init__(self, f, path: Path, line: int):
        self.f, self.path = f, path
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""         # 已经解码、还没用完的文本
        self.pos = 0           # 下一条记录从 text 的哪里开始
        self.line = line       # text[0] 在文件的第几行（只在报错时用）
        self.eof = False       # 文件已经读完
        self.dirty = False     # 读到过不是合法 UTF-8 的字节（之后每条记录都要检查一下）
        self.count = 0         # 已经读完了几条记录（报错时说“第几条之后”）

    def __iter__(self) -> Iterator[tuple[object, str | None, bool]]:
        self._fill()
        self.pos = 1               # 文件位置在 [ 上（见 _seek_to_json_array），跳过它
        if self._array_is_empty():
            self._check_rest()
            return
        more = True
        while more:
            item, more = self._next_record()
            self.count += 1
            yield item
        self._check_rest()

    def _array_is_empty(self) -> bool:
        """[ 之后（跳过空白）紧跟着 ] 吗？"""
        while True:
            start = _SPACE_RUN.match(self.text, self.pos).end()
            if start < len(self.text) or self.eof:
                break
            self._fill()
        self.pos = start
        if self.text.startswith("]", start):
            self.pos += 1
            return True
        return False

    def _next_record(self) -> tuple[tuple[object, str | None, bool], bool]:
        """解析从 pos 开始的一条记录，把 pos 移到它后面的逗号或 ] 之后。

        返回 ((记录, 原因, 有没有 \\u 转义), 后面还有没有记录)。
        """
        start = self.pos   # 上一条记录后面的空白已经跳过了
        while True:
            try:
                record, end = _DECODER.raw_decode(self.text, start)
            except (ValueError, RecursionError) as error:
                result = self._bad_record(start, error)
            else:
                separator = _SEPARATOR.match(self.text, end)
                if separator is not None and not self.dirty:   # 最常见的情况，每条记录都走这里，所以写在这里而不另调函数
                    self.pos = separator.end()
                    return (record, None, self.text.find("\\u", start, end) >= 0), separator.group(1) == ","
                result = self._good_record(start, end, record, separator)
            if result is not None:
                return result
            self._fill()   # 记录被切在两块之间：再读一块，从这条记录的开头重来
            start = _SPACE_RUN.match(self.text, self.pos).end()

    def _good_record(self, start: int, end: int, record, separator: re.Match | None) -> tuple | None:
        """快路解析成功，但后面没找到逗号或 ]，或者文件里有坏字节要查；要再读一块时返回 None。"""
        if separator is None:
            if _NOT_SPACE.search(self.text, end) is None and not self.eof:
                return None   # 例如数字 12|34 被切开，或者逗号还在下一块里
            return self._bad_record(start, json.JSONDecodeError("Extra data", self.text, end))
        reason = self._utf8_problem(start, end)
        self.pos = separator.end()
        maybe_escaped = self.text.find("\\u", start, end) >= 0
        return (record if reason is None else None, reason, maybe_escaped), separator.group(1) == ","

    def _bad_record(self, start: int, error: Exception) -> tuple | None:
        """快路失败：找到这条记录的结尾，交出一条坏记录；找不到（还没读完）返回 None。"""
        end = self._record_end(start)
        if end is None:
            if self.eof:
                self._fail(start, "从这里开始的记录到文件末尾都没有结束（少了 ]、} 或引号？）"
                                  " / the record starting here never ends (missing ], } or a quote?)")
            return None
        reason = self._utf8_problem(start, end) or json_reason(error, lambda err: self._position(start, err))
        self.pos = _SPACE_RUN.match(self.text, end + 1).end()   # 跳过逗号和后面的空白，停在下一条记录上
        return (None, reason, False), self.text[end] == ","

    def _record_end(self, start: int) -> int | None:
        """慢路：从 start 开始数括号、跳过字符串，返回这条记录之后那个逗号或 ] 的位置；没读完返回 None。"""
        text, pos, stack = self.text, start, []
        while True:
            match = _JSON_TOKEN.search(text, pos)
            if match is None:
                return None
            at, char = match.start(), match.group()
            pos = at + 1
            if char == '"':
                pos = _string_end(text, pos)
                if pos < 0:
                    return None
            elif char in "[{":
                stack.append(char)
            elif char == ",":
                if not stack:              # 这条记录之外的逗号：记录到此结束
                    return at
            elif char in "]}":
                if not stack and char == "]":   # 这条记录之外的 ]：数组结束，记录也到此结束
                    return at
                if not stack or stack.pop() != _OPENERS[char]:
                    self._fail(at, f"括号不配对：这里的 {char} 与前面的开括号不是一对 / mismatched bracket {char}")
            else:
                self._fail(at, _unexpected(char))

    def _utf8_problem(self, start: int, end: int) -> str | None:
        """这条记录里有没有不合法的 UTF-8 字节（只在读到过这种字节之后才检查，平时不花时间）。"""
        if not self.dirty:
            return None
        found = _ESCAPED_BYTE.search(self.text, start, end)
        if found is None:
            return None
        offset = len(self.text[start:found.start()].encode("utf-8", "surrogateescape"))
        bad = found.group().encode("utf-8", "surrogateescape")
        line = self._line_at(found.start())
        return (f"这条记录第 {offset + 1} 个字节起不是合法的 UTF-8（{bad!r}，第 {line} 行），文件可能是 GBK 等其他编码，"
                f"请先转成 UTF-8 / not valid UTF-8 at byte {offset + 1} of the record ({bad!r}, line {line});"
                f" convert the file to UTF-8")

    def _position(self, start: int, error: json.JSONDecodeError) -> tuple[str, str]:
        """语法错误的位置：文件第几行、这条记录的第几个字符。"""
        line, at = self._line_at(error.pos), error.pos - start + 1
        return f"文件第 {line} 行，这条记录第 {at} 个字符处", f"file line {line}, character {at} of the record"

    def _line_at(self, index: int) -> int:
        """text[index] 在文件的第几行。只在报错时才数换行，平时不花时间。"""
        return self.line + self.text.count("\n", 0, index)

    def _fill(self) -> None:
        """再读一块。已经用完的文本先丢掉，只留当前这条记录。

        一次读多少？至少 1 MiB，而且不少于留下的文本：一条几十 MB 的记录要读很多块，
        每读一块都要从这条记录的开头重新解析；每次读的量翻倍，重新解析的总量就只有
        记录长度的两三倍，而不是随块数平方增长。
        """
        if self.eof:
            return
        self.line += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos:]
        self.pos = 0
        chunk = self.f.read(max(_JSON_READ_BYTES, len(self.text)))
        self.eof = not chunk
        self.text += self._decode(chunk)

    def _decode(self, chunk: bytes) -> str:
        """增量解码（一个汉字被切在两块之间也没关系）。

        遇到不合法的 UTF-8 时不在这里报错（这里不知道是哪条记录），而是用 surrogateescape
        把坏字节变成 U+DC80~U+DCFF 的占位字符，等切出记录后由 `_utf8_problem` 报出记录号。
        """
        try:
            return self.decoder.decode(chunk, final=self.eof)
        except UnicodeDecodeError:
            self.dirty = True
            self.decoder.errors = "surrogateescape"
            text = self.decoder.decode(chunk, final=self.eof)
            self.decoder.errors = "strict"
            return text

    def _check_rest(self) -> None:
        """数组结束之后只允许有空白；还有别的东西（第二个数组、多余的字符）要说出来。"""
        while True:
            extra = _NOT_SPACE.search(self.text, self.pos)
            if extra is not None:
                self._fail(extra.start(), "数组结束后还有内容 / extra data after the JSON array")
            if self.eof:
                return
            self.pos = len(self.text)
            self._fill()

    def _fail(self, at: int, reason: str) -> None:
        """报一个找不到下一条记录的错误：在第几条记录之后、文件第几行、原因。"""
        line, after = self._line_at(at), self.count
        raise TowerGPTError(f"{self.path} 记录/record {after} 之后 / after record {after}"
                            f"（第 {line} 行 / line {line}）: 不是合法的 JSON / invalid JSON: {reason}")


def _unexpected(char: str) -> str:
    """字符串外面出现了不该有的字符：是坏字节就说编码，否则多半是引号没配对。"""
    if _ESCAPED_BYTE.match(char):
        byte = char.encode("utf-8", "surrogateescape")
        return f"不是合法的 UTF-8（{byte!r}），请先把文件转成 UTF-8 / not valid UTF-8 ({byte!r}); convert the file to UTF-8"
    return f"意外的字符 {char!r}（引号没有配对？）/ unexpected character {char!r} (unbalanced quotes?)"


def _seek_to_json_array(f, path: Path) -> int:
    """跳过 BOM 和开头的空白，确认顶层是数组 `[`，再把读取位置退回到 `[` 上；返回 `[` 在第几行。

    为什么要专门检查？如果顶层是一个对象，或者其实是每行一个对象的 JSONL 文件
    却用了 .json 扩展名，流式读取会“什么也没找到”而安静地产出 0 条记录——
    用户只会莫名其妙地得到一个空语料。这里提前说清楚。
    """
    if f.read(len(UTF8_BOM)) != UTF8_BOM:
        f.seek(0)
    line = 1
    while True:
        char = f.read(1)
        if not char:
            raise TowerGPTError(f"{path}: 文件是空的，不是 JSON 数组 / empty file, expected a JSON array")
        if not char.isspace():
            break
        line += char == b"\n"
    if char != b"[":
        hint = "；如果每行是一个对象，请把扩展名改成 .jsonl / if it holds one object per line, rename it to .jsonl"
        raise TowerGPTError(
            f"{path}: .json 文件的顶层必须是数组 [...]，这里以 {char.decode('latin-1')!r} 开头"
            f" / a .json file must hold a JSON array{hint}"
        )
    f.seek(-1, os.SEEK_CUR)
    return line
