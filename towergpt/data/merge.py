"""`towergpt data merge`：把几个文件（任何支持的格式）首尾相接，合成一个 .jsonl / merge files into one.

    towergpt data merge --input news.jsonl wiki.json book.txt reviews.parquet --out all.jsonl \\
        [--source-field source]

记录按输入的顺序原样写出（字段一个不少）；.txt 里空行分隔的每一段变成 `{"text": 段}`
（想按长度切块，先用 convert）。`--source-field source` 会在每条记录里加一个字段，写明它来自哪个文件，
之后 clean / dedup 的报告、抽查数据时就知道一条记录的出处。合并后通常再跑一次 shuffle，
否则训练时模型会先连着看完一个来源、再看下一个。
"""

from __future__ import annotations

import argparse

from towergpt.data.tool_io import RecordWriter, Report, check_inputs, iter_inputs_with_progress
from towergpt.errors import TowerGPTError


def main(args: argparse.Namespace) -> None:
    report = merge(args.input, args.out, source_field=args.source_field, field=args.field,
                   skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(report.summary())


def merge(inputs: list[str], out: str, source_field: str | None = None, field: str = "text",
          skip_bad: bool = False, overwrite: bool = False) -> Report:
    """依次读完 inputs 的每条记录写进 out；给了 source_field 就在每条记录里写上来源文件。返回报告。"""
    paths = check_inputs(inputs)
    report = Report("merge")
    per_file = {str(path): 0 for path in paths}
    with RecordWriter(out, paths, overwrite) as writer:
        for path, location, record in iter_inputs_with_progress(paths, "合并 / merging", field, skip_bad, report):
            source = str(path)
            if source_field is not None:
                record = _with_source(record, source_field, source, location)
            writer.write(record, location)
            per_file[source] += 1
            report.keep()
    for source, count in per_file.items():
        report.note(f"{source}: {count:,} 条 / records")
    return report


def _with_source(record: dict, source_field: str, source: str, location: str) -> dict:
    """在记录末尾加上来源字段；记录里已有同名字段时报错（悄悄覆盖就丢了它的数据）。"""
    if source_field in record:
        raise TowerGPTError(f"{location}: 记录里已经有字段 {source_field!r}，请用 --source-field 换一个名字"
                            f" / the record already has field {source_field!r}, choose another --source-field")
    return {**record, source_field: source}
