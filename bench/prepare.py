"""`towergpt data prepare` 的吞吐与内存：10 MB 和 200 MB 的合成 JSONL 语料。

    python bench/prepare.py                    # 约 1–2 分钟；语料与输出放在临时目录，跑完删除
    python bench/prepare.py --sizes-mb 10,200 --workers 2

量了什么：
    baseline_mb_s   基线：单进程、单线程逐篇 Tokenizer.encode 的速度（MB/s，按 UTF-8 字节算；
                    在每次 prepare 之前和之后各量一次取平均）
    prepare_mb_s    `towergpt data prepare --workers N` 整条命令（读 JSON、分词、写分片）的速度
    efficiency      prepare_mb_s / (N × baseline_mb_s)：目标 ≥ 0.8
    peak_rss_mb     整个进程树（主进程 + 分词子进程）常驻内存之和的峰值：目标 < 500 MB，且不随语料变大
合成语料：内置《人民日报》的段落随机抽取、拼成约 1500 字的文档（固定种子），写成 {"text": ...} 的 JSONL。
分词器：在 10 MB 语料上训练一个 8000 词的 BPE（只做一次）。结果写进 bench/results/prepare.json。
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from peers import machine_info, print_table, write_report
from towergpt.demo.corpus import news_documents
from towergpt.tokenizer import Tokenizer, train_tokenizer


def write_corpus(path: Path, size_mb: float, seed: int) -> int:
    """随机拼接新闻段落，写出约 size_mb 的 JSONL，返回字节数。"""
    paragraphs = [p for document in news_documents() for p in document.split("\n") if p]
    rng = random.Random(seed)
    target = int(size_mb * 2 ** 20)
    written = 0
    with open(path, "w", encoding="utf-8") as handle:
        while written < target:
            text, length = [], 0
            while length < 1500:
                paragraph = rng.choice(paragraphs)
                text.append(paragraph)
                length += len(paragraph)
            line = json.dumps({"text": "\n".join(text)}, ensure_ascii=False) + "\n"
            handle.write(line)
            written += len(line.encode("utf-8"))
    return written


def single_process_speed(tokenizer: Tokenizer, corpus: Path, limit_mb: float = 5.0) -> float:
    """基线：单进程单线程逐篇 encode 的 MB/s（只计文本本身的 UTF-8 字节，最多 limit_mb）。"""
    texts, size = [], 0
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line)["text"]
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size > limit_mb * 2 ** 20:
                break
    start = time.perf_counter()
    for text in texts:
        tokenizer.encode(text)
    return size / 2 ** 20 / (time.perf_counter() - start)


def tree_rss_mb(pid: int) -> float:
    """进程 pid 及其所有子孙进程的 RSS 之和（MB），从 /proc 读。"""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue   # 进程刚好退出
    return total / 1024


def run_prepare(corpus: Path, tokenizer_dir: Path, out_dir: Path, workers: int) -> dict:
    """运行整条 `towergpt data prepare` 命令，每 0.05 秒采样一次进程树内存。"""
    command = [sys.executable, "-m", "towergpt", "data", "prepare", "--input", str(corpus), "--tokenizer",
               str(tokenizer_dir), "--out", str(out_dir), "--workers", str(workers), "--overwrite"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, stderr = process.communicate()
    sampler.join()
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"data prepare 失败 / failed:\n{stderr[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": peak[0]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="10,200")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/prepare.json")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="towergpt-bench-prepare-") as tmp:
        work = Path(tmp)
        sizes = [float(s) for s in args.sizes_mb.split(",")]
        corpora = {size: work / f"corpus_{size:g}mb.jsonl" for size in sizes}
        for size, path in corpora.items():
            write_corpus(path, size, args.seed)
        smallest = corpora[min(sizes)]
        tokenizer = train_tokenizer([smallest], vocab_size=8000, out_dir=work / "tokenizer", max_sentences=200_000)
        for size, path in corpora.items():
            mb = path.stat().st_size / 2 ** 20
            # 基线在每次 prepare 的前后各量一次取平均：共享机器的速度会漂移，前后夹住才公平
            before = single_process_speed(tokenizer, smallest)
            measured = run_prepare(path, work / "tokenizer", work / f"data_{size:g}", args.workers)
            baseline = (before + single_process_speed(tokenizer, smallest)) / 2
            print(f"基线 / baseline: 单进程 encode {baseline:.1f} MB/s", flush=True)
            speed = mb / measured["seconds"]
            results.append({"corpus_mb": round(mb, 1), "workers": args.workers, "prepare_mb_s": speed,
                            "baseline_mb_s": baseline, "efficiency": speed / (args.workers * baseline),
                            "peak_rss_mb": measured["peak_rss_mb"], "seconds": measured["seconds"]})
            print(f"{mb:.0f} MB: {speed:.1f} MB/s, 峰值内存 / peak RSS {measured['peak_rss_mb']:.0f} MB", flush=True)

    print()
    print_table(["corpus MB", "workers", "prepare MB/s", "1-process encode MB/s", "efficiency", "peak RSS MB"],
                [[r["corpus_mb"], r["workers"], r["prepare_mb_s"], r["baseline_mb_s"], r["efficiency"],
                  r["peak_rss_mb"]] for r in results])
    write_report(args.out, {"benchmark": "prepare", "machine": machine_info(), "args": vars(args),
                            "results": results})


if __name__ == "__main__":
    main()
