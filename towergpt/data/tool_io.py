"""数据工具（convert / merge / shuffle / clean / dedup）共用的三件事：读输入、写输出、报告。

1. 读：`iter_input(path)` 把任何支持的格式（.jsonl .json .parquet .txt）流式读成 `(位置, 记录 dict)`。
   结构化文件的每条记录原样交出（多余的字段一个不丢）；.txt 里空行分隔的每一段变成 `{"text": 段}`。
   坏记录默认立即报错（报出 文件:行号 和原因）；`--skip-bad` 时跳过并计入报告。
2. 写：`RecordWriter` 先写到同目录下的临时文件，全部成功后才改名（rename）成目标文件。
   所以工具中途出错、被 Ctrl-C 打断，都不会留下“写了一半”的输出，也不会毁掉已有的文件。
   输出已存在时拒绝，除非 `--overwrite`；输出与某个输入是同一个文件时无论如何都拒绝
   （边读边覆盖同一个文件，读到的就是自己刚写的东西，数据会被毁掉）。
3. 报告：`Report` 数清楚保留了多少条、丢掉了多少条、各因为什么，最后打印出来。
   数据工具的原则：**绝不悄悄丢数据**——丢了就要说出丢了几条、为什么。

本模块顶层只 import 标准库和 towergpt 自己的轻量模块，`towergpt --help` 因此仍然很快。
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from towergpt.data.readers import check_input, iter_records, iter_texts, record_location
from towergpt.errors import TowerGPTError

# 输出文件支持的扩展名：.jsonl（每行一条，推荐）或 .json（一个 JSON 数组）
OUTPUT_SUFFIXES = (".jsonl", ".json")

# 报告里每种丢弃原因最多列出几个位置作为例子（全列出来会刷屏）
EXAMPLES_PER_REASON = 3


# ---------------------------------------------------------------------------
# 读
# ---------------------------------------------------------------------------

def iter_input(path: str | os.PathLike, text_field: str = "text", skip_bad: bool = False,
               report: "Report | None" = None) -> Iterator[tuple[str, dict]]:
    """流式读取一个输入文件，逐条产出 `(位置, 记录)`；位置形如 `a.jsonl:17`，用于报错和报告。

    .txt 没有“字段”可言：空行分隔的每一段变成 `{text_field: 段}`（段内换行保留）。
    skip_bad=True 时坏记录不报错，而是记进 report 的丢弃原因“坏记录”。
    """
    path = check_input(path)
    on_bad = report.bad_record if report is not None else None
    # 位置的写法（"a.jsonl:17"、"a.json 记录/record 17"、"a.parquet 行/row 17"）都是“前缀 + 编号”，
    # 前缀每个文件只算一次：每条记录都调用 record_location 要多花几秒（几百万条时）
    prefix = record_location(path, 0)[:-1]
    if path.suffix.lower() == ".txt":
        for number, text in iter_texts(path, skip_bad=skip_bad, on_bad=on_bad):
            yield f"{prefix}{number}", {text_field: text}
    else:
        for number, record in iter_records(path, skip_bad=skip_bad, on_bad=on_bad):
            yield f"{prefix}{number}", record


def check_inputs(paths: list[str]) -> list[Path]:
    """开工前先检查全部输入（存在、是文件、扩展名认识），免得处理了半天才发现最后一个文件名写错了。"""
    return [check_input(path) for path in paths]


# ---------------------------------------------------------------------------
# 写
# ---------------------------------------------------------------------------

class RecordWriter:
    """原子地写出一个 .jsonl（或 .json 数组）文件：先写临时文件，成功后改名。

    用法：
        with RecordWriter(out, inputs, overwrite) as writer:
            writer.write(record, location)
    `with` 块正常结束才改名；块里抛出任何异常都会删掉临时文件，原有的 out（如果有）毫发无损。
    记录用 `ensure_ascii=False` 写出：中文就是中文，而不是 `\\u4e2d\\u6587`（文件小一半，人也读得懂）。
    """

    def __init__(self, out: str | os.PathLike, inputs: list[Path], overwrite: bool = False):
        self.path = Path(out)
        check_output(self.path, inputs, overwrite)
        self.array = self.path.suffix.lower() == ".json"
        # 临时文件放在同一个目录：同一个文件系统里 os.replace 是原子操作（要么旧文件，要么新文件）
        self.temporary = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}"
        self.count = 0
        self.bytes = 0
        self._file = None

    def __enter__(self) -> "RecordWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.temporary, "wb")
        if self.array:
            self._file.write(b"[")
        return self

    def write(self, record, location: str) -> int:
        """写一条记录，返回写了多少字节；记录写不成 JSON 时报出它的位置。"""
        return self.write_line(encode_record(record, location))

    def write_line(self, line: bytes) -> int:
        """写一条已经编码好的 JSON（不带换行），返回字节数。shuffle 搬运现成的行时用它，省去再解析一遍。"""
        if self.array:
            line = (b"\n" if self.count == 0 else b",\n") + line
        else:
            line = line + b"\n"
        self._file.write(line)
        self.count += 1
        self.bytes += len(line)
        return len(line)

    def __exit__(self, error_type, error, traceback) -> None:
        try:
            if error_type is None and self.array:
                self._file.write(b"\n]\n")
            self._file.close()
            if error_type is None:
                os.replace(self.temporary, self.path)
        finally:
            if self.temporary.exists():
                self.temporary.unlink()


def check_output(out: Path, inputs: list[Path], overwrite: bool) -> None:
    """输出路径的三条规矩：扩展名是 .jsonl/.json；不能是某个输入；已存在时需要 --overwrite。"""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise TowerGPTError(f"{out}: 输出文件的扩展名必须是 .jsonl 或 .json（JSON 数组）"
                            f" / the output must end in .jsonl or .json")
    if out.is_dir():
        raise TowerGPTError(f"{out} 是目录，请给出输出文件名 / is a directory, expected a file name")
    for path in inputs:
        if _same_file(out, path):
            raise TowerGPTError(f"{out}: 输出不能与输入是同一个文件（边读边写会毁掉数据），请换一个输出文件名"
                                f" / the output must not be one of the inputs")
    if out.exists() and not overwrite:
        raise TowerGPTError(f"{out} 已存在；要替换它请加 --overwrite / already exists, add --overwrite to replace it")


def _same_file(first: Path, second: Path) -> bool:
    """两个路径是不是同一个文件（考虑相对路径、符号链接、硬链接）。"""
    if first.exists() and second.exists():
        return os.path.samefile(first, second)
    return first.resolve() == second.resolve()


def encode_record(record, location: str) -> bytes:
    """一条记录 -> 一行 UTF-8 编码的 JSON（不带换行）。写不成 JSON 的值报出位置和原因，而不是 traceback。"""
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False, default=_json_default)
        return text.encode("utf-8")
    except ValueError as error:  # allow_nan=False：NaN / Infinity 不是合法的 JSON
        raise TowerGPTError(f"{location}: 无法写成合法的 JSON（{error}）/ cannot be written as JSON: {error}") from None
    except TypeError as error:
        raise TowerGPTError(f"{location}: 含有 JSON 表示不了的值 / holds a value JSON cannot represent: {error}") from None
    except UnicodeEncodeError:
        raise TowerGPTError(f"{location}: 含有不成对的 \\ud800-\\udfff 转义（孤立代理项），无法编码成 UTF-8"
                            f" / contains a lone surrogate, not encodable as UTF-8") from None


def _json_default(value):
    """JSON 没有的类型（多半来自 Parquet）：日期时间写成 ISO 字符串，Decimal 写成字符串（不丢精度），
    UTF-8 的二进制解码成字符串；其余的交给 json 报 TypeError。"""
    if isinstance(value, (datetime.date, datetime.time)):  # datetime.datetime 是 date 的子类
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise TypeError("二进制数据不是 UTF-8 文本 / binary value is not UTF-8 text") from None
    raise TypeError(f"{type(value).__name__} 类型 / type {type(value).__name__}")


# ---------------------------------------------------------------------------
# 报告与进度
# ---------------------------------------------------------------------------

class Report:
    """数清楚每条记录的去向：保留，或者因为某个原因丢弃（每种原因记几个位置当例子）。"""

    def __init__(self, tool: str):
        self.tool = tool
        self.kept = 0
        self.dropped: Counter = Counter()
        self.examples: dict[str, list[str]] = {}
        self.notes: list[str] = []   # 工具自己想补充的行，例如“分成了 12 个桶”
        self.details: dict = {}      # 工具自己的数字（桶数、重复对数……），测试和脚本读它

    def keep(self) -> None:
        self.kept += 1

    def drop(self, reason: str, location: str) -> None:
        """丢弃一条记录。reason 是给人看的原因（中文 / English），同一原因的计数合在一起。"""
        self.dropped[reason] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(location)

    def bad_record(self, location: str, reason: str) -> None:
        """readers 的 on_bad 回调：--skip-bad 时的坏记录也是一种丢弃。"""
        self.drop("坏记录 / bad record", f"{location}（{reason}）")

    def note(self, line: str) -> None:
        self.notes.append(line)

    @property
    def total_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """多行的摘要，例如：
            clean: 保留 / kept 9,120，丢弃 / dropped 880
              太短 / too short (< 20 chars): 800  例 / e.g. a.jsonl:3, a.jsonl:17
        """
        lines = [f"{self.tool}: 保留 / kept {self.kept:,}，丢弃 / dropped {self.total_dropped:,}"]
        for reason, count in self.dropped.most_common():
            examples = ", ".join(self.examples.get(reason, []))
            lines.append(f"  {reason}: {count:,}  例 / e.g. {examples}")
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "dropped": dict(self.dropped), **self.details}


class Progress:
    """按输入字节走的进度条（tqdm）。

    读取器不告诉我们文件读到了哪个字节，所以文件内部用“这条记录写出来有多少字节”近似，
    每读完一个文件再对齐到文件的真实大小：MB/s 和剩余时间因此大致可信。
    标准错误不是终端（重定向到文件、管道、测试里）时不画进度条（tqdm 的 disable=None）。
    """

    def __init__(self, paths: list[Path], description: str):
        self.total = sum(path.stat().st_size for path in paths)
        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1000, mininterval=0.5,
                        desc=description, disable=None, dynamic_ncols=True)
        self.file_end = 0

    def start_file(self, path: Path) -> None:
        self.finish_file()
        self.file_end += path.stat().st_size

    def advance(self, size: int) -> None:
        self.bar.update(max(0, min(size, self.file_end - self.bar.n)))

    def finish_file(self) -> None:
        self.bar.update(max(0, self.file_end - self.bar.n))

    def close(self) -> None:
        self.finish_file()
        self.bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def iter_inputs_with_progress(paths: list[Path], description: str, text_field: str, skip_bad: bool,
                              report: Report) -> Iterator[tuple[Path, str, dict]]:
    """依次流式读取多个输入（带进度条），产出 `(输入文件, 位置, 记录)`。进度按记录的大致字节数推进。"""
    with Progress(paths, description) as progress:
        for path in paths:
            progress.start_file(path)
            for location, record in iter_input(path, text_field, skip_bad, report):
                progress.advance(_approximate_size(record))
                yield path, location, record


def _approximate_size(record: dict) -> int:
    """一条记录在文件里大约占多少字节：只数字符串值（便宜），用于推进进度条。"""
    size = 2
    for key, value in record.items():
        size += len(key) + 4
        size += len(value) * 2 if isinstance(value, str) else 16
    return size
