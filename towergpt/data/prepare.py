"""预处理：把语料一次性切成 token，存成磁盘上的“分片”（shard）/ Tokenise a corpus into shards.

为什么训练前要先做这一步？
    训练时每一步都要喂给模型几万个 token。如果每次都现场读 JSON、跑分词器，
    CPU 会成为瓶颈，GPU 干等；而且同一份语料每个 epoch 都要重复分词一遍。
    所以我们“一次分词，永久复用”：把所有 token id 按顺序写进二进制文件，
    训练时用 np.memmap 直接映射进内存，取一段 token 几乎不花时间。

输出目录（`towergpt data prepare --out DIR`）长这样：

    DIR/
      meta.json            说明书：分词器指纹、dtype、每个分片多少 token、文档数、字符数……
      train_000000.bin     训练集 token，小端序的 uint16（词表 > 65536 时用 uint32）
      train_000001.bin     每个分片至多 shard_tokens 个 token
      val_000000.bin       验证集 token
      tokenizer/           分词器副本：数据目录自成一体，拿到它就知道 id 是什么意思
      skipped.txt          （只在 --skip-bad 且真有坏记录时）每行一条：位置<TAB>原因

每篇文档写成 `[bos] + encode(文本) + [eos]`，一篇接一篇首尾相连：
    - eos 告诉模型“这篇到此为止”，生成时模型也学会在合适的地方停下；
    - bos 让每篇文档的开头和生成时的提示词 `[bos] + encode(提示词)` 长得一样，
      模型在训练里见过“bos 之后是一篇新文章的开头”，推理时就不会觉得突兀。

几个设计要点（后面的代码里都有详细注释）：
    1. 多进程并行分词，但输出与进程数无关（按顺序收集结果）：workers=1 和 workers=8
       写出的文件逐字节相同。
    2. 内存有界：输入是流式读的，同时“在路上”的批次最多 2×workers 个，
       峰值内存不随语料大小增长——100 GB 的语料也能在小机器上处理。
    3. 按文档划分验证集：用“文档序号的带种子哈希”决定一篇文档进 train 还是 val，
       结果确定、可复现，而且同一篇文档的 token 不会一半在训练集一半在验证集
       （那样验证损失会偏低，因为模型“见过”这篇文章的前半段）。
    4. 要么完整、要么没有：先写到临时目录 `DIR.tmp-<pid>`，全部成功后才改名为 DIR；
       中途出错（坏记录、磁盘满、Ctrl-C）就删掉临时目录，绝不留下一个“看起来完整”的半成品。
"""

from __future__ import annotations

import contextlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from towergpt.errors import TowerGPTError

# ---------------------------------------------------------------------------
# 常量
# ---------------------------------------------------------------------------

META_FILE = "meta.json"
SKIPPED_FILE = "skipped.txt"
TOKENIZER_SUBDIR = "tokenizer"

# 数据目录格式的版本号。以后改了文件布局就把它加一，读取端据此给出清楚的报错，
# 而不是把新格式的文件当旧格式读，得到一堆乱码 token。
FORMAT_VERSION = 1

# 支持的数据种类；sft / dpo 由后续的工作加入。
FORMATS = ("pretrain", "sft", "dpo")

# 一批送去分词的文档：最多这么多篇，或者累计这么多字符（先到为准）。
# 几百篇一批，进程间传递的开销（pickle）就被摊薄了；字符上限防止几篇超长文档撑爆内存。
BATCH_DOCUMENTS = 256
BATCH_CHARACTERS = 2_000_000

# splitmix64 的常数（Steele 等人 2014；Java 的 SplittableRandom 用的就是它）。
# 它把相邻的整数 0, 1, 2, ... 打散成看起来毫无规律的 64 位数，正适合“按序号抽样”。
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
_MASK_64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# 对外接口
# ---------------------------------------------------------------------------

def prepare(format: str = "pretrain", **kwargs) -> dict:
    """按数据种类分派：`--format pretrain` 调 `prepare_pretrain`；sft / dpo 暂未实现。"""
    if format == "pretrain":
        return prepare_pretrain(**kwargs)
    if format in FORMATS:
        raise TowerGPTError(
            f"--format {format} 暂不支持，目前只实现了 pretrain"
            f" / --format {format} is not yet supported; only pretrain is implemented for now"
        )
    raise TowerGPTError(
        f"未知的 --format {format!r}，可选 {', '.join(FORMATS)} / unknown format, choose one of {', '.join(FORMATS)}"
    )


def token_dtype(vocab_size: int) -> np.dtype:
    """选择存 token id 的整数类型：词表不超过 65536 用 uint16（每个 token 2 字节），否则 uint32。

    uint16 能表示 0..65535，正好 65536 个 id。中文小模型的词表通常是几千到几万，
    用 uint16 比 uint32 省一半磁盘和内存带宽。明确写成小端序（'<'），
    这样在任何机器上写出的文件都一样，读取端也按小端序解释。
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 65536 else np.dtype("<u4")


def prepare_pretrain(
    inputs: Sequence[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    field: str = "text",
    workers: int | None = None,
    val_fraction: float = 0.01,
    skip_bad: bool = False,
    shard_tokens: int = 100_000_000,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
) -> dict:
    """把预训练语料分词并写成 token 分片，返回摘要 dict（与 meta.json 内容相同，外加用时和速度）。

    参数:
        inputs:        语料文件（.txt .jsonl .json .parquet），可以多个，按给出的顺序处理。
        tokenizer_dir: `towergpt tokenizer train` 的输出目录。
        out_dir:       输出目录。已存在且非空时拒绝写入，除非 overwrite=True
                       （而且它必须是以前 `data prepare` 写出的目录，防止误删别的东西）。
        field:         JSON / Parquet 记录里文本所在的字段。
        workers:       分词进程数，默认 os.cpu_count()；1 表示在本进程里做，不开进程池。
        val_fraction:  大约多少比例的文档划入验证集，0 <= val_fraction < 1；0 表示不要验证集。
        skip_bad:      True 时跳过坏记录，记在 out_dir/skipped.txt；False 时遇到第一条就报错。
        shard_tokens:  每个分片最多多少个 token。
        seed:          决定哪些文档进验证集的种子。
        overwrite:     允许替换一个已有的数据目录。
        verbose:       显示进度条并在结束时打印摘要。

    用户能改正的问题（文件不存在、坏记录、参数不对……）都抛 TowerGPTError，
    此时不会留下 out_dir，也不会留下临时目录。
    """
    from towergpt.data.readers import check_input
    from towergpt.tokenizer import Tokenizer

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [check_input(path) for path in inputs] if inputs else []
    _check_args(paths, field, workers, val_fraction, shard_tokens)
    workers = workers or os.cpu_count() or 1
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite, paths, Path(tokenizer_dir))
    tokenizer = Tokenizer.load(tokenizer_dir)

    # 先写临时目录，成功后再改名：改名在同一文件系统里是原子的，
    # 别人（或训练脚本）看到的 out_dir 要么不存在，要么是完整的。
    temporary = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    started = time.perf_counter()
    try:
        temporary.mkdir(parents=True)
        meta = _write_dataset(paths, tokenizer, Path(tokenizer_dir), temporary, field, workers,
                              val_fraction, skip_bad, shard_tokens, seed, verbose)
        _publish(temporary, out_dir)
    except OSError as err:  # 没有写权限、磁盘满……：说清楚是哪个文件，而不是抛 traceback
        shutil.rmtree(temporary, ignore_errors=True)
        raise TowerGPTError(f"{err.filename or out_dir}: 读写失败 / I/O error: {err.strerror or err}") from None
    except BaseException:  # 其余一切，包括 Ctrl-C（KeyboardInterrupt）：同样不留半成品
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    elapsed = time.perf_counter() - started
    input_bytes = sum(item["bytes"] for item in meta["inputs"])
    summary = dict(meta, out_dir=str(out_dir), elapsed_s=round(elapsed, 3),
                   mb_per_s=round(input_bytes / 1e6 / max(elapsed, 1e-9), 3), workers=workers)
    if verbose:
        print(format_summary(summary))
    return summary


def load_meta(data_dir: str | os.PathLike, kind: str | None = None) -> dict:
    """读取并检查数据目录里的 meta.json；kind 给出时还要求种类匹配（例如 "pretrain"）。

    训练脚本拿到的 `data.path` 可能写错（指向语料文件、指向分词器目录、旧版本的数据……），
    在这里一次说清楚，而不是让 np.memmap 读出一堆没有意义的数字。
    """
    data_dir = Path(data_dir)
    meta_path = data_dir / META_FILE
    hint = "请先运行 towergpt data prepare / run `towergpt data prepare` first"
    if not data_dir.is_dir():
        raise TowerGPTError(f"数据目录不存在 / data directory not found: {data_dir}（{hint}）")
    if not meta_path.is_file():
        raise TowerGPTError(
            f"{data_dir} 不是 `towergpt data prepare` 写出的数据目录（缺少 {META_FILE}）"
            f" / not a prepared data directory (no {META_FILE}); {hint}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TowerGPTError(f"{meta_path}: 无法读取 / unreadable: {err}") from None
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise TowerGPTError(
            f"{meta_path}: 数据格式版本是 {version}，本程序只认识 {FORMAT_VERSION}，请用当前版本重新 prepare"
            f" / format version {version}, expected {FORMAT_VERSION}: prepare the data again"
        )
    if kind is not None and meta.get("kind") != kind:
        raise TowerGPTError(
            f"{meta_path}: 这是 {meta.get('kind')!r} 数据，这里需要 {kind!r}（prepare 时用 --format {kind}）"
            f" / holds {meta.get('kind')!r} data, expected {kind!r} (prepare with --format {kind})"
        )
    return meta


def format_summary(summary: dict) -> str:
    """把摘要排成几行给人看的中英文。"""
    train, val = summary["train"], summary["val"]
    documents = train["documents"] + val["documents"]
    tokens = train["tokens"] + val["tokens"]
    characters = train["characters"] + val["characters"]
    per_char = tokens / characters if characters else 0.0
    lines = [
        f"数据已写好 / data written: {summary['out_dir']}",
        f"  文档 / documents:   {documents:,}（训练 train {train['documents']:,} / 验证 val {val['documents']:,}）",
        f"  token:              {tokens:,}（训练 train {train['tokens']:,} / 验证 val {val['tokens']:,}；含 bos/eos）",
        f"  字符 / characters:  {characters:,}（每字符 {per_char:.3f} 个 token / tokens per character）",
        f"  分片 / shards:      训练 train {len(train['shards'])} 个，验证 val {len(val['shards'])} 个，{summary['dtype']}",
    ]
    if summary["empty_documents"]:
        lines.append(f"  空文档（未写入）/ empty documents (not written): {summary['empty_documents']:,}")
    if summary["skipped_records"]:
        lines.append(f"  跳过的坏记录 / skipped bad records: {summary['skipped_records']:,}"
                     f"（清单见 / listed in {Path(summary['out_dir']) / SKIPPED_FILE}）")
    if "elapsed_s" in summary:
        lines.append(f"  用时 / time:        {summary['elapsed_s']:.1f} s，{summary['mb_per_s']:.1f} MB/s"
                     f"（{summary['workers']} 个分词进程 / tokenizer processes）")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# 参数与输出目录检查：在读一个字节语料之前先把能发现的问题都报出来
# ---------------------------------------------------------------------------

def _check_args(paths: list[Path], field: str, workers, val_fraction: float, shard_tokens: int) -> None:
    if not paths:
        raise TowerGPTError("没有给出语料文件 / no input files given (--input)")
    if not field:
        raise TowerGPTError("--field 不能为空 / --field must not be empty")
    if workers is not None and workers < 1:
        raise TowerGPTError(f"--workers 必须是正整数 / must be a positive integer, got {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise TowerGPTError(
            f"--val-fraction {val_fraction} 超出范围，应满足 0 <= 值 < 1（常用 0.01）"
            f" / must satisfy 0 <= value < 1 (0.01 is typical)"
        )
    if shard_tokens < 1:
        raise TowerGPTError(f"shard_tokens 必须是正整数 / must be positive, got {shard_tokens}")


def _check_out_dir(out_dir: Path, overwrite: bool, inputs: list[Path], tokenizer_dir: Path) -> None:
    """out_dir 非空时拒绝覆盖；允许覆盖时也只替换“以前 prepare 写出的目录”，且不能含有输入文件。

    `--overwrite` 会删掉整个旧目录。如果用户手一滑写成 `--out ~ --overwrite`，
    或者 `--out data --overwrite` 而语料就在 data/ 里面，后果不堪设想，所以多检查两步。
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise TowerGPTError(f"{out_dir} 已存在且不是目录 / exists and is not a directory (--out)")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise TowerGPTError(
            f"输出目录 {out_dir} 已存在且不是空的；换一个 --out，或加 --overwrite 替换它"
            f" / output directory exists and is not empty: choose another --out or add --overwrite"
        )
    if not (out_dir / META_FILE).is_file():
        raise TowerGPTError(
            f"{out_dir} 不是 `data prepare` 写出的目录（没有 {META_FILE}），为安全起见不会删除它"
            f" / is not a prepared data directory (no {META_FILE}); refusing to replace it"
        )
    resolved = out_dir.resolve()
    for path in [*inputs, tokenizer_dir]:
        if resolved == path.resolve() or resolved in path.resolve().parents:
            raise TowerGPTError(
                f"{path} 在输出目录 {out_dir} 里面，--overwrite 会把它删掉；请换一个 --out"
                f" / lies inside the output directory, which --overwrite would delete: choose another --out"
            )


def _publish(temporary: Path, out_dir: Path) -> None:
    """把写好的临时目录改名为 out_dir（若有旧目录，已在开头确认可以替换）。"""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(temporary, out_dir)


# ---------------------------------------------------------------------------
# 主流程：读 -> 分批 -> 并行分词 -> 划分 train/val -> 写分片
# ---------------------------------------------------------------------------

def _write_dataset(paths, tokenizer, tokenizer_dir: Path, directory: Path, field: str, workers: int,
                   val_fraction: float, skip_bad: bool, shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出全部文件，返回 meta。"""
    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    skipped = _SkippedLog(directory / SKIPPED_FILE)
    counts = {"empty_documents": 0}
    total_bytes = sum(path.stat().st_size for path in paths)
    splitter = _SplitWriter(directory, dtype, shard_tokens, val_fraction, seed)

    # disable=None：标准错误不是终端（被重定向到文件、管道）时不画进度条，
    # 免得日志里塞满 \r 刷新的半行；出错时 stderr 上也就只有那一行清楚的报错。
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, mininterval=0.5,
                    desc="分词 / tokenizing", disable=None if verbose else True, dynamic_ncols=True)
    try:
        batches = _read_batches(paths, field, skip_bad, skipped.add, progress, counts)
        # closing()：即使写分片时出错，也立刻关闭生成器，从而立刻结束进程池（而不是等垃圾回收）
        with contextlib.closing(_tokenize_in_order(batches, tokenizer, tokenizer_dir, dtype, workers)) as tokenized:
            for characters, flat, lengths in tokenized:
                splitter.add(flat, lengths, characters)
        splitter.finish()
        progress.update(total_bytes - progress.n)  # 进度条走满（按文本字节计数时会略有出入）
    finally:  # 出错时也要关掉文件（Windows 上打开着的文件删不掉，临时目录就清不干净）
        progress.close()
        skipped.close()
        splitter.close()

    if splitter.documents == 0:
        names = ", ".join(str(path) for path in paths)
        raise TowerGPTError(
            f"语料里没有任何非空文档：{names}（JSON 文件请确认 --field '{field}' 是否正确）"
            f" / the corpus holds no non-empty documents (for JSON, check --field '{field}')"
        )
    tokenizer.save(directory / TOKENIZER_SUBDIR)
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "pretrain",
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "dtype": dtype.name,             # "uint16" 或 "uint32"，字节序固定为小端
        "byte_order": "little",
        "field": field,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "train": splitter.train.stats(),
        "val": splitter.val.stats(),
        "empty_documents": counts["empty_documents"],
        "skipped_records": skipped.count,
        "inputs": [{"path": str(path.resolve()), "bytes": path.stat().st_size} for path in paths],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return meta


def _read_batches(paths, field: str, skip_bad: bool, on_bad, progress, counts: dict) -> Iterator[list[str]]:
    """依次流式读取每个文件，把非空文档凑成一批批交出去；顺带统计空文档、推进进度条。

    进度条按“输入字节”走。读取器不告诉我们文件读到了哪个位置，
    所以文件内部用文本的 UTF-8 字节数近似（JSON 的引号、字段名、转义不计，会略少），
    每读完一个文件再把进度对齐到文件的真实大小。这样 MB/s 和剩余时间（ETA）都大致可信。
    """
    from towergpt.data.readers import iter_texts

    done_bytes = 0
    for path in paths:
        file_end = done_bytes + path.stat().st_size
        batch: list[str] = []
        batch_chars = batch_bytes = 0
        for _, text in iter_texts(path, field=field, skip_bad=skip_bad, on_bad=on_bad):
            if not text or text.isspace():  # 空白文档：计数，但不写（它只会教模型“bos 后面紧跟 eos”）
                counts["empty_documents"] += 1
                continue
            batch.append(text)
            batch_chars += len(text)
            batch_bytes += len(text.encode("utf-8", errors="replace"))
            if len(batch) >= BATCH_DOCUMENTS or batch_chars >= BATCH_CHARACTERS:
                progress.update(max(0, min(batch_bytes, file_end - progress.n)))
                yield batch
                batch, batch_chars, batch_bytes = [], 0, 0
        if batch:
            yield batch
        progress.update(max(0, file_end - progress.n))
        done_bytes = file_end


# ---------------------------------------------------------------------------
# 并行分词：结果按提交顺序取回，所以输出与进程数无关
# ---------------------------------------------------------------------------

class _Encoder:
    """把一批文本变成 (每篇的字符数, 拼接好的 token 数组, 每篇的 token 数)。主进程和工作进程共用。

    返回 numpy 数组而不是 list[list[int]]：一个 uint16 数组 pickle 之后只有 2 字节/token，
    而 Python 的 int 列表要大十几倍，进程间传输会慢得多。
    """

    def __init__(self, tokenizer, dtype: np.dtype):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.bos = [self.tokenizer.bos_id]
        self.eos = [self.tokenizer.eos_id]

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        encoded = self.tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(ids) + 2 for ids in encoded), dtype=np.int64, count=len(encoded))
        # 每篇文档 = [bos] + ids + [eos]，全部首尾相连成一个一维数组
        pieces = itertools.chain.from_iterable(part for ids in encoded for part in (self.bos, ids, self.eos))
        flat = np.fromiter(pieces, dtype=self.dtype, count=int(lengths.sum()))
        characters = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
        return characters, flat, lengths


# 工作进程里的编码器：每个进程只在启动时载入一次分词器（由 Pool 的 initializer 完成），
# 之后每批文本都复用它，而不是每批都重新读一遍 tokenizer.model。
_worker_encoder: _Encoder | None = None


def _init_worker(tokenizer_dir: str, dtype_name: str) -> None:
    from towergpt.tokenizer import Tokenizer

    global _worker_encoder
    # 工作进程忽略 Ctrl-C：由主进程统一处理中断并清理，否则每个子进程都会各打印一大段 traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_encoder = _Encoder(Tokenizer.load(tokenizer_dir), np.dtype(dtype_name))


def _encode_in_worker(texts: list[str]):
    return _worker_encoder(texts)


def _tokenize_in_order(batches: Iterator[list[str]], tokenizer, tokenizer_dir: Path, dtype: np.dtype,
                       workers: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """把每批文本分词，按输入顺序产出 (每篇字符数, 拼接的 token, 每篇 token 数)。

    为什么不用 `pool.imap(函数, 批次生成器)`？因为 Pool.imap 会在后台线程里把输入生成器
    一口气读完、全部排进任务队列——语料有多大，内存就涨多大。这里自己控制：
    用 apply_async 提交，队列（deque）里最多 2×workers 个未完成的批次；满了就先取回最早的
    那一批（`.get()` 会等它算完）再读下一批。这样：
        - 所有进程都有活干（每个进程手里大约有两批，一批在算，一批在排队）；
        - 内存里最多 2×workers 批文本和结果，与语料大小无关；
        - 结果严格按提交顺序取回，输出与 workers 无关，可复现。
    """
    if workers == 1:  # 单进程：不开进程池，省掉启动进程和 pickle 的开销，调试也方便
        encoder = _Encoder(tokenizer, dtype)
        for texts in batches:
            yield encoder(texts)
        return

    # 用平台默认的启动方式（Linux 上是 fork，启动快；macOS / Windows 上是 spawn）。
    context = multiprocessing.get_context()
    with context.Pool(workers, initializer=_init_worker, initargs=(str(tokenizer_dir), dtype.name)) as pool:
        pending: deque = deque()
        for texts in batches:
            pending.append(pool.apply_async(_encode_in_worker, (texts,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()  # 正常结束：让进程自己退出（with 语句退出时会 terminate，那是给出错时用的）
        pool.join()


# ---------------------------------------------------------------------------
# 划分 train / val 并写分片
# ---------------------------------------------------------------------------

def _splitmix64(values: np.ndarray) -> np.ndarray:
    """splitmix64 的“终结”函数：把 uint64 数组里的每个数打散成均匀分布的 64 位哈希。

    numpy 的 uint64 数组做乘法时自动对 2^64 取模（溢出即回绕），正是哈希需要的。
    """
    with np.errstate(over="ignore"):
        z = values + np.uint64(_GOLDEN_GAMMA)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_MIX_1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_MIX_2)
        return z ^ (z >> np.uint64(31))


def validation_mask(first_index: int, count: int, seed: int, val_fraction: float) -> np.ndarray:
    """第 first_index .. first_index+count-1 篇文档是否进验证集（bool 数组）。

    哈希(种子, 文档序号) 映射到 [0, 1) 上的一个“随机数”，小于 val_fraction 就进验证集。
    它只取决于种子和文档在语料里的序号（空文档不占序号），与分词进程数、批大小都无关，
    所以同样的输入和种子永远得到同样的划分。
    """
    key = np.uint64(_scalar_splitmix64(seed & _MASK_64))  # 先把种子也打散，种子 0 和 1 的划分毫不相干
    indices = np.arange(first_index, first_index + count, dtype=np.uint64)
    hashed = _splitmix64(indices ^ key)
    uniform = (hashed >> np.uint64(11)).astype(np.float64) / float(1 << 53)  # 取高 53 位，恰好放进 float64
    return uniform < val_fraction


def _scalar_splitmix64(value: int) -> int:
    """同一个哈希的纯 Python 版本（用于单个整数，避免 numpy 标量溢出警告）。"""
    z = (value + _GOLDEN_GAMMA) & _MASK_64
    z = ((z ^ (z >> 30)) * _MIX_1) & _MASK_64
    z = ((z ^ (z >> 27)) * _MIX_2) & _MASK_64
    return z ^ (z >> 31)


class _ShardWriter:
    """把一个划分（train 或 val）的 token 依次写进 `{split}_000000.bin`、`{split}_000001.bin`……

    每个分片至多 shard_tokens 个 token，写满就换下一个文件；一篇文档可能跨两个分片，
    无妨（训练时取窗口不跨分片，只在分片交界处损失不到一个窗口的 token）。
    为什么要分片而不是一个大文件？单个文件太大不便拷贝、校验和断点续传，
    而且有的文件系统（如 FAT32）单文件不能超过 4 GB。
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory = directory
        self.split = split
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []      # [{"file": 名字, "tokens": 个数}, ...]
        self.handle = None
        self.documents = self.tokens = self.characters = 0

    def write(self, tokens: np.ndarray) -> None:
        """追加 token；按需打开新分片。分片只在真有 token 时才创建，所以不会有空文件。"""
        while len(tokens):
            if self.handle is None or self.shards[-1]["tokens"] >= self.shard_tokens:
                self._open_next()
            room = self.shard_tokens - self.shards[-1]["tokens"]
            chunk = tokens[:room]
            self.handle.write(chunk.astype(self.dtype, copy=False).tobytes())
            self.shards[-1]["tokens"] += len(chunk)
            self.tokens += len(chunk)
            tokens = tokens[room:]

    def _open_next(self) -> None:
        self.close()
        name = f"{self.split}_{len(self.shards):06d}.bin"
        self.handle = open(self.directory / name, "wb")
        self.shards.append({"file": name, "tokens": 0})

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def stats(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "characters": self.characters,
                "shards": [dict(shard) for shard in self.shards]}


class _SplitWriter:
    """给每篇文档决定去向（train / val），并写进对应的 _ShardWriter。

    “至少一篇验证文档”的保证：语料很小（比如 50 篇、val_fraction=0.01）时，哈希可能
    一篇也没选中，训练时就没法评估。办法是永远“扣住”最后一篇文档先不写：
    读完全部语料后，如果验证集还是空的（且至少有 2 篇文档），就把扣住的这篇放进验证集；
    反过来训练集为空时放进训练集。其余情况按它自己的哈希结果。
    这只多占一篇文档的内存，却不必回头改已经写好的文件。
    """

    def __init__(self, directory: Path, dtype: np.dtype, shard_tokens: int, val_fraction: float, seed: int):
        self.train = _ShardWriter(directory, "train", dtype, shard_tokens)
        self.val = _ShardWriter(directory, "val", dtype, shard_tokens)
        self.val_fraction = val_fraction
        self.seed = seed
        self.documents = 0                       # 已经分配了序号的非空文档数
        self.held: tuple | None = None           # 扣住的最后一篇：(token 数组, 字符数, 是否进 val)

    def add(self, flat: np.ndarray, lengths: np.ndarray, characters: np.ndarray) -> None:
        """收下一批文档（拼接的 token、每篇 token 数、每篇字符数），写出除最后一篇外的全部。"""
        is_val = validation_mask(self.documents, len(lengths), self.seed, self.val_fraction)
        self.documents += len(lengths)
        if self.held is not None:  # 把上一批扣住的那篇接到这批最前面，一起写
            held_tokens, held_chars, held_val = self.held
            flat = np.concatenate([held_tokens, flat])
            lengths = np.concatenate([[len(held_tokens)], lengths])
            characters = np.concatenate([[held_chars], characters])
            is_val = np.concatenate([[held_val], is_val])
        last = int(lengths[-1])
        self.held = (flat[-last:].copy(), int(characters[-1]), bool(is_val[-1]))
        self._write(flat[:-last], lengths[:-1], characters[:-1], is_val[:-1])

    def finish(self) -> None:
        """写出扣住的最后一篇（必要时改变它的去向），关闭所有分片文件。"""
        if self.held is not None:
            tokens, chars, to_val = self.held
            if self.documents >= 2 and self.val_fraction > 0 and self.val.documents == 0:
                to_val = True
            elif self.documents >= 2 and self.train.documents == 0:
                to_val = False
            self._write(tokens, np.array([len(tokens)]), np.array([chars]), np.array([to_val]))
            self.held = None
        self.close()

    def close(self) -> None:
        self.train.close()
        self.val.close()

    def _write(self, flat: np.ndarray, lengths: np.ndarray, characters: np.ndarray, is_val: np.ndarray) -> None:
        """按每篇文档的去向把 token 分给两个划分。向量化：不逐篇循环。"""
        if len(lengths) == 0:
            return
        token_is_val = np.repeat(is_val, lengths)  # 把“每篇的去向”展开成“每个 token 的去向”
        for writer, mask, token_mask in ((self.train, ~is_val, ~token_is_val), (self.val, is_val, token_is_val)):
            if mask.any():
                writer.write(flat[token_mask])
                writer.documents += int(mask.sum())
                writer.characters += int(characters[mask].sum())


class _SkippedLog:
    """--skip-bad 时记录被跳过的坏记录：边读边写进 skipped.txt（不在内存里攒一个大列表）。"""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.count = 0

    def add(self, location: str, reason: str) -> None:
        if self.handle is None:  # 真有坏记录才创建文件
            self.handle = open(self.path, "w", encoding="utf-8")
        self.handle.write(f"{location}\t{reason}\n")
        self.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
