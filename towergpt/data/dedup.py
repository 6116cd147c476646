"""`towergpt data dedup`：去掉重复的记录（完全相同 + MinHash 近似重复）/ exact and near-duplicate removal.

    towergpt data dedup --input clean.jsonl --out dedup.jsonl \\
        [--field text] [--threshold 0.8] [--num-perm 128] [--ngram 5] [--exact-only] [--pairs pairs.jsonl]

每组重复只保留**第一次出现**的那条（按输入顺序），其余丢弃；`--pairs` 把每一对
（被丢的, 保留的, exact|near, 估计的相似度）写进一个 JSONL 文件，方便抽查阈值合不合适。

为什么要去重？网上扒来的语料里，同一篇新闻被几十个网站转载、只改了标题或一个字；模型把它看几十遍，
就会把它背下来（生成时原文照搬），而别的文本相对看得少了。

一、完全重复（exact）：把文本规整（NFKC、大小写折叠、连续空白合成一个空格）后算一个 128 位的哈希
    （blake2b），见过这个哈希就是重复。每条保留的记录只记一个哈希（放在字典里），约 130 字节。

二、近似重复（near）：MinHash + LSH。三个概念：
    1. 瓦片（shingle）：把文本切成所有相邻 n 个字的片段（--ngram，默认 5），
       “今天天气很好” 的 3 字瓦片是 {今天天, 天天气, 天气很, 气很好}。两段文本的相似度用
       Jaccard 相似度衡量：|A ∩ B| / |A ∪ B|，即共有的瓦片占全部瓦片的比例。改一个字只影响 n 片瓦片，
       所以一篇几百字的文章改一个字，相似度仍在 0.95 以上；两篇不同的文章几乎没有共同的 5 字瓦片，相似度接近 0。
    2. MinHash（最小哈希）：两两比较所有文章的瓦片集合太慢（N² 对）。取一个随机哈希函数 h，
       对每篇文章算 min(h(瓦片))。一个漂亮的事实：（对理想的随机哈希而言）两篇文章的这个最小值相等的概率，恰好等于它们的
       Jaccard 相似度（最小值落在共有瓦片上的概率）。于是用 --num-perm 个（默认 128）不同的哈希函数，
       每篇文章得到 128 个最小值，叫“签名”；两个签名有多大比例的位置相等，就是相似度的估计。
       签名是固定长度的（128 × 4 字节 = 512 字节），与文章长短无关。
       这里的哈希函数是“乘加移位”：h(x) = (a·x + b) mod 2⁶⁴ 的高 32 位，a、b 是随机数（--seed），
       用 numpy 对所有瓦片、所有哈希函数一次算完。
    3. LSH（局部敏感哈希）的“分段”（bands）：即使有签名，和每篇已保留的文章一一比较仍是 N²。
       把 128 个数分成 b 段、每段 r 个（b·r ≤ 128）。两篇文章只要有**一段完全相同**，就成为“候选”，
       再用签名估计相似度、确认是否 ≥ --threshold。相似度为 s 的两篇文章成为候选的概率是 1 - (1 - s^r)^b：
       一条 S 形曲线，在阈值附近陡然上升。b、r 由程序根据阈值自动选（让漏掉的和误报的面积之和最小）。
       每段的内容放进一个字典（段内容的哈希 -> 保留记录的编号），查找候选是 O(1)。

内存（都只与**保留下来的记录数**成正比，与文本长短无关；每条文本读完就扔）。实测，默认参数：
    完全去重                     约 130 字节 / 条（16 字节的哈希 + 字典的开销）；
    近似去重                     另加约 1.5 KB / 条：签名 4 × num_perm = 512 字节（签名表按需加倍扩容，
                                 平均再多约一半），加上每段一个字典项约 90 字节 × b 段（阈值 0.8 时 b = 9）。
                                 一百万条约 1.6 GB，一千万条约 16 GB。
    --pairs                      另加每条约 100 字节（记住保留记录的位置，写重复对时要用）。
语料太大时可以先 --exact-only，或调小 --num-perm（估计会粗一些），或按来源分开去重。
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import unicodedata
from pathlib import Path

import numpy as np

from towergpt.data.clean import find_text_slots, slots_text
from towergpt.data.tool_io import RecordWriter, Report, check_inputs, iter_inputs_with_progress
from towergpt.errors import TowerGPTError

DEFAULT_THRESHOLD = 0.8
DEFAULT_NUM_PERM = 128
DEFAULT_NGRAM = 5

# 一次给多少片瓦片算全部哈希：矩阵 (SHINGLE_CHUNK, num_perm) 个 uint64，1024 × 128 × 8 = 1 MB。
# 分块是为了让一篇几十万字的长文也不会一次占用几百 MB；1 MB 左右的块正好待在 CPU 缓存里，算得最快。
SHINGLE_CHUNK = 1024


def main(args: argparse.Namespace) -> None:
    report = dedup(args.input, args.out, field=args.field, threshold=args.threshold, num_perm=args.num_perm,
                   ngram=args.ngram, seed=args.seed, exact_only=args.exact_only, pairs=args.pairs,
                   skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(report.summary())


def dedup(inputs: list[str], out: str, field: str = "text", threshold: float = DEFAULT_THRESHOLD,
          num_perm: int = DEFAULT_NUM_PERM, ngram: int = DEFAULT_NGRAM, seed: int = 0, exact_only: bool = False,
          pairs: str | None = None, skip_bad: bool = False, overwrite: bool = False) -> Report:
    """去掉 inputs 里的重复记录（保留第一次出现的），写进 out。返回报告。"""
    _check_parameters(threshold, num_perm, ngram)
    paths = check_inputs(inputs)
    report = Report("dedup")
    exact_seen: dict[bytes, int] = {}          # 规整后文本的哈希 -> 保留记录的编号
    index = None if exact_only else MinHashIndex(num_perm, ngram, threshold, seed)
    kept_locations: list[str] | None = [] if pairs else None
    if pairs and Path(pairs).resolve() == Path(out).resolve():
        raise TowerGPTError(f"--pairs 不能与 --out 是同一个文件 / --pairs must differ from --out: {pairs}")
    pair_writer = RecordWriter(pairs, paths, overwrite) if pairs else None
    with RecordWriter(out, paths, overwrite) as writer, (pair_writer or contextlib.nullcontext()):
        for _, location, record in iter_inputs_with_progress(paths, "去重 / deduplicating", field, skip_bad, report):
            slots = find_text_slots(record, field, location, skip_bad, report)
            if slots is None:
                continue
            text = normalize_for_dedup(slots_text(slots))
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            duplicate = _find_duplicate(digest, text, exact_seen, index)
            if duplicate is not None:
                kind, kept_number, similarity = duplicate
                report.drop(f"{'完全重复 / exact' if kind == 'exact' else '近似重复 / near'} duplicate", location)
                if pair_writer is not None:
                    pair_writer.write({"dropped": location, "kept": kept_locations[kept_number], "kind": kind,
                                       "similarity": round(similarity, 4)}, location)
                continue
            number = report.kept
            exact_seen[digest] = number
            if index is not None:
                index.add(text, number)
            if kept_locations is not None:
                kept_locations.append(location)
            writer.write(record, location)
            report.keep()
    if index is not None:
        report.details.update(bands=index.bands, rows=index.rows)
        report.note(f"MinHash: num_perm={num_perm}, ngram={ngram}, threshold={threshold}, "
                    f"LSH {index.bands} 段 / bands × {index.rows} 行 / rows")
    return report


def _check_parameters(threshold: float, num_perm: int, ngram: int) -> None:
    if not 0.0 < threshold <= 1.0:
        raise TowerGPTError(f"--threshold 必须在 (0, 1] 之间，收到 {threshold} / --threshold must be within (0, 1]")
    if num_perm < 2:
        raise TowerGPTError(f"--num-perm 至少是 2，收到 {num_perm} / --num-perm must be at least 2")
    if ngram < 1:
        raise TowerGPTError(f"--ngram 至少是 1，收到 {ngram} / --ngram must be at least 1")


def _find_duplicate(digest: bytes, text: str, exact_seen: dict, index: "MinHashIndex | None"):
    """先查完全重复，再查近似重复；是重复就返回 (种类, 保留记录的编号, 相似度)，否则 None。"""
    if digest in exact_seen:
        return "exact", exact_seen[digest], 1.0
    if index is not None:
        match = index.query(text)
        if match is not None:
            return ("near", *match)
    return None


def normalize_for_dedup(text: str) -> str:
    """去重时比较的文本：NFKC（全角半角视为相同）、大小写折叠、连续空白合成一个空格、去掉首尾空白。"""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


# ---------------------------------------------------------------------------
# MinHash + LSH
# ---------------------------------------------------------------------------

class MinHashIndex:
    """保留下来的文本的 MinHash 签名 + LSH 分段字典；query 找近似重复，add 加入一篇保留的文本。"""

    def __init__(self, num_perm: int, ngram: int, threshold: float, seed: int = 0):
        self.np = np
        self.num_perm = num_perm
        self.ngram = ngram
        self.threshold = threshold
        self.bands, self.rows = choose_bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        # 乘加移位哈希的参数：a 取奇数（偶数会丢掉最低位的信息）
        self.multipliers = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | np.uint64(1)
        self.increments = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False)
        self.tables: list[dict] = [{} for _ in range(self.bands)]
        self.signatures = np.empty((1024, num_perm), dtype=np.uint32)   # 按需加倍扩容
        self.numbers: list[int] = []      # signatures 第 i 行属于哪条保留记录
        self._pending = None              # query 算好的签名，紧接着的 add 直接用，省得再算一遍

    def signature(self, text: str):
        """文本 -> MinHash 签名（num_perm 个 uint32）；没有瓦片（空文本）时返回 None。"""
        np = self.np
        shingles = shingle_hashes(text, self.ngram)
        if shingles.size == 0:
            return None
        signature = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        hashed = np.empty((min(SHINGLE_CHUNK, shingles.size), self.num_perm), dtype=np.uint64)
        for start in range(0, shingles.size, SHINGLE_CHUNK):
            block = shingles[start:start + SHINGLE_CHUNK, None]                 # (块, 1)
            values = hashed[:len(block)]                                         # (块, num_perm)
            np.multiply(block, self.multipliers, out=values)                     # a·x，uint64 自然回绕（mod 2⁶⁴）
            values += self.increments                                            # + b
            np.minimum(signature, values.min(axis=0), out=signature)
        # 取高 32 位。右移保持大小顺序，所以“先取最小、再右移”与“先右移、再取最小”结果相同，却省了一步
        signature >>= np.uint64(32)
        return signature.astype(np.uint32)

    def band_keys(self, signature) -> list[int]:
        """签名切成 bands 段，每段 rows 个数；每段的字节内容的哈希就是这一段的“桶号”。

        Python 的 hash() 每次运行的结果不同（防攻击的随机化），但这不影响去重结果：
        桶号只用来找候选，候选都要再用签名确认，偶然的哈希碰撞只多一次比较。
        """
        raw, width = signature.tobytes(), self.rows * signature.itemsize   # 切 bytes 比切 numpy 数组便宜
        return [hash(raw[band * width:(band + 1) * width]) for band in range(self.bands)]

    def query(self, text: str) -> tuple[int, float] | None:
        """找一篇已保留的、估计相似度 ≥ 阈值的文本：返回 (它的记录编号, 相似度)，没有则 None。

        候选 = 至少有一段与本文完全相同的已保留文本；再逐个用签名估计相似度，取最相似的那个。
        """
        np = self.np
        signature = self.signature(text)
        self._pending = (text, signature)
        if signature is None:
            return None
        candidates = set()
        for table, key in zip(self.tables, self.band_keys(signature)):
            bucket = table.get(key)
            if bucket is not None:
                candidates.update(bucket if isinstance(bucket, list) else (bucket,))
        if not candidates:
            return None
        rows = np.fromiter(sorted(candidates), dtype=np.int64)
        similarity = (self.signatures[rows] == signature).mean(axis=1)   # 相等的位置占的比例
        best = int(np.argmax(similarity))   # 并列时取最早保留的那条
        if similarity[best] < self.threshold:
            return None
        return self.numbers[rows[best]], float(similarity[best])

    def add(self, text: str, number: int) -> None:
        """把一篇保留下来的文本加入索引（它的签名进签名表，每段进对应的字典）。"""
        signature = self._pending[1] if self._pending and self._pending[0] is text else self.signature(text)
        self._pending = None
        if signature is None:
            return
        row = len(self.numbers)
        if row == len(self.signatures):
            self.signatures = self.np.concatenate([self.signatures, self.np.empty_like(self.signatures)])
        self.signatures[row] = signature
        self.numbers.append(number)
        for table, key in zip(self.tables, self.band_keys(signature)):
            bucket = table.get(key)
            if bucket is None:
                table[key] = row
            elif isinstance(bucket, list):
                bucket.append(row)
            else:
                table[key] = [bucket, row]


def shingle_hashes(text: str, ngram: int):
    """文本里所有相邻 ngram 个字符的瓦片 -> 每片一个 32 位哈希（numpy uint64 数组）。

    不在 Python 里逐个切字符串（慢），而是把文本变成码位数组，用“滚动的多项式”一次算出所有瓦片：
        h = ((c[i]·P + c[i+1])·P + c[i+2])·P + ...   （mod 2⁶⁴）
    再用 splitmix64 的收尾步骤把比特充分打散，取高 32 位。文本不足 ngram 个字时，整段就是一片瓦片。
    重复出现的瓦片不必先去掉：集合的最小值和“带重复的列表”的最小值是同一个数。
    """
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if codes.size == 0:
        return codes
    width = min(ngram, codes.size)
    count = codes.size - width + 1
    hashes = np.zeros(count, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for offset in range(width):
        hashes = hashes * prime + codes[offset:offset + count]
    hashes ^= hashes >> np.uint64(30)
    hashes *= np.uint64(0xBF58476D1CE4E5B9)
    hashes ^= hashes >> np.uint64(27)
    hashes *= np.uint64(0x94D049BB133111EB)
    hashes ^= hashes >> np.uint64(31)
    return hashes >> np.uint64(32)


def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """选 LSH 的段数 b 和每段行数 r（b·r ≤ num_perm）。

    相似度为 s 的一对成为候选的概率 P(s) = 1 - (1 - s^r)^b。
    误报（s < 阈值却成了候选）的面积 = ∫₀^阈值 P(s) ds，漏报的面积 = ∫_阈值^1 (1 - P(s)) ds，
    取两者之和最小的 (b, r)。误报只多花一次签名比较，漏报才是真的漏掉重复。
    """
    grid = np.linspace(0.0, 1.0, 501)
    below, above = grid[grid <= threshold], grid[grid >= threshold]
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = _integrate(1 - (1 - below ** rows) ** bands, below)
            false_negative = _integrate((1 - above ** rows) ** bands, above)
            if false_positive + false_negative < best_error:
                best, best_error = (bands, rows), false_positive + false_negative
    return best


def _integrate(values, grid) -> float:
    """梯形法求积分（numpy 1.x 叫 trapz、2.x 叫 trapezoid，自己写一行免得分版本）。"""
    if len(grid) < 2:
        return 0.0
    return float(((values[1:] + values[:-1]) * (grid[1:] - grid[:-1])).sum() / 2)
