"""`towergpt data prepare` 的吞吐与内存：10 MB 和 200 MB 的合成 JSONL 语料。

    python bench/prepare.py                    # 约 1–2 分钟；语料与输出放在临时目录，跑完删除
    python bench/prepare.py --sizes-mb 10,200 --workers 2
    # 和另一份代码（例如上一个提交）交替着比：先把那份代码的 towergpt 包解到一个目录里
    mkdir /tmp/old && git archive HEAD~1 towergpt | tar -x -C /tmp/old
    python bench/prepare.py --sizes-mb 200 --against /tmp/old --repeats 3

量了什么：
    baseline_mb_s   基线：单进程、单线程逐篇 Tokenizer.encode 的速度（MB/s，按 UTF-8 字节算；
                    在每次 prepare 之前和之后各量一次取平均）
    raw_encode_mb_s 同一台机器上“最快的单线程分词”：SentencePiece 直接交回 numpy 数组
                    （Tokenizer.encode_batch_arrays，一批 256 篇，1 个线程），不造 Python 整数
    prepare_mb_s    `towergpt data prepare --workers N` 整条命令（读 JSON、分词、写分片）的速度
    efficiency      prepare_mb_s / (N × baseline_mb_s)：目标 ≥ 0.8
    raw_efficiency  prepare_mb_s / (N × raw_encode_mb_s)：除去“分词本身”之后，其余的活还占多少
    cpu_s           整条命令（含分词子进程）用掉的 CPU 秒数（用户态 + 内核态）
    others_cpu_s    同一段时间里机器上其他进程用掉的 CPU 秒数（/proc/stat）：明显大于 0 的那几次是在和别人抢核，
                    它们的绝对速度不可信
    peak_rss_mb     整个进程树（主进程 + 分词子进程）常驻内存之和的峰值：目标 < 500 MB，且不随语料变大
合成语料：内置《人民日报》的段落随机抽取、拼成约 1500 字的文档（固定种子），写成 {"text": ...} 的 JSONL。
分词器：在 10 MB 语料上训练一个 8000 词的 BPE（只做一次）。结果写进 bench/results/prepare.json。

--against 目录：那个目录里的 towergpt 包和本仓库的交替运行（A B B A …，每次前后都量基线），
两边读同一份语料、用同一个分词器，最后报告每种语料上两边速度的中位数之比。共享机器的负载起伏
会同时落在两边，比值比绝对速度可信。
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from peers import machine_info, print_table, write_report
from towergpt.demo.corpus import news_documents
from towergpt.tokenizer import Tokenizer, train_tokenizer

REPO = Path(__file__).resolve().parents[1]   # 本仓库：默认量的就是这里的 towergpt


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


def load_texts(corpus: Path, limit_mb: float = 5.0) -> tuple[list[str], int]:
    """基线用的文本：语料开头至多 limit_mb 的文档，和它们的 UTF-8 字节数。"""
    texts, size = [], 0
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            text = json.loads(line)["text"]
            texts.append(text)
            size += len(text.encode("utf-8"))
            if size > limit_mb * 2 ** 20:
                break
    return texts, size


def single_process_speed(tokenizer: Tokenizer, texts: list[str], size: int) -> float:
    """基线：单进程单线程逐篇 encode 的 MB/s（只计文本本身的 UTF-8 字节）。"""
    start = time.perf_counter()
    for text in texts:
        tokenizer.encode(text)
    return size / 2 ** 20 / (time.perf_counter() - start)


def raw_encode_speed(tokenizer: Tokenizer, texts: list[str], size: int) -> float:
    """单线程、一批 256 篇、直接交回 numpy 数组的分词速度（MB/s）：data prepare 的分词进程就是这样分词的。"""
    threads, tokenizer.batch_threads = tokenizer.batch_threads, 1
    start = time.perf_counter()
    for first in range(0, len(texts), 256):
        tokenizer.encode_batch_arrays(texts[first:first + 256])
    seconds = time.perf_counter() - start
    tokenizer.batch_threads = threads
    return size / 2 ** 20 / seconds


def machine_busy_s() -> float:
    """开机以来所有核忙碌（不是空闲、不是等 I/O）的 CPU 秒数之和，从 /proc/stat 的第一行读。"""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")   # 第 4、5 列是 idle、iowait


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


def run_prepare(corpus: Path, tokenizer_dir: Path, out_dir: Path, workers: int, source: Path) -> dict:
    """运行整条 `towergpt data prepare` 命令，每 0.05 秒采样一次进程树内存，另记整棵进程树的 CPU 秒数。

    source：用哪一份代码。子进程在临时目录里启动（当前目录在 sys.path 的最前面，不能是某个仓库），
    PYTHONPATH 的最前面放 source，于是 `python -m towergpt` 载入的一定是 source/towergpt。
    """
    command = [sys.executable, "-m", "towergpt", "data", "prepare", "--input", str(corpus), "--tokenizer",
               str(tokenizer_dir), "--out", str(out_dir), "--workers", str(workers), "--overwrite"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")])))
    # RUSAGE_CHILDREN：已经结束、被等待过的子进程（及其等待过的子进程，即分词进程）用掉的 CPU，取前后之差
    cpu_before, busy_before = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               cwd=out_dir.parent, env=env)
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
    cpu_after, busy_after = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_s()
    if process.returncode != 0:
        raise SystemExit(f"data prepare 失败 / failed ({source}):\n{stderr[-2000:]}")
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    # 别人的 CPU = 整台机器忙碌的 CPU − 这条命令的（采样线程本身每 0.05 秒读一次 /proc，可以忽略）
    return {"seconds": seconds, "peak_rss_mb": peak[0], "cpu_s": cpu,
            "others_cpu_s": max(0.0, busy_after - busy_before - cpu)}


def imported_from(source: Path, cwd: Path) -> str:
    """确认一下：PYTHONPATH=source 时，子进程里的 towergpt 到底是哪一个文件。"""
    env = dict(os.environ, PYTHONPATH=str(source))
    return subprocess.run([sys.executable, "-c", "import towergpt; print(towergpt.__file__)"], cwd=cwd, env=env,
                          capture_output=True, text=True, check=True).stdout.strip()


def measure(label: str, source: Path, corpus: Path, work: Path, args, tokenizer: Tokenizer, texts, size) -> dict:
    """一次 prepare，连同它前后的两次基线。"""
    mb = corpus.stat().st_size / 2 ** 20
    # 基线在每次 prepare 的前后各量一次取平均：共享机器的速度会漂移，前后夹住才公平
    before = (single_process_speed(tokenizer, texts, size), raw_encode_speed(tokenizer, texts, size))
    measured = run_prepare(corpus, work / "tokenizer", work / f"data_{corpus.stem}_{label}", args.workers, source)
    baseline = (before[0] + single_process_speed(tokenizer, texts, size)) / 2
    raw = (before[1] + raw_encode_speed(tokenizer, texts, size)) / 2
    speed = mb / measured["seconds"]
    row = {"code": label, "source": str(source), "corpus_mb": round(mb, 1), "workers": args.workers,
           "prepare_mb_s": speed, "baseline_mb_s": baseline, "efficiency": speed / (args.workers * baseline),
           "raw_encode_mb_s": raw, "raw_efficiency": speed / (args.workers * raw), **measured}
    print(f"[{label}] {mb:.0f} MB: {speed:.1f} MB/s，基线 / baseline {baseline:.1f} MB/s，"
          f"效率 / efficiency {row['efficiency']:.2f}，CPU {measured['cpu_s']:.1f} s"
          f"（别人 / others {measured['others_cpu_s']:.1f} s），峰值内存 / peak RSS {measured['peak_rss_mb']:.0f} MB",
          flush=True)
    return row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mb", default="10,200")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--against", default=None,
                        help="另一份代码的目录（里面有 towergpt/ 包），与本仓库交替运行并报告速度之比")
    parser.add_argument("--repeats", type=int, default=1, help="每种语料（每份代码）跑几次")
    parser.add_argument("--out", default="bench/results/prepare.json")
    args = parser.parse_args(argv)

    sources = [("this", REPO)]
    if args.against:
        sources.append(("against", Path(args.against).resolve()))
    results = []
    with tempfile.TemporaryDirectory(prefix="towergpt-bench-prepare-") as tmp:
        work = Path(tmp)
        for label, source in sources:
            print(f"{label}: {imported_from(source, work)}", flush=True)
        sizes = [float(s) for s in args.sizes_mb.split(",")]
        corpora = {size: work / f"corpus_{size:g}mb.jsonl" for size in sizes}
        for size, path in corpora.items():
            write_corpus(path, size, args.seed)
        smallest = corpora[min(sizes)]
        tokenizer = train_tokenizer([smallest], vocab_size=8000, out_dir=work / "tokenizer", max_sentences=200_000)
        texts, size_bytes = load_texts(smallest)
        for path in corpora.values():
            for repeat in range(args.repeats):
                # 交替先后（A B，B A，……）：谁先跑、谁后跑吃到的负载起伏都一样
                for label, source in (sources if repeat % 2 == 0 else sources[::-1]):
                    results.append(measure(label, source, path, work, args, tokenizer, texts, size_bytes))

    print()
    print_table(["code", "corpus MB", "workers", "prepare MB/s", "1-process encode MB/s", "efficiency",
                 "raw encode MB/s", "raw efficiency", "CPU s", "others' CPU s", "peak RSS MB"],
                [[r["code"], r["corpus_mb"], r["workers"], r["prepare_mb_s"], r["baseline_mb_s"], r["efficiency"],
                  r["raw_encode_mb_s"], r["raw_efficiency"], r["cpu_s"], r["others_cpu_s"], r["peak_rss_mb"]]
                 for r in results])
    comparison = compare(results) if args.against else []
    for line in comparison:
        print(line)
    write_report(args.out, {"benchmark": "prepare", "machine": machine_info(), "args": vars(args),
                            "results": results, "comparison": comparison})


def compare(results: list[dict]) -> list[str]:
    """每种语料：两边 prepare 速度、效率、CPU 秒数的中位数，以及速度之比（this / against）。"""
    lines = []
    for corpus_mb in sorted({r["corpus_mb"] for r in results}):
        def median(code, key):
            return statistics.median(r[key] for r in results if r["corpus_mb"] == corpus_mb and r["code"] == code)
        lines.append(f"{corpus_mb:g} MB：this / against 速度之比 / speed ratio "
                     f"{median('this', 'prepare_mb_s') / median('against', 'prepare_mb_s'):.2f}；"
                     f"效率 / efficiency {median('this', 'efficiency'):.2f} vs {median('against', 'efficiency'):.2f}；"
                     f"CPU {median('this', 'cpu_s'):.1f} s vs {median('against', 'cpu_s'):.1f} s")
    return lines


if __name__ == "__main__":
    main()
