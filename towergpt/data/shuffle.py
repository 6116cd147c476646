"""`towergpt data shuffle`：打乱记录的顺序，文件比内存还大也行 / shuffle records, larger than memory.

    towergpt data shuffle --input all.jsonl --out shuffled.jsonl [--seed 0] [--memory-mb 256]

为什么要打乱？合并来的语料往往按来源、按时间排好了序。不打乱，模型会先连着学几个小时的新闻、
再连着学几个小时的小说，学到后面忘了前面。（prepare 之后训练时按窗口打乱，但那只在一个窗口的范围里；
文件级的打乱让验证集也混合了各个来源。）

文件装不进内存时怎么打乱？—— 两趟的“外部打乱”（external shuffle）：
    第一趟（分散 / scatter）：顺序读入每条记录，随机扔进 N 个临时“桶”文件之一（每条独立地、等概率地选桶）；
    第二趟（收拢 / gather）：一个桶一个桶地读进内存，在内存里打乱，依次写出。
    N 取得足够大，使每个桶都装得进 --memory-mb 的内存预算。
为什么结果是“真正均匀”的随机排列？每条记录去哪个桶是独立均匀的，桶内又是均匀打乱的：
任意一种排列出现的概率都相同（这是一个经典结论）。
如果某个桶运气不好还是太大（或者一开始估计的 N 偏小，例如 Parquet 压缩过，写成 JSON 后变大了），
就把这个桶再分散一次（递归），直到每个桶都装得下。所以内存上限总是成立的。

内存怎么估计？一个桶在内存里是一个“字节串的列表”：每行的字节数，加上每行约 LINE_OVERHEAD 字节的
Python 对象开销（bytes 对象头 33 字节 + 列表里的指针 8 字节，再留些余量）。
--seed 相同、输入相同、--memory-mb 相同，结果逐字节相同（换了内存预算，桶数不同，排列也就不同）。
临时文件放在输出文件旁边（同一块磁盘），需要与输入差不多大的空闲空间，结束（包括出错）时删除。
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from towergpt.data.tool_io import (RecordWriter, Report, check_inputs, encode_record,
                                   iter_inputs_with_progress)
from towergpt.errors import TowerGPTError

DEFAULT_MEMORY_MB = 256

# 一行在内存里除了它的字节本身，还要多少字节的 Python 开销（见模块说明）
LINE_OVERHEAD = 64

# 一次最多同时打开多少个桶文件（操作系统对打开的文件数有上限，常见的是 1024）
MAX_BUCKETS = 256

# 估计桶数时留的余量：随机分桶有大有小，让平均的桶比预算小一些，绝大多数桶就不必再分
BUCKET_SLACK = 1.3


def main(args: argparse.Namespace) -> None:
    report = shuffle(args.input, args.out, seed=args.seed, memory_mb=args.memory_mb, tmp_dir=args.tmp_dir,
                     field=args.field, skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(report.summary())


@dataclass
class _Bucket:
    """一个临时桶文件：路径、字节数、行数。"""

    path: Path
    size: int = 0
    lines: int = 0

    @property
    def memory(self) -> int:
        """整个桶读进内存大约要多少字节。"""
        return self.size + LINE_OVERHEAD * self.lines


class _Shuffler:
    """外部打乱的两趟：scatter（分散到桶）和 gather（逐桶打乱、写出）。"""

    def __init__(self, rng: random.Random, budget: int, work_dir: Path, writer: RecordWriter):
        self.rng = rng
        self.budget = budget
        self.work_dir = work_dir
        self.writer = writer
        self.leaf_buckets = 0     # 最终在内存里打乱过的桶数
        self.largest = 0          # 读进内存的最大的桶（估计的字节数）
        self._names = 0

    def new_buckets(self, count: int) -> tuple[list[_Bucket], list]:
        buckets, files = [], []
        for _ in range(count):
            self._names += 1
            bucket = _Bucket(self.work_dir / f"bucket_{self._names:06d}.jsonl")
            buckets.append(bucket)
            files.append(open(bucket.path, "wb"))
        return buckets, files

    def scatter(self, lines, count: int) -> list[_Bucket]:
        """把一行行（bytes，带换行）随机分到 count 个新桶里。"""
        buckets, files = self.new_buckets(count)
        try:
            for line in lines:
                index = self.rng.randrange(count)
                files[index].write(line)
                buckets[index].size += len(line)
                buckets[index].lines += 1
        finally:
            for handle in files:
                handle.close()
        return buckets

    def gather(self, buckets: list[_Bucket], progress) -> None:
        """依次处理每个桶：装得下就读进内存打乱写出，装不下就再分散一次（递归）。"""
        for bucket in buckets:
            if bucket.memory <= self.budget or bucket.lines <= 1:
                self._shuffle_in_memory(bucket, progress)
            else:
                count = min(MAX_BUCKETS, max(2, math.ceil(bucket.memory * BUCKET_SLACK / self.budget)))
                with open(bucket.path, "rb") as handle:
                    smaller = self.scatter(handle, count)
                bucket.path.unlink()
                self.gather(smaller, progress)

    def _shuffle_in_memory(self, bucket: _Bucket, progress) -> None:
        with open(bucket.path, "rb") as handle:
            lines = handle.readlines()
        self.rng.shuffle(lines)
        for line in lines:
            self.writer.write_line(line[:-1])  # 去掉换行，由 writer 决定行与行之间怎么连
        progress.update(bucket.size)
        self.leaf_buckets += 1
        self.largest = max(self.largest, bucket.memory)
        del lines
        bucket.path.unlink()


def shuffle(inputs: list[str], out: str, seed: int = 0, memory_mb: float = DEFAULT_MEMORY_MB,
            tmp_dir: str | None = None, field: str = "text", skip_bad: bool = False,
            overwrite: bool = False) -> Report:
    """把 inputs 的全部记录打乱后写进 out。返回报告；report.details 里有桶数和最大的桶。"""
    paths = check_inputs(inputs)
    if memory_mb <= 0:
        raise TowerGPTError(f"--memory-mb 必须大于 0，收到 {memory_mb} / --memory-mb must be positive")
    budget = int(memory_mb * 1_000_000)
    report = Report("shuffle")
    rng = random.Random(seed)
    total_input = sum(path.stat().st_size for path in paths)
    first_count = min(MAX_BUCKETS, max(1, math.ceil(total_input * BUCKET_SLACK / budget)))
    with RecordWriter(out, paths, overwrite) as writer:
        work_dir = Path(tempfile.mkdtemp(prefix=".shuffle-", dir=tmp_dir or writer.path.parent))
        try:
            shuffler = _Shuffler(rng, budget, work_dir, writer)
            records = iter_inputs_with_progress(paths, "分散 / scattering", field, skip_bad, report)
            buckets = shuffler.scatter(_encoded_lines(records, report), first_count)
            total = sum(bucket.size for bucket in buckets)
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, mininterval=0.5,
                      desc="打乱 / shuffling", disable=None, dynamic_ncols=True) as progress:
                shuffler.gather(buckets, progress)
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
    report.details.update(buckets=shuffler.leaf_buckets, largest_bucket_bytes=shuffler.largest,
                          memory_budget_bytes=budget, seed=seed)
    report.note(f"桶 / buckets: {shuffler.leaf_buckets}，最大的桶约 / largest bucket ≈ "
                f"{shuffler.largest / 1e6:.1f} MB（预算 / budget {budget / 1e6:.1f} MB），种子 / seed {seed}")
    return report


def _encoded_lines(records, report: Report):
    """(输入, 位置, 记录) -> 一行行编码好的 JSON（bytes，带换行）；每条都计为保留（打乱不丢记录）。"""
    for _, location, record in records:
        report.keep()
        yield encode_record(record, location) + b"\n"
