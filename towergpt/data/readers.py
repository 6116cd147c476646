"""语料读取器：把 .txt / .jsonl / .json / .parquet 文件流式地读成一条条文本或记录。

为什么要“流式”（streaming）？
    预训练语料动辄几个 GB，甚至几十 GB。如果 `json.load(f)` 一口气读进内存，
    小机器会直接被撑爆。这里的每个读取器都一边读一边产出（`yield`），
    任何时刻内存里只有“当前这一行 / 这一条记录 / 这一批行”，和文件大小无关。

两个出口：
    `iter_texts(path, field)`  产出 `(编号, 文本)`，给预训练用；
    `iter_records(path)`       产出 `(编号, 整条记录 dict)`，给对话（SFT）、偏好（DPO）数据用。
两者共用同一套“逐行 / 流式解析 + 坏记录处理”的代码，区别只在最后一步“从一条记录里取什么”
（取一个文本字段，还是要整个对象）——这一步是可替换的（见 `_TextField` 和 `_whole_object`）。

编号的含义：
    - .txt     编号是这一段（文档）第一行的行号；
    - .jsonl   编号是行号；
    - .json    编号是它在数组里的序号（从 1 开始），报错时说“记录/record N”，原因里再附上行号；
    - .parquet 编号是行序号（从 1 开始）。

出错时的原则：用户一眼就能知道是哪个文件、哪一行、哪个字段、为什么错、怎么改。
所以所有用户造成的错误都变成一条 `TowerGPTError`，而不是一长串 traceback。
对于海量“网上扒来的”语料，坏记录在所难免：`skip_bad=True` 时，坏记录不会中断读取，
而是交给回调 `on_bad(位置, 原因)` 记下来，然后跳过。
"""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterator, Union

from towergpt.errors import TowerGPTError, where

# 支持的扩展名。扩展名决定怎么解析文件，所以未知扩展名直接报错，而不是“猜”。
SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")

# UTF-8 的 BOM（字节顺序标记）。Windows 记事本存 UTF-8 时常在文件开头加这 3 个字节，
# 它不是文本内容，如果不去掉，第一条 JSON 会解析失败、第一段文本会多出一个隐形字符。
_UTF8_BOM = b"\xef\xbb\xbf"

# .txt 里一段（文档）最多积攒多少个字符就先交出去。
# 为什么要上限？一个“每行一句、中间没有空行”的大文件整个就是一段，
# 不设上限就得把整个文件装进内存。1M 字符大约 3 MB，切开处只是多一个文档边界，
# 对训练几乎没有影响，却保证了内存有界。
# 段落在行尾切开（与以前一样）；一行本身就超长时在行内切开，切在哪里见 `_cut_point`。
MAX_TXT_BLOCK_CHARS = 1_000_000

# 读 .txt 时一次最多读多少字节。`f.readline(上限)` 读到换行或读满上限就返回，
# 所以哪怕整个文件只有一行（50 MB 不带换行），内存里也只有这么大的一片，而不是整行。
_TXT_READ_BYTES = 1 << 20   # 1 MiB

# 读 .json 数组时一次从文件读多少字节（见 `_JsonArrayReader`）。
_JSON_READ_BYTES = 1 << 20  # 1 MiB

# on_bad 回调的类型：on_bad(位置, 原因)，例如 on_bad("a.jsonl:17", "不是合法的 JSON ...")
OnBad = Callable[[str, str], None]


@dataclass
class _BadRecord:
    """一条坏记录：由各读取器产出，由 `iter_texts` / `iter_records` 决定是报错还是跳过。

    为什么不在读取器里直接 raise？因为“坏记录怎么处理”是调用者的选择（skip_bad），
    读取器只负责发现问题、说清楚位置和原因，把决定权交给外层，各读取器就不必各写一遍 if。
    """

    location: str
    reason: str


# 读取器产出的东西：要么是正常的 (编号, 文本或记录)，要么是一条坏记录。
_Item = Union[tuple[int, object], _BadRecord]

# “取值步骤”：extract(记录, 编号, 位置, 可能含转义) -> _Item。
# JSONL 和 JSON 数组的读取器负责“把文件切成一条条 JSON 记录”，取值步骤负责“从记录里拿出要的东西”。
# 位置形如 "a.jsonl:17" 或 "a.json 记录/record 17"，取值步骤在报错时可以再接上字段名。
# “可能含转义”：原文里出现过 "\u" 时为 True，见 `_TextField` 里孤立代理项的检查。
Extract = Callable[[object, int, str, bool], _Item]


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
        items = _read_txt(path)
    elif suffix == ".parquet":
        items = _read_parquet_column(path, field)
    else:
        items = _JSON_READERS[suffix](path, _TextField(field))
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
        items = _read_parquet_rows(path)
    else:
        items = _JSON_READERS[suffix](path, _whole_object)
    return _handle_bad_records(items, skip_bad, on_bad)


def record_location(path: str | os.PathLike, number: int) -> str:
    """`iter_records` / `iter_texts` 产出的编号 -> 给人看的位置：`a.jsonl:17`、`a.json 记录/record 17`、`a.parquet 行/row 17`。"""
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return f"{path} 记录/record {number}"
    if suffix == ".parquet":
        return f"{path} 行/row {number}"
    return where(path, number)


def _handle_bad_records(items: Iterator[_Item], skip_bad: bool, on_bad: OnBad | None) -> Iterator[tuple[int, str]]:
    """把读取器产出的坏记录变成报错或回调，好记录原样交出。"""
    for item in items:
        if not isinstance(item, _BadRecord):
            yield item
        elif skip_bad:
            if on_bad is not None:
                on_bad(item.location, item.reason)
        else:
            raise TowerGPTError(f"{item.location}: {item.reason}")


# ---------------------------------------------------------------------------
# 逐行读取（.jsonl 用：一行就是一条记录，必须整行读进来才能解析）
# ---------------------------------------------------------------------------

def _iter_lines(path: Path) -> Iterator[tuple[int, str | _BadRecord]]:
    """逐行产出 `(行号, 去掉换行符的行)`；不是合法 UTF-8 的行产出一条 _BadRecord。

    为什么用二进制模式打开、再一行一行地解码？
        文本模式（open(..., encoding="utf-8")）是按几 KB 的块解码的，遇到坏字节时
        抛出的 UnicodeDecodeError 只知道“块里的第几个字节”，算不出是第几行。
        先按字节切行、再逐行严格解码（errors="strict"，默认值），坏字节的行号就一清二楚，
        而且一行坏了可以只跳过这一行。
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            try:
                line = raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as err:
                yield number, _BadRecord(where(path, number), _utf8_reason(err))
                continue
            # 只去掉行尾的一个换行（\n 或 Windows 的 \r\n），行内其余字符一个不动。
            if line.endswith("\n"):
                line = line[:-1]
                if line.endswith("\r"):
                    line = line[:-1]
            yield number, line


def _utf8_reason(err: UnicodeDecodeError, offset: int = 0) -> str:
    """把 UnicodeDecodeError 讲成人话：第几个字节、是什么字节、可能的原因。

    offset: err.object 在这一行里从第几个字节开始（长行分片解码时不是 0）。
    """
    bad = err.object[err.start:err.end]
    position = offset + err.start + 1
    return (
        f"本行第 {position} 个字节起不是合法的 UTF-8（{bad!r}），文件可能是 GBK 等其他编码，"
        f"请先转成 UTF-8 / not valid UTF-8 at byte {position} of the line ({bad!r}); convert the file to UTF-8"
    )


# ---------------------------------------------------------------------------
# .txt：按有上限的“片”读行，再拼成段落
# ---------------------------------------------------------------------------

def _split_piece(chunk: bytes, carry: bytes) -> tuple[bytes, bool, bytes]:
    """一片（`f.readline(上限)` 读到的字节）-> (去掉行尾换行的字节, 这一行是否到此结束, 留给下一片开头的字节)。

    `f.readline(上限)` 读到换行符、或读满 _TXT_READ_BYTES 字节、或到文件末尾就返回，
    所以一片最多 1 MiB，和这一行有多长无关。carry 是上一片留下的字节（见下面的 \\r）。
    """
    raw = carry + chunk
    if raw.endswith(b"\n"):
        # 只去掉行尾的一个换行（\n 或 Windows 的 \r\n），行内其余字符一个不动
        raw = raw[:-1]
        return (raw[:-1] if raw.endswith(b"\r") else raw), True, b""
    if len(chunk) < _TXT_READ_BYTES:   # 没读满又没有换行：文件末尾，最后一行没有换行符
        return raw, True, b""
    if raw.endswith(b"\r"):
        # \r\n 恰好被切在两片之间：先把 \r 留下，和下一片一起看，它到底是不是行尾的 \r\n
        return raw[:-1], False, b"\r"
    return raw, False, b""


def _decode_piece(decoder, raw: bytes, ends: bool, line_bytes: int, path: Path, number: int) -> str | _BadRecord:
    """把长行的一片字节解码成文本；不是合法 UTF-8 时返回一条 _BadRecord（位置是这一行的行号）。

    一片可能恰好切在一个汉字（3 个字节）的中间。增量解码器（incremental decoder）会把
    末尾不完整的那一两个字节先存着，等下一片来了再拼上，所以绝不会把一个字符切成两半。
    line_bytes: 这一行在这一片之前已经读了多少字节，用来算出坏字节在整行里的位置。
    """
    try:
        return decoder.decode(raw, final=ends)
    except UnicodeDecodeError as err:
        pending = len(decoder.getstate()[0])   # 上一片留下、还没解码的字节数（出错时解码器的状态不变）
        decoder.reset()
        return _BadRecord(where(path, number), _utf8_reason(err, offset=line_bytes - pending))


def _iter_line_pieces(path: Path) -> Iterator[tuple[int, str | _BadRecord, bool]]:
    """逐片产出 `(行号, 文本, 这一行是否到此结束)`；普通的行一片就是一整行。

    为什么不直接 `for line in f`？那样一行有多长，内存里就得装多长：一个 50 MB 不带换行的
    文件会整个读进来，再整个交给分词器。按片读，内存就和行长无关。
    不是合法 UTF-8 的行产出一条 _BadRecord，坏字节所在的这一片和这一行剩下的部分直接跳过
    （同一行只报一次）；超长行在这之前已经交出去的片不会收回。
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        number, carry, line_bytes = 1, b"", 0
        line_open = bad_line = False   # 这一行还有下一片吗 / 这一行已经报过坏了吗
        while True:
            chunk = f.readline(_TXT_READ_BYTES)
            if not line_open and chunk.endswith(b"\n"):
                # 最常见的情况：一整行一次读完。直接解码，省掉下面通用路径的开销（逐行调用很多次，值得）
                yield number, _whole_line(chunk, path, number), True
                number += 1
                continue
            if not chunk and not carry:   # 文件读完了
                if line_open and not bad_line:   # 最后一行恰好在读满一片时结束：收尾，查一下末尾有没有半个字符
                    yield number, _decode_piece(decoder, b"", True, line_bytes, path, number), True
                return
            raw, ends, carry = _split_piece(chunk, carry)
            if number == 1 and line_bytes == 0 and raw.startswith(_UTF8_BOM):
                raw = raw[len(_UTF8_BOM):]
            if not bad_line:
                text = _decode_piece(decoder, raw, ends, line_bytes, path, number)
                bad_line = isinstance(text, _BadRecord)
                yield number, text, ends
            if ends:
                number, line_bytes, line_open, bad_line = number + 1, 0, False, False
            else:
                line_bytes, line_open = line_bytes + len(raw), True


def _whole_line(chunk: bytes, path: Path, number: int) -> str | _BadRecord:
    """一整行（以 \\n 结尾）-> 去掉行尾换行的文本；第 1 行去掉 BOM；不是合法 UTF-8 时返回 _BadRecord。"""
    raw = chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]
    if number == 1 and raw.startswith(_UTF8_BOM):
        raw = raw[len(_UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return _BadRecord(where(path, number), _utf8_reason(err))


# 行内切开时优先的切点：句末标点或换行。写成“后面直到窗口末尾再也没有句末标点或换行的那一个”，
# 一次 search 就找到窗口里的最后一个（全在 C 里完成），不必在 Python 里逐个遍历几万个句号。
_LAST_STOP = re.compile(r"[。！？!?…\n](?=[^。！？!?…\n]*\Z)")
# 紧跟在句末标点后面的后引号、后括号：和这句话留在一起，不让它们落到下一段开头。
_CLOSERS = re.compile(r"[”’」』）)\"']*")
# 其次：窗口里的最后一个空白（英文等按空格分词的文字）。
_LAST_SPACE = re.compile(r"\s(?=\S*\Z)")


def _cut_point(text: str, lowest: int) -> tuple[int, int]:
    """给一段超长文本挑切点：返回 (这一段到哪里结束, 下一段从哪里开始)。

    只在 text[lowest:MAX_TXT_BLOCK_CHARS] 这个窗口里找，保证切下来的一段不超过上限、也不会太短：
      1. 最后一个句末标点（。！？!?…，连同后引号、后括号）之后——一句话完整地留在同一篇文档里；
         如果最后一个是换行，就在换行处切，换行本身不要（与在行尾分段时一样）；
      2. 否则最后一个空白之后（英文之类按空格分词的文字）；
      3. 都没有（例如一长串没有标点的字符）才在上限处硬切。text 是已经解码的 str，
         下标切在两个字符之间，不会把一个 UTF-8 字符切成两半。
    正则的 endpos 参数让 `\\Z` 把窗口末尾当作文本末尾。
    """
    limit = MAX_TXT_BLOCK_CHARS
    stop = _LAST_STOP.search(text, lowest, limit)
    if stop is not None:
        if stop.group() == "\n":
            return stop.start(), stop.end()
        end = _CLOSERS.match(text, stop.end(), limit).end()
        return end, end
    space = _LAST_SPACE.search(text, lowest, limit)
    if space is not None:
        return space.end(), space.end()
    return limit, limit


class _TxtBlock:
    """正在积攒的一段（文档）：若干片文本，连同这段第一行的行号。

    为什么要记“当前这一行从第几个字符开始”（line_start）？行内切开时，只在当前这一行里
    （或它开头的换行处）找切点，这样切剩下的部分一定属于当前这一行，它的行号就是当前行号。
    """

    def __init__(self):
        self.parts: list[str] = []
        self.chars = 0           # parts 一共多少个字符
        self.first_line = 0      # 这段第一行的行号
        self.line_number = 0     # 当前这一行的行号
        self.line_start = 0      # 当前这一行在这段里从第几个字符开始
        self.line_open = False   # 当前这一行还没读完（超长行还有下一片）

    def add(self, number: int, piece: str, ends: bool) -> None:
        """加一片：新的一行前面补一个换行；同一行的后续片直接接上。"""
        if self.line_open and not piece:   # 长行收尾时可能有一个空片：只说明这一行结束了
            self.line_open = not ends
            return
        if not self.line_open:
            if self.parts:
                self.parts.append("\n")
                self.chars += 1
            self.line_number, self.line_start = number, self.chars
        if not self.parts:
            self.first_line = number
        self.parts.append(piece)
        self.chars += len(piece)
        self.line_open = not ends

    def take_full(self) -> Iterator[tuple[int, str]]:
        """够长了（chars >= MAX_TXT_BLOCK_CHARS）就交出去：在行尾够长，整段交出（与以前一样）；
        在一行中间够长，就在行内切开。"""
        if not self.line_open:
            yield self.take_all()
            return
        text = "".join(self.parts)
        lowest = max(MAX_TXT_BLOCK_CHARS // 2, self.line_start - 1)   # 窗口从一半处开始，免得切出很短的一段
        while len(text) >= MAX_TXT_BLOCK_CHARS:
            end, rest = _cut_point(text, lowest)
            yield self.first_line, text[:end]
            text, lowest = text[rest:], MAX_TXT_BLOCK_CHARS // 2
            self.first_line = self.line_number   # 剩下的部分都在当前这一行里
        self.parts, self.chars, self.line_start = ([text] if text else []), len(text), 0

    def take_all(self) -> tuple[int, str]:
        """交出整段并清空。"""
        item = (self.first_line, "".join(self.parts))
        self.parts, self.chars, self.line_open = [], 0, False
        return item


def _read_txt(path: Path) -> Iterator[_Item]:
    """纯文本：用一个或多个空行分隔的一段算一篇文档，编号是这段第一行的行号。

    这样“一段一段的文章”和“每行一句、句间空一行”的文件都能读；段内的换行原样保留，
    因为换行本身也是文本的一部分（诗歌、对话、代码都靠它）。
    只含空白字符（空格、制表符、全角空格）的行也算空行。超长的段、超长的行按
    MAX_TXT_BLOCK_CHARS 切开（见 `_TxtBlock.take_full`），任何时候内存里最多约两百万个字符。
    一行是不是空行，看它的第一片：第一片（1 MiB）全是空白、后面还有内容的行，算作正文。
    """
    block = _TxtBlock()
    for number, piece, ends in _iter_line_pieces(path):
        if isinstance(piece, _BadRecord):
            yield piece
            block.line_open = False   # 坏行剩下的部分已被跳过，下一片是新的一行
            continue
        if block.line_open or piece.strip() or not ends:
            block.add(number, piece, ends)
            if block.chars >= MAX_TXT_BLOCK_CHARS:
                yield from block.take_full()
        elif block.parts:   # 空行：一段结束
            yield block.take_all()
    if block.parts:
        yield block.take_all()


# ---------------------------------------------------------------------------
# JSON Lines 与 JSON 数组
# ---------------------------------------------------------------------------

def _read_jsonl(path: Path, extract: Extract) -> Iterator[_Item]:
    """JSON Lines：每行一个 JSON 记录，交给取值步骤 extract；空行跳过。"""
    for number, line in _iter_lines(path):
        if isinstance(line, _BadRecord):
            yield line
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as error:
            yield _BadRecord(where(path, number), _json_reason(error, _column_of))
            continue
        # 便宜的子串检查：原始行里没有 "\u" 转义就不可能解析出孤立代理项，取值步骤可以省掉那次检查
        yield extract(record, number, where(path, number), "\\u" in line)


def _column_of(error: json.JSONDecodeError) -> tuple[str, str]:
    """JSONL 的一行就是一条记录：语法错误的位置说“第几列”。"""
    return f"第 {error.colno} 列", f"column {error.colno}"


def _json_reason(error: Exception, position: Callable[[json.JSONDecodeError], tuple[str, str]]) -> str:
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
            f" / a number is too long to parse (at most {limit} digits): {_first_line(error)}")


def _read_json_array(path: Path, extract: Extract) -> Iterator[_Item]:
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
                yield _BadRecord(location, reason)
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
        reason = self._utf8_problem(start, end) or _json_reason(error, lambda err: self._position(start, err))
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
    if f.read(len(_UTF8_BOM)) != _UTF8_BOM:
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


def _open_parquet(path: Path):
    """打开 Parquet 文件，返回 (pyarrow 模块, ParquetFile)。

    pyarrow 是可选依赖：没装时给出安装方法，而不是 ImportError 的 traceback。
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise TowerGPTError(
            f"{path}: 读取 .parquet 需要 pyarrow，请运行 pip install towergpt[parquet]"
            f" / reading Parquet needs pyarrow: pip install towergpt[parquet]"
        ) from None
    try:
        return pa, pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise TowerGPTError(f"{path}: 不是有效的 Parquet 文件 / not a valid Parquet file: {_first_line(err)}") from None


def _parquet_batches(path: Path, pa, parquet_file, columns: list[str] | None) -> Iterator:
    """一批一批（record batch）地读；读到一半出错（文件损坏）时说清楚读到了第几行。

    Parquet 是列式存储，只读需要的列、一次一批，内存同样有界。
    """
    batches = parquet_file.iter_batches(batch_size=1024, columns=columns)
    row = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as err:
            raise TowerGPTError(f"{path} 第 {row} 行之后 / after row {row}: 读取失败 / read error: {_first_line(err)}") from None
        if batch is None:
            return
        yield batch
        row += batch.num_rows


def _read_parquet_column(path: Path, field: str) -> Iterator[_Item]:
    """Parquet 的一个字符串列：编号是行序号（从 1 开始）。"""
    pa, parquet_file = _open_parquet(path)
    schema = parquet_file.schema_arrow
    if field not in schema.names:
        raise TowerGPTError(
            f"{where(path, field=field)}: Parquet 里没有这一列，现有的列 / no such column, columns are: {schema.names}"
        )
    column_type = schema.field(field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)
            or _is_string_view(pa, column_type)):
        raise TowerGPTError(
            f"{where(path, field=field)}: 这一列的类型是 {column_type}，需要字符串"
            f" / column type is {column_type}, expected string"
        )
    row = 0
    for batch in _parquet_batches(path, pa, parquet_file, [field]):
        for value in batch.column(0).to_pylist():
            row += 1
            if isinstance(value, str):
                yield row, value
            else:  # 字符串列里唯一可能的非字符串是空值 null
                yield _BadRecord(
                    f"{path} 行/row {row} 字段/field '{field}'",
                    f"值是 {json_type_name(value)}，需要字符串 / value is {json_type_name(value)}, expected a string",
                )


def _read_parquet_rows(path: Path) -> Iterator[_Item]:
    """Parquet 的整行：每行变成 {列名: 值}，列表、结构体列变成 Python 的 list / dict。"""
    pa, parquet_file = _open_parquet(path)
    row = 0
    for batch in _parquet_batches(path, pa, parquet_file, None):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def _is_string_view(pa, column_type) -> bool:
    """较新的 pyarrow 还有 string_view 类型；旧版本没有这个判断函数。"""
    check = getattr(pa.types, "is_string_view", None)
    return bool(check and check(column_type))


# ---------------------------------------------------------------------------
# 记录 -> 文本：jsonl 和 json 数组共用
# ---------------------------------------------------------------------------

class _TextField:
    """取值步骤：从一条 JSON 记录里取出 `field` 对应的字符串；任何不对劲都变成一条说清楚原因的 _BadRecord。"""

    def __init__(self, field: str):
        self.field = field

    def __call__(self, record, number: int, location: str, maybe_escaped: bool) -> _Item:
        field = self.field
        location = f"{location} 字段/field '{field}'"
        if not isinstance(record, dict):
            kind = json_type_name(record)
            return _BadRecord(
                location,
                f"这条记录是 {kind}，需要一个对象 {{\"{field}\": \"...\"}} / record is {kind}, expected an object",
            )
        if field not in record:
            keys = _describe_keys(record)
            return _BadRecord(
                location,
                f"缺少这个字段，这条记录有的字段：{keys}（可用 --field 指定字段名）"
                f" / field missing, the record has: {keys} (choose one with --field)",
            )
        value = record[field]
        if not isinstance(value, str):
            kind = json_type_name(value)
            return _BadRecord(location, f"值是 {kind}，需要字符串 / value is {kind}, expected a string")
        # JSON 允许写 "\ud800" 这种不成对的代理项转义，json.loads 会照单全收，
        # 得到一个无法编码成 UTF-8 的 Python 字符串，到分词时才崩。这里提前拦下。
        if maybe_escaped and _has_lone_surrogate(value):
            return _BadRecord(
                location,
                "含有不成对的 \\ud800-\\udfff 转义（孤立代理项），无法编码成 UTF-8"
                " / contains a lone surrogate escape, not encodable as UTF-8",
            )
        return number, value


def _whole_object(record, number: int, location: str, maybe_escaped: bool) -> _Item:
    """取值步骤：要整条记录，只要求它是一个 JSON 对象。

    字段里的孤立代理项由使用记录的一方检查（例如 dialogue.py 检查每条消息的正文），
    因为只有它知道哪些字段真的会被用到。
    """
    if not isinstance(record, dict):
        kind = json_type_name(record)
        return _BadRecord(location, f"这条记录是 {kind}，需要一个 JSON 对象 / record is {kind}, expected an object")
    return number, record


def _has_lone_surrogate(text: str) -> bool:
    """字符串里有没有孤立的代理项（U+D800~U+DFFF 单独出现）。"""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _describe_keys(record: dict, limit: int = 10) -> str:
    """列出记录里已有的字段名（最多 limit 个），帮用户发现是不是字段名写错了。"""
    keys = [str(key) for key in record]
    if not keys:
        return "（无 / none）"
    shown = ", ".join(repr(key) for key in keys[:limit])
    return shown + (f" ...（共 {len(keys)} 个 / {len(keys)} in all）" if len(keys) > limit else "")


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


def _first_line(err: Exception) -> str:
    """第三方库的报错有时很长、有好几行；只取第一行，保证命令行上的错误是一行。"""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# JSON 类扩展名 -> 读取器（把文件切成一条条 JSON 记录）；取值步骤由调用者传入。
_JSON_READERS = {
    ".jsonl": _read_jsonl,
    ".json": _read_json_array,
}
