"""prepare 的流水线：读 -> 分批 -> 并行分词（按顺序取回）-> 交给划分写入器 / The tokenising pipeline.

三种数据共用这一条流水线，区别只在两头：怎么读（read_items，预训练读文本、对话读记录）
和怎么编码（encoder_class，见 data/encoders.py）。中间这几步一模一样：

    read_items(文件)  ──►  凑批（BATCH_DOCUMENTS 篇或 BATCH_CHARACTERS 个字符）
                      ──►  workers 个线程或进程里 encoder_class(分词器)(一批)，结果按提交顺序取回
                      ──►  on_result(结果)（计数、记下跳过的）──► splitter.add(结果)（分给 train / val 写出）

两条保证都在这里实现（详见 tokenize_in_order）：
    1. 输出与 workers 无关：workers=1 和 workers=8 写出的文件逐字节相同；
    2. 内存有界：同时“在路上”的批次最多 2×workers 个，峰值内存不随语料大小增长。

线程还是进程？看编码器把时间花在哪里（编码器的 RUNS_IN_THREADS）：
    - 预训练（TextEncoder）几乎全部时间都在 SentencePiece 的 C++ 里，而它在那里放开了 GIL
      （全局解释器锁），所以 workers 个线程真能同时占满 workers 个核。线程共用主进程的内存，
      一批文本不必 pickle、穿过管道送到别的进程，结果也不必再送回来，分词器只载入一次：
      实测 200 MB 语料，整条命令的 CPU 时间比用进程少一成多。
    - 对话、偏好对（ChatEncoder、PairEncoder）要在 Python 里渲染模板、截断，一直握着 GIL，
      线程只能轮流跑，所以用进程池。
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from tqdm import tqdm

from towergpt.data.encoders import Encoded
from towergpt.data.split import SplitWriter
from towergpt.tokenizer import Tokenizer

if TYPE_CHECKING:
    from towergpt.data.prepare import Job

# 一批送去分词的文档：最多这么多篇，或者累计这么多字符（先到为准）。
# 几百篇一批，进程间传递的开销（pickle）就被摊薄了；字符上限防止几篇超长文档撑爆内存。
BATCH_DOCUMENTS = 256
BATCH_CHARACTERS = 2_000_000

# read_items(路径) 逐条产出 (要送去分词的东西, 字符数, 字节数)；后两者只用来凑批和推进进度条。
ReadItems = Callable[[Path], Iterator[tuple[object, int, int]]]


# ---------------------------------------------------------------------------
# 1. 整条流水线
# ---------------------------------------------------------------------------

def run_pipeline(job: Job, read_items: ReadItems, encoder_class: type, encoder_args: tuple,
                 splitter: SplitWriter, on_result: Callable[[Encoded], None], verbose: bool) -> None:
    """把 job.paths 全部读完、分词、交给 splitter 写出；每批结果先交给 on_result（计数、记录跳过的）。"""
    total_bytes = sum(path.stat().st_size for path in job.paths)
    # disable=None：标准错误不是终端（被重定向到文件、管道）时不画进度条，
    # 免得日志里塞满 \r 刷新的半行；出错时 stderr 上也就只有那一行清楚的报错。
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, mininterval=0.5,
                    desc="分词 / tokenizing", disable=None if verbose else True, dynamic_ncols=True)
    try:
        batches = _read_batches(job.paths, read_items, progress)
        encoded_batches = tokenize_in_order(batches, job.tokenizer, job.tokenizer_dir, job.workers,
                                            encoder_class, encoder_args)
        # closing()：即使写分片时出错，也立刻关闭生成器，从而立刻结束进程池（而不是等垃圾回收）
        with contextlib.closing(encoded_batches) as results:
            for encoded in results:
                on_result(encoded)
                splitter.add(encoded)
        splitter.finish()
        progress.update(total_bytes - progress.n)  # 进度条走满（按文本字节计数时会略有出入）
    finally:  # 出错时也要关掉文件（Windows 上打开着的文件删不掉，临时目录就清不干净）
        progress.close()
        splitter.close()


def _read_batches(paths: list[Path], read_items: ReadItems, progress) -> Iterator[list]:
    """依次流式读取每个文件，凑成一批批交出去，顺带推进进度条。

    进度条按“输入字节”走。读取器不告诉我们文件读到了哪个位置，
    所以文件内部用文本的 UTF-8 字节数近似（JSON 的引号、字段名、转义不计，会略少），
    每读完一个文件再把进度对齐到文件的真实大小。这样 MB/s 和剩余时间（ETA）都大致可信。
    """
    done_bytes = 0
    for path in paths:
        file_end = done_bytes + path.stat().st_size
        batch: list = []
        batch_chars = batch_bytes = 0
        for item, characters, size in read_items(path):
            batch.append(item)
            batch_chars += characters
            batch_bytes += size
            if len(batch) >= BATCH_DOCUMENTS or batch_chars >= BATCH_CHARACTERS:
                progress.update(max(0, min(batch_bytes, file_end - progress.n)))
                yield batch
                batch, batch_chars, batch_bytes = [], 0, 0
        if batch:
            yield batch
        progress.update(max(0, file_end - progress.n))
        done_bytes = file_end


# ---------------------------------------------------------------------------
# 2. 并行分词：结果按提交顺序取回，所以输出与 workers 无关
# ---------------------------------------------------------------------------

def tokenize_in_order(batches: Iterator[list], tokenizer, tokenizer_dir: Path, workers: int,
                      encoder_class: type, encoder_args: tuple) -> Iterator[Encoded]:
    """用 encoder_class(分词器, *encoder_args) 处理每一批，按输入顺序产出结果。

    为什么不用 `pool.imap(函数, 批次生成器)`？因为 Pool.imap 会在后台线程里把输入生成器
    一口气读完、全部排进任务队列——语料有多大，内存就涨多大。这里自己控制（_in_order）：
    提交一批，队列（deque）里最多 2×workers 个未完成的批次；满了就先取回最早的
    那一批（会等它算完）再读下一批。这样：
        - 每个线程 / 进程都有活干（手里大约有两批，一批在算，一批在排队）；
        - 内存里最多 2×workers 批输入和结果，与语料大小无关；
        - 结果严格按提交顺序取回，输出与 workers 无关，可复现。
    线程还是进程，由编码器的 RUNS_IN_THREADS 决定（见模块说明）。
    """
    if workers == 1:  # 单个 worker：不开线程也不开进程，省掉启动的开销，调试也方便
        encoder = encoder_class(tokenizer, *encoder_args)
        for batch in batches:
            yield encoder(batch)
        return
    if encoder_class.RUNS_IN_THREADS:
        yield from _tokenize_in_threads(batches, tokenizer, workers, encoder_class, encoder_args)
    else:
        yield from _tokenize_in_processes(batches, tokenizer_dir, workers, encoder_class, encoder_args)


def _in_order(batches: Iterator[list], submit: Callable[[list], Callable[[], Encoded]],
              workers: int) -> Iterator[Encoded]:
    """submit(一批) 把这一批交出去，返回一个“取结果”的函数：调用它就等到这一批算完，拿到结果
    （出错时原样抛出工作线程 / 进程里的异常）。结果按提交顺序取回，最多 2×workers 批在路上。"""
    pending: deque = deque()
    for batch in batches:
        pending.append(submit(batch))
        if len(pending) >= 2 * workers:
            yield pending.popleft()()
    while pending:
        yield pending.popleft()()


def _tokenize_in_threads(batches: Iterator[list], tokenizer, workers: int, encoder_class: type,
                         encoder_args: tuple) -> Iterator[Encoded]:
    """workers 个线程共用一个分词器（SentencePiece 的 Encode 不改动分词器本身，可以多个线程同时调用）。

    每个线程调用 SentencePiece 时只让它用 1 个线程：workers 个线程就是 workers 个核，
    不会“每个线程再各开满核数的线程”，线程数超过核数反而互相抢 CPU。
    主线程在这期间读文件、解析 JSON、写分片（这些要 GIL，但只占一小部分时间）。
    """
    threads, tokenizer.batch_threads = tokenizer.batch_threads, 1
    encoder = encoder_class(tokenizer, *encoder_args)
    executor = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")
    try:
        yield from _in_order(batches, lambda batch: executor.submit(encoder, batch).result, workers)
    finally:
        # 出错或 Ctrl-C 时：还没开始的批次取消，正在算的等它算完（一批只要零点几秒；线程无法从外面杀掉）
        executor.shutdown(wait=True, cancel_futures=True)
        tokenizer.batch_threads = threads


# 工作进程里的分词器对象：每个进程只在启动时载入一次分词器（由 Pool 的 initializer 完成），
# 之后每批输入都复用它，而不是每批都重新读一遍 tokenizer.model。
_worker_encoder = None


def _init_worker(tokenizer_dir: str, encoder_class: type, encoder_args: tuple, threads: int) -> None:
    global _worker_encoder
    # 工作进程忽略 Ctrl-C：由主进程统一处理中断并清理，否则每个子进程都会各打印一大段 traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tokenizer = Tokenizer.load(tokenizer_dir)
    # 每个进程的 SentencePiece 只开“核数 / 进程数”个线程：否则 N 个进程各开满核数的线程，
    # 线程数远多于核数，互相抢 CPU，反而更慢。
    tokenizer.batch_threads = threads
    _worker_encoder = encoder_class(tokenizer, *encoder_args)


def _encode_in_worker(batch: list):
    return _worker_encoder(batch)


def _tokenize_in_processes(batches: Iterator[list], tokenizer_dir: Path, workers: int, encoder_class: type,
                           encoder_args: tuple) -> Iterator[Encoded]:
    """workers 个进程，每个进程启动时自己载入一次分词器（见 _init_worker）。

    encoder_class 以类的形式（而不是对象）传给工作进程：类按名字 pickle，
    每个进程自己载入分词器、自己构造对象，不必把分词器本身序列化过去。
    """
    # 用平台默认的启动方式（Linux 上是 fork，启动快；macOS / Windows 上是 spawn）。
    context = multiprocessing.get_context()
    initargs = (str(tokenizer_dir), encoder_class, encoder_args, max(1, (os.cpu_count() or 1) // workers))
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        yield from _in_order(batches, lambda batch: pool.apply_async(_encode_in_worker, (batch,)).get, workers)
        pool.close()  # 正常结束：让进程自己退出（with 语句退出时会 terminate，那是给出错时用的）
        pool.join()
