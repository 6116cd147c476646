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
    - .json    编号是它在数组里的序号（从 1 开始）。ijson 是流式解析器，给不出行号，
               所以报错时说“记录/record N”；
    - .parquet 编号是行序号（从 1 开始）。

出错时的原则：用户一眼就能知道是哪个文件、哪一行、哪个字段、为什么错、怎么改。
所以所有用户造成的错误都变成一条 `TowerGPTError`，而不是一长串 traceback。
对于海量“网上扒来的”语料，坏记录在所难免：`skip_bad=True` 时，坏记录不会中断读取，
而是交给回调 `on_bad(位置, 原因)` 记下来，然后跳过。
"""

from __future__ import annotations

import json
import os
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
MAX_TXT_BLOCK_CHARS = 1_000_000

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
        .json     JSON 数组里的每个对象（ijson 流式解析），编号是序号（从 1 开始）；
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
# 逐行读取（.txt 和 .jsonl 共用）
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


def _utf8_reason(err: UnicodeDecodeError) -> str:
    """把 UnicodeDecodeError 讲成人话：第几个字节、是什么字节、可能的原因。"""
    bad = err.object[err.start:err.end]
    return (
        f"本行第 {err.start + 1} 个字节起不是合法的 UTF-8（{bad!r}），文件可能是 GBK 等其他编码，"
        f"请先转成 UTF-8 / not valid UTF-8 at byte {err.start + 1} of the line ({bad!r}); convert the file to UTF-8"
    )


# ---------------------------------------------------------------------------
# 四种格式的读取器：每个都是生成器，产出 (编号, 文本) 或 _BadRecord
# ---------------------------------------------------------------------------

def _read_txt(path: Path) -> Iterator[_Item]:
    """纯文本：用一个或多个空行分隔的一段算一篇文档，编号是这段第一行的行号。

    这样“一段一段的文章”和“每行一句、句间空一行”的文件都能读；段内的换行原样保留，
    因为换行本身也是文本的一部分（诗歌、对话、代码都靠它）。
    只含空白字符（空格、制表符、全角空格）的行也算空行。
    """
    block: list[str] = []
    block_chars = 0
    first_line = 0
    for number, line in _iter_lines(path):
        if isinstance(line, _BadRecord):
            yield line
            continue
        if line.strip():
            if not block:
                first_line = number
            block.append(line)
            block_chars += len(line) + 1
            if block_chars >= MAX_TXT_BLOCK_CHARS:  # 超长的段先交出去，保证内存有界
                yield first_line, "\n".join(block)
                block, block_chars = [], 0
        elif block:
            yield first_line, "\n".join(block)
            block, block_chars = [], 0
    if block:
        yield first_line, "\n".join(block)


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
        except json.JSONDecodeError as err:
            yield _BadRecord(
                where(path, number),
                f"不是合法的 JSON：{err.msg}（第 {err.colno} 列）/ invalid JSON: {err.msg} (column {err.colno})",
            )
            continue
        # 便宜的子串检查：原始行里没有 "\u" 转义就不可能解析出孤立代理项，取值步骤可以省掉那次检查
        yield extract(record, number, where(path, number), "\\u" in line)


def _read_json_array(path: Path, extract: Extract) -> Iterator[_Item]:
    """JSON 数组 `[{...}, {...}, ...]`：用 ijson 流式解析，从不把整个数组读进内存。

    `json.load` 会先把整个文件解析成一个巨大的 Python 列表——几 GB 的文件会占用
    好几倍的内存。ijson 像读磁带一样从前往后扫，每凑齐数组里的一个元素（前缀 "item"）
    就交出来，用完即弃。
    """
    import ijson  # 只有读 .json 才需要，延迟导入

    with open(path, "rb") as f:
        _seek_to_json_array(f, path)
        count = 0
        try:
            # use_float=True：数字解析成 float 而不是 Decimal，报类型时更直观
            for count, record in enumerate(ijson.items(f, "item", use_float=True), start=1):
                # 流式解析器不给原文，无从做“有没有 \u 转义”的快速判断，所以总是请取值步骤检查
                yield extract(record, count, f"{path} 记录/record {count}", True)
        except ijson.JSONError as err:
            # 流式解析器一旦遇到语法错误就无法继续，也找不回下一条记录的开头，
            # 所以这里即使 skip_bad 也只能停下来报错。
            raise TowerGPTError(_json_array_error(path, count, err)) from None


def _seek_to_json_array(f, path: Path) -> None:
    """跳过 BOM 和开头的空白，确认顶层是数组 `[`，再把读取位置退回到 `[` 上。

    为什么要专门检查？如果顶层是一个对象，或者其实是每行一个对象的 JSONL 文件
    却用了 .json 扩展名，ijson 会“什么也没找到”而安静地产出 0 条记录——
    用户只会莫名其妙地得到一个空语料。这里提前说清楚。
    """
    if f.read(len(_UTF8_BOM)) != _UTF8_BOM:
        f.seek(0)
    while True:
        char = f.read(1)
        if not char:
            raise TowerGPTError(f"{path}: 文件是空的，不是 JSON 数组 / empty file, expected a JSON array")
        if not char.isspace():
            break
    if char != b"[":
        hint = "；如果每行是一个对象，请把扩展名改成 .jsonl / if it holds one object per line, rename it to .jsonl"
        raise TowerGPTError(
            f"{path}: .json 文件的顶层必须是数组 [...]，这里以 {char.decode('latin-1')!r} 开头"
            f" / a .json file must hold a JSON array{hint}"
        )
    f.seek(-1, os.SEEK_CUR)


def _json_array_error(path: Path, count: int, err: Exception) -> str:
    """把 ijson 的多行报错压成一行：位置（第几条记录之后）+ 原因。"""
    text = err.args[0] if err.args else str(err)
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    reason = str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
    if "UTF8" in reason or "UTF-8" in reason:
        reason = f"不是合法的 UTF-8，请先把文件转成 UTF-8 / {reason}"
    else:
        reason = f"不是合法的 JSON / invalid JSON: {reason}"
    return f"{path} 记录/record {count} 之后 / after record {count}: {reason}"


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
