""".txt 读取器：空行分隔的一段算一篇文档；超长的段、超长的行按上限切开，内存有界 / Plain-text reader.

两层：
    1. 按有上限的“片”读行（`_iter_line_pieces`）：`f.readline(上限)` 每次最多读 1 MiB，
       哪怕整个文件只有一行（50 MB 不带换行），内存里也只有这么大的一片；
    2. 把片拼成段落（`_TxtBlock`）：够 MAX_TXT_BLOCK_CHARS 个字符就先交出去，
       在一行中间切开时优先切在句末标点之后（`_cut_point`），一句话完整地留在同一篇文档里。
编号是这一段第一行的行号；不是合法 UTF-8 的行产出一条 BadRecord（见 records.py）。
"""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import Iterator

from towergpt.data.readers.records import UTF8_BOM, BadRecord, Item, utf8_reason
from towergpt.errors import where

# .txt 里一段（文档）最多积攒多少个字符就先交出去。
# 为什么要上限？一个“每行一句、中间没有空行”的大文件整个就是一段，
# 不设上限就得把整个文件装进内存。1M 字符大约 3 MB，切开处只是多一个文档边界，
# 对训练几乎没有影响，却保证了内存有界。
# 段落在行尾切开（与以前一样）；一行本身就超长时在行内切开，切在哪里见 `_cut_point`。
MAX_TXT_BLOCK_CHARS = 1_000_000

# 读 .txt 时一次最多读多少字节。`f.readline(上限)` 读到换行或读满上限就返回，
# 所以哪怕整个文件只有一行（50 MB 不带换行），内存里也只有这么大的一片，而不是整行。
_TXT_READ_BYTES = 1 << 20   # 1 MiB


# ---------------------------------------------------------------------------
# 1. 按有上限的“片”读行
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


def _decode_piece(decoder, raw: bytes, ends: bool, line_bytes: int, path: Path, number: int) -> str | BadRecord:
    """把长行的一片字节解码成文本；不是合法 UTF-8 时返回一条 BadRecord（位置是这一行的行号）。

    一片可能恰好切在一个汉字（3 个字节）的中间。增量解码器（incremental decoder）会把
    末尾不完整的那一两个字节先存着，等下一片来了再拼上，所以绝不会把一个字符切成两半。
    line_bytes: 这一行在这一片之前已经读了多少字节，用来算出坏字节在整行里的位置。
    """
    try:
        return decoder.decode(raw, final=ends)
    except UnicodeDecodeError as err:
        pending = len(decoder.getstate()[0])   # 上一片留下、还没解码的字节数（出错时解码器的状态不变）
        decoder.reset()
        return BadRecord(where(path, number), utf8_reason(err, offset=line_bytes - pending))


def _iter_line_pieces(path: Path) -> Iterator[tuple[int, str | BadRecord, bool]]:
    """逐片产出 `(行号, 文本, 这一行是否到此结束)`；普通的行一片就是一整行。

    为什么不直接 `for line in f`？那样一行有多长，内存里就得装多长：一个 50 MB 不带换行的
    文件会整个读进来，再整个交给分词器。按片读，内存就和行长无关。
    不是合法 UTF-8 的行产出一条 BadRecord，坏字节所在的这一片和这一行剩下的部分直接跳过
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
            if number == 1 and line_bytes == 0 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            if not bad_line:
                text = _decode_piece(decoder, raw, ends, line_bytes, path, number)
                bad_line = isinstance(text, BadRecord)
                yield number, text, ends
            if ends:
                number, line_bytes, line_open, bad_line = number + 1, 0, False, False
            else:
                line_bytes, line_open = line_bytes + len(raw), True


def _whole_line(chunk: bytes, path: Path, number: int) -> str | BadRecord:
    """一整行（以 \\n 结尾）-> 去掉行尾换行的文本；第 1 行去掉 BOM；不是合法 UTF-8 时返回 BadRecord。"""
    raw = chunk[:-2] if chunk.endswith(b"\r\n") else chunk[:-1]
    if number == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRecord(where(path, number), utf8_reason(err))


# ---------------------------------------------------------------------------
# 2. 行内切开：挑切点
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# 3. 把片拼成段落，一段一篇文档
# ---------------------------------------------------------------------------

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


def read_txt(path: Path) -> Iterator[Item]:
    """纯文本：用一个或多个空行分隔的一段算一篇文档，编号是这段第一行的行号。

    这样“一段一段的文章”和“每行一句、句间空一行”的文件都能读；段内的换行原样保留，
    因为换行本身也是文本的一部分（诗歌、对话、代码都靠它）。
    只含空白字符（空格、制表符、全角空格）的行也算空行。超长的段、超长的行按
    MAX_TXT_BLOCK_CHARS 切开（见 `_TxtBlock.take_full`），任何时候内存里最多约两百万个字符。
    一行是不是空行，看它的第一片：第一片（1 MiB）全是空白、后面还有内容的行，算作正文。
    """
    block = _TxtBlock()
    for number, piece, ends in _iter_line_pieces(path):
        if isinstance(piece, BadRecord):
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
