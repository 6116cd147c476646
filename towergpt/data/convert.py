"""`towergpt data convert`：格式转换 + 字段改名 / format conversion and field renames.

    towergpt data convert --input a.json    --out a.jsonl              # JSON 数组 -> JSONL
    towergpt data convert --input a.jsonl   --out a.json               # JSONL -> JSON 数组
    towergpt data convert --input book.txt  --out book.jsonl --max-chars 2000   # 纯文本 -> 按段落切块
    towergpt data convert --input a.parquet --out a.jsonl              # Parquet -> JSONL
    towergpt data convert --input a.jsonl   --out b.jsonl --rename content=text --rename title=标题

输出格式由 --out 的扩展名决定（.jsonl 或 .json）。全程流式：JSON 数组一个元素一个元素地解析（见 readers/json_array.py），边解析边写，
Parquet 按批读取，内存与文件大小无关。

纯文本怎么切成一条条记录（--max-chars，默认 2000 字）：
    1. 空行分隔的一段是一个“段落”，段落是最小单位，**不会在段落中间切开**；
    2. 相邻的段落依次拼进同一条记录（段落之间保留一个空行 "\\n\\n"），直到再拼一段就超过 --max-chars；
    3. 只有一个段落本身就超过 --max-chars 时，才把它在句末（。！？!?… 或换行、英文的 ". "）切开；
       连一句话都超长的（很少见），最后才硬切。
为什么要合并段落？很多文本一段只有一两句话，一句一条记录太碎：每条文档在训练时会各加一个 bos/eos，
模型看到的上下文也短。为什么不直接按字数硬切？硬切会把一句话劈成两半，模型学到的是半句话。
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Iterable, Iterator

from towergpt.data.readers import iter_texts, record_location
from towergpt.data.tool_io import (Progress, RecordWriter, Report, check_inputs,
                                   iter_input)
from towergpt.errors import TowerGPTError

DEFAULT_MAX_CHARS = 2000

# 段落之间用一个空行连接：与原文件的写法一致，分词器和模型都能看到“这里换了一段”
PARAGRAPH_JOINER = "\n\n"

# 句末：中文的 。！？…（可以连写，如“！？”、“……”），英文的 !?，后面可能跟着右引号、右括号；
# 英文的句号要求后面是空白（否则 3.14、www.a.com 会被切开）；换行也算一处可切的位置。
SENTENCE_END = re.compile(r"(?:[。！？!?…]+[”’\"'」』）)]*|\.(?=\s)|\n)")


def main(args: argparse.Namespace) -> None:
    report = convert(args.input, args.out, renames=args.rename, field=args.field, max_chars=args.max_chars,
                     skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(report.summary())


def convert(input_path: str, out: str, renames: Iterable[str] = (), field: str = "text",
            max_chars: int = DEFAULT_MAX_CHARS, skip_bad: bool = False, overwrite: bool = False) -> Report:
    """把一个文件转换成 .jsonl / .json，途中按 renames（"旧=新" 的列表）改字段名。返回报告。"""
    [path] = check_inputs([input_path])
    rename_map = parse_renames(renames)
    if max_chars < 1:
        raise TowerGPTError(f"--max-chars 必须 ≥ 1，收到 {max_chars} / --max-chars must be at least 1")
    report = Report("convert")
    counts = {old: 0 for old in rename_map}
    with RecordWriter(out, [path], overwrite) as writer, Progress([path], "转换 / converting") as progress:
        progress.start_file(path)
        for location, record in _records(path, field, max_chars, skip_bad, report):
            record = rename_fields(record, rename_map, location, counts)
            progress.advance(writer.write(record, location))
            report.keep()
    for old, new in rename_map.items():
        report.note(f"改名 / renamed {old} -> {new}: {counts[old]:,} 条 / records")
    return report


def _records(path: Path, field: str, max_chars: int, skip_bad: bool, report: Report) -> Iterator[tuple[str, dict]]:
    """txt：段落合并成块；其他格式：原样的整条记录。"""
    if path.suffix.lower() != ".txt":
        yield from iter_input(path, skip_bad=skip_bad, report=report)
        return
    paragraphs = iter_texts(path, skip_bad=skip_bad, on_bad=report.bad_record)
    for number, chunk in chunk_paragraphs(paragraphs, max_chars):
        yield record_location(path, number), {field: chunk}


# ---------------------------------------------------------------------------
# 字段改名
# ---------------------------------------------------------------------------

def parse_renames(renames: Iterable[str]) -> dict[str, str]:
    """["a=b", "c=d"] -> {"a": "b", "c": "d"}；写法不对、重名时说清楚。"""
    mapping: dict[str, str] = {}
    for item in renames:
        old, separator, new = item.partition("=")
        if not separator or not old or not new:
            raise TowerGPTError(f"--rename {item!r}: 写法是 旧字段=新字段，例如 --rename content=text"
                                f" / expected OLD=NEW, e.g. --rename content=text")
        if old in mapping:
            raise TowerGPTError(f"--rename: 字段 {old!r} 被改名了两次 / field {old!r} renamed twice")
        mapping[old] = new
    targets = list(mapping.values())
    if len(set(targets)) != len(targets):
        raise TowerGPTError(f"--rename: 两个字段改成了同一个名字 {targets} / two fields renamed to the same name")
    return mapping


def rename_fields(record: dict, mapping: dict[str, str], location: str, counts: dict[str, int]) -> dict:
    """按 mapping 改名，字段顺序不变；没有旧字段的记录原样通过。

    新名字已经被另一个（不改名的）字段占用时报错：悄悄覆盖就丢了那个字段的数据。
    """
    if not mapping or not any(old in record for old in mapping):
        return record
    renamed = {}
    for key, value in record.items():
        new_key = mapping.get(key, key)
        if new_key in renamed or (new_key != key and new_key in record and new_key not in mapping):
            raise TowerGPTError(f"{location}: 把 {key!r} 改名为 {new_key!r} 会覆盖已有的字段 {new_key!r}"
                                f" / renaming {key!r} to {new_key!r} would overwrite an existing field")
        if new_key != key:
            counts[key] += 1
        renamed[new_key] = value
    return renamed


# ---------------------------------------------------------------------------
# 纯文本：段落 -> 不超过 max_chars 的块
# ---------------------------------------------------------------------------

def chunk_paragraphs(paragraphs: Iterable[tuple[int, str]], max_chars: int) -> Iterator[tuple[int, str]]:
    """把 `(首行行号, 段落)` 依次拼成不超过 max_chars 字的块，产出 `(块首行号, 块)`。

    段落之间用 PARAGRAPH_JOINER 连接（连接符也计入字数）。内存里最多只有一块的内容。
    """
    block: list[str] = []
    block_chars = 0
    first_line = 0
    for number, paragraph in paragraphs:
        for piece in split_long_paragraph(paragraph, max_chars):
            added = len(piece) + (len(PARAGRAPH_JOINER) if block else 0)
            if block and block_chars + added > max_chars:
                yield first_line, PARAGRAPH_JOINER.join(block)
                block, block_chars, added = [], 0, len(piece)
            if not block:
                first_line = number
            block.append(piece)
            block_chars += added
    if block:
        yield first_line, PARAGRAPH_JOINER.join(block)


def split_long_paragraph(paragraph: str, max_chars: int) -> list[str]:
    """不超长的段落原样返回 [段落]；超长的在句末切成若干片，每片不超过 max_chars。

    做法：先在每个句末之后切成一句一句（句末标点留在句子里），再把句子依次装进片里，
    装不下就开新的一片；一句话本身超长时才按 max_chars 硬切。切口两边的空白去掉。
    """
    if len(paragraph) <= max_chars:
        return [paragraph]
    pieces: list[str] = []
    current = ""
    for sentence in _sentences(paragraph):
        if current and len(current) + len(sentence) > max_chars:
            pieces.append(current)
            current = ""
        while len(sentence) > max_chars:  # 一句话就超长：最后的办法，硬切
            pieces.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        current += sentence
    if current:
        pieces.append(current)
    stripped = (piece.strip() for piece in pieces)
    return [piece for piece in stripped if piece]


def _sentences(text: str) -> Iterator[str]:
    """在每个句末之后切开；拼起来与原文一字不差。"""
    start = 0
    for match in SENTENCE_END.finditer(text):
        yield text[start:match.end()]
        start = match.end()
    if start < len(text):
        yield text[start:]
