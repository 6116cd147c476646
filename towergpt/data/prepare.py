"""预处理：把语料一次性切成 token，存成磁盘上的“分片”（shard）/ Tokenise a corpus into shards.

为什么训练前要先做这一步？
    训练时每一步都要喂给模型几万个 token。如果每次都现场读 JSON、跑分词器，
    CPU 会成为瓶颈，GPU 干等；而且同一份语料每个 epoch 都要重复分词一遍。
    所以我们“一次分词，永久复用”：把所有 token id 按顺序写进二进制文件，
    训练时用 np.memmap 直接映射进内存，取一段 token 几乎不花时间。

三种数据，三个入口，共用同一套机器（读 -> 分批 -> 多进程分词 -> 划分 train/val -> 写文件）：

预训练数据（`prepare_pretrain`，`--format pretrain`）：

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

对话数据（`prepare_sft`，`--format sft`）：

    DIR/
      meta.json
      train_tokens_000000.bin   所有对话的 token 首尾相连（按 chat_template.render_chat 渲染）
      train_mask_000000.bin     与 token 一一对应的 uint8：1 = 这个 token 要算损失（助手说的话）
      train_index.bin           int64，对话数 + 1 个数：第 i 段对话是 token[index[i]:index[i+1]]
      val_...                   验证集，同样三种文件
      tokenizer/  skipped.txt   同上；skipped.txt 里还列出“太长、放不进上下文”的对话

    为什么对话不像预训练那样随便切窗口？一段对话必须完整地待在一条训练样本里：
    从中间切开，模型会看到“没有问题的回答”或“没有回答的问题”。所以每段对话单独成行，
    太长的对话按整轮丢掉最早的几轮（见 chat_template.fit_to_context），绝不在一条消息中间截断。
    分片只在对话之间切开，一段对话永远不会跨两个分片。

偏好数据（`prepare_dpo`，`--format dpo`）：

    与对话数据的文件完全相同，只是“一段”换成了“一对”：第 i 对占 token[index[i]:index[i+1]]，
    前面是 chosen 序列（提示 + 好的回答），紧接着是 rejected 序列（同一个提示 + 差的回答）；
    另有一个文件记下每对里 chosen 序列有多长，训练时据此把一对切回两条：
      train_chosen_len.bin      int64，每对一个数
    掩码只在两种回答（含各自的 <|im_end|>）上是 1，见 data/preference.py。
    训练 / 验证按“对”划分，一对的两条永远在同一边。

几个设计要点（后面的代码里都有详细注释）：
    1. 多进程并行分词，但输出与进程数无关（按顺序收集结果）：workers=1 和 workers=8
       写出的文件逐字节相同。
    2. 内存有界：输入是流式读的，同时“在路上”的批次最多 2×workers 个，
       峰值内存不随语料大小增长——100 GB 的语料也能在小机器上处理。
    3. 按文档（对话）划分验证集：用“序号的带种子哈希”决定一篇文档进 train 还是 val，
       结果确定、可复现，而且同一篇文档的 token 不会一半在训练集一半在验证集
       （那样验证损失会偏低，因为模型“见过”这篇文章的前半段）。
    4. 要么完整、要么没有：先写到临时目录 `DIR.tmp-<pid>`，全部成功后才改名为 DIR；
       中途出错（坏记录、磁盘满、Ctrl-C）就删掉临时目录，绝不留下一个“看起来完整”的半成品。
    5. 不悄悄丢数据：空文档、坏记录、被截断的对话、太长的对话，全部计数写进 meta.json。
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
from collections import Counter, deque
from dataclasses import dataclass, field as dataclass_field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from towergpt.errors import TowerGPTError
from towergpt.output_dir import check_out_dir, replace_dir

# ---------------------------------------------------------------------------
# 常量
# ---------------------------------------------------------------------------

META_FILE = "meta.json"
SKIPPED_FILE = "skipped.txt"
TOKENIZER_SUBDIR = "tokenizer"

# 数据目录格式的版本号。以后改了文件布局就把它加一，读取端据此给出清楚的报错，
# 而不是把新格式的文件当旧格式读，得到一堆乱码 token。
FORMAT_VERSION = 1

# 支持的数据种类
FORMATS = ("pretrain", "sft", "dpo")

# 对话数据里损失掩码和索引的存储类型（固定小端序）
MASK_DTYPE = np.dtype("u1")
INDEX_DTYPE = np.dtype("<i8")

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
    """按数据种类分派：`--format pretrain` 调 `prepare_pretrain`，`sft` 调 `prepare_sft`，`dpo` 调 `prepare_dpo`。"""
    if format == "pretrain":
        return prepare_pretrain(**kwargs)
    if format == "sft":
        return prepare_sft(**kwargs)
    if format == "dpo":
        return prepare_dpo(**kwargs)
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
    if not field:
        raise TowerGPTError("--field 不能为空 / --field must not be empty")
    job = _start_job(inputs, tokenizer_dir, out_dir, workers, val_fraction, shard_tokens, overwrite)

    def write(directory: Path) -> dict:
        return _write_pretrain(job, directory, field, val_fraction, skip_bad, shard_tokens, seed, verbose)

    return _run_job(job, write, verbose)


def prepare_sft(
    inputs: Sequence[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_seq_len: int = 1024,
    workers: int | None = None,
    val_fraction: float = 0.01,
    skip_bad: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
    shard_tokens: int = 100_000_000,
) -> dict:
    """把对话数据渲染成对话模板的 token 和损失掩码，写成分片，返回摘要 dict（meta.json 的内容 + 用时）。

    参数:
        inputs:        对话文件（.jsonl .json .parquet），每条记录一段对话，格式见 data/dialogue.py
                       （prompt/response、Alpaca、OpenAI messages、ShareGPT conversations）。
        tokenizer_dir: `towergpt tokenizer train` 的输出目录。
        out_dir:       输出目录，规则同 prepare_pretrain。
        max_seq_len:   训练时的序列长度（通常等于 model.max_seq_len）。训练用 ids[:-1] 预测 ids[1:]，
                       所以一段对话最多 max_seq_len + 1 个 token；更长的从最早的一轮开始整轮丢掉
                       （system 保留），只剩最后一轮仍然放不下的整段跳过，记进 skipped.txt。
        workers, val_fraction, skip_bad, seed, overwrite, verbose: 同 prepare_pretrain
                       （验证集按对话划分）。
        shard_tokens:  每个分片最多多少个 token（分片只在对话之间切开）。

    用户能改正的问题都抛 TowerGPTError，此时不会留下 out_dir，也不会留下临时目录。
    """
    job = _start_record_job(inputs, tokenizer_dir, out_dir, max_seq_len, workers, val_fraction, shard_tokens,
                            overwrite)

    def write(directory: Path) -> dict:
        return _write_sft(job, directory, max_seq_len, val_fraction, skip_bad, shard_tokens, seed, verbose)

    return _run_job(job, write, verbose)


def prepare_dpo(
    inputs: Sequence[str | os.PathLike],
    tokenizer_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    max_seq_len: int = 1024,
    workers: int | None = None,
    val_fraction: float = 0.01,
    skip_bad: bool = False,
    seed: int = 0,
    overwrite: bool = False,
    verbose: bool = True,
    shard_tokens: int = 100_000_000,
) -> dict:
    """把偏好数据 {"prompt", "chosen", "rejected"} 渲染成成对的序列和损失掩码，写成分片，返回摘要 dict。

    参数同 prepare_sft。prompt 是字符串或以 user 结尾的消息数组（见 dialogue.parse_preference），
    chosen / rejected 是字符串。每条序列（提示 + 一个回答）至多 max_seq_len + 1 个 token；
    太长的一对先整轮丢掉提示里最早的对话，再截短回答，仍放不下的整对跳过（见 data/preference.py），
    各自计数写进 meta.json。验证集按“对”划分。
    """
    job = _start_record_job(inputs, tokenizer_dir, out_dir, max_seq_len, workers, val_fraction, shard_tokens,
                            overwrite)

    def write(directory: Path) -> dict:
        return _write_dpo(job, directory, max_seq_len, val_fraction, skip_bad, shard_tokens, seed, verbose)

    return _run_job(job, write, verbose)


def _start_record_job(inputs, tokenizer_dir, out_dir, max_seq_len, workers, val_fraction, shard_tokens,
                      overwrite) -> "_Job":
    """对话和偏好数据共用的开头：检查 --max-seq-len，拒绝纯文本输入，再做 _start_job 的检查。"""
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, int) or max_seq_len < 1:
        raise TowerGPTError(f"--max-seq-len 必须是正整数 / must be a positive integer, got {max_seq_len}")
    job = _start_job(inputs, tokenizer_dir, out_dir, workers, val_fraction, shard_tokens, overwrite)
    for path in job.paths:
        if path.suffix.lower() == ".txt":  # 读到这个文件之前就说清楚，免得白白处理前面的文件
            raise TowerGPTError(
                f"{path}: 对话 / 偏好数据必须是 JSON / JSONL / Parquet（每条记录一段对话或一对回答），纯文本分不出谁说了什么"
                f" / dialogue and preference data must be JSON/JSONL/Parquet (one record each), not plain text"
            )
    return job


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
    """把摘要排成几行给人看的中英文（预训练数据和对话数据各有各的数字）。"""
    describe = {"sft": _sft_summary_lines, "dpo": _dpo_summary_lines}.get(summary.get("kind"), _pretrain_summary_lines)
    lines = describe(summary)
    if summary["skipped_records"]:
        lines.append(f"  跳过的坏记录 / skipped bad records: {summary['skipped_records']:,}"
                     f"（清单见 / listed in {Path(summary['out_dir']) / SKIPPED_FILE}）")
    if "elapsed_s" in summary:
        lines.append(f"  用时 / time:        {summary['elapsed_s']:.1f} s，{summary['mb_per_s']:.1f} MB/s"
                     f"（{summary['workers']} 个分词进程 / tokenizer processes）")
    return "\n".join(lines)


def _pretrain_summary_lines(summary: dict) -> list[str]:
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
    return lines


def _sft_summary_lines(summary: dict) -> list[str]:
    train, val = summary["train"], summary["val"]
    conversations = train["conversations"] + val["conversations"]
    tokens = train["tokens"] + val["tokens"]
    assistant = train["assistant_tokens"] + val["assistant_tokens"]
    share = assistant / tokens if tokens else 0.0
    formats = "，".join(f"{name} {count:,}" for name, count in summary["formats"].items()) or "-"
    lines = [
        f"对话数据已写好 / dialogue data written: {summary['out_dir']}",
        f"  对话 / conversations: {conversations:,}（训练 train {train['conversations']:,}"
        f" / 验证 val {val['conversations']:,}）",
        f"  token:              {tokens:,}，其中算损失的助手 token / assistant (loss) tokens {assistant:,}"
        f"（{share:.1%}）",
        f"  格式 / formats:     {formats}",
        f"  每段至多 / at most: max_seq_len + 1 = {summary['max_seq_len'] + 1} 个 token",
    ]
    if summary["truncated_conversations"]:
        lines.append(f"  截断 / truncated:   {summary['truncated_conversations']:,} 段对话丢掉了最早的"
                     f" {summary['dropped_messages']:,} 条消息（整轮丢弃，system 保留）"
                     f" / conversations lost their oldest messages")
    if summary["too_long_conversations"]:
        lines.append(f"  太长而跳过 / too long, skipped: {summary['too_long_conversations']:,}（连最后一轮都放不下，"
                     f"清单见 / listed in {Path(summary['out_dir']) / SKIPPED_FILE}；可调大 --max-seq-len）")
    return lines


def _dpo_summary_lines(summary: dict) -> list[str]:
    train, val = summary["train"], summary["val"]
    pairs = train["pairs"] + val["pairs"]
    tokens = train["tokens"] + val["tokens"]
    answer = train["assistant_tokens"] + val["assistant_tokens"]
    share = answer / tokens if tokens else 0.0
    lines = [
        f"偏好数据已写好 / preference data written: {summary['out_dir']}",
        f"  偏好对 / pairs:     {pairs:,}（训练 train {train['pairs']:,} / 验证 val {val['pairs']:,}）",
        f"  token:              {tokens:,}（两条序列合计），其中算对数概率的回答 token / answer tokens {answer:,}"
        f"（{share:.1%}）",
        f"  每条至多 / at most: max_seq_len + 1 = {summary['max_seq_len'] + 1} 个 token",
    ]
    if summary["truncated_pairs"]:
        lines.append(f"  截断提示 / prompt cut: {summary['truncated_pairs']:,} 对丢掉了提示里最早的"
                     f" {summary['dropped_messages']:,} 条消息 / pairs lost their oldest prompt messages")
    if summary["truncated_answers"]:
        lines.append(f"  截短回答 / answers cut: {summary['truncated_answers']:,} 对的回答从末尾截短"
                     f" / pairs had their answers shortened")
    if summary["too_long_pairs"]:
        lines.append(f"  太长而跳过 / too long, skipped: {summary['too_long_pairs']:,}（清单见 / listed in "
                     f"{Path(summary['out_dir']) / SKIPPED_FILE}；可调大 --max-seq-len）")
    return lines


# ---------------------------------------------------------------------------
# 三种数据共用的外壳：检查参数 -> 写临时目录 -> 改名 -> 摘要
# ---------------------------------------------------------------------------

@dataclass
class _Job:
    """一次 prepare 的公共部分：输入文件、分词器、输出目录、进程数。"""

    paths: list[Path]
    tokenizer: object
    tokenizer_dir: Path
    out_dir: Path
    workers: int


def _start_job(inputs, tokenizer_dir, out_dir, workers, val_fraction, shard_tokens, overwrite) -> _Job:
    """在读一个字节语料之前，先把能发现的问题都报出来，然后载入分词器。"""
    from towergpt.data.readers import check_input
    from towergpt.tokenizer import Tokenizer

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [check_input(path) for path in inputs] if inputs else []
    _check_args(paths, workers, val_fraction, shard_tokens)
    out_dir = Path(out_dir)
    # 替换时只替换“以前 prepare 写出的目录”（有 meta.json），且语料和分词器不能在里面：
    # 手一滑写成 `--out ~ --overwrite`，或语料就在 --out 里，--overwrite 都会把它们整个删掉
    check_out_dir(out_dir, overwrite, "--out", inputs=[*paths, Path(tokenizer_dir)], marker=META_FILE)
    tokenizer = Tokenizer.load(tokenizer_dir)
    return _Job(paths, tokenizer, Path(tokenizer_dir), out_dir, workers or os.cpu_count() or 1)


def _run_job(job: _Job, write: Callable[[Path], dict], verbose: bool) -> dict:
    """在临时目录里调用 write(临时目录) 写出全部文件，成功后改名为 out_dir；返回 meta + 用时。

    先写临时目录，成功后再改名：改名在同一文件系统里是原子的，
    别人（或训练脚本）看到的 out_dir 要么不存在，要么是完整的。
    """
    out_dir = job.out_dir
    temporary = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    started = time.perf_counter()
    try:
        temporary.mkdir(parents=True)
        meta = write(temporary)
        replace_dir(temporary, out_dir)
    except OSError as err:  # 没有写权限、磁盘满……：说清楚是哪个文件，而不是抛 traceback
        shutil.rmtree(temporary, ignore_errors=True)
        raise TowerGPTError(f"{err.filename or out_dir}: 读写失败 / I/O error: {err.strerror or err}") from None
    except BaseException:  # 其余一切，包括 Ctrl-C（KeyboardInterrupt）：同样不留半成品
        shutil.rmtree(temporary, ignore_errors=True)
        raise

    elapsed = time.perf_counter() - started
    input_bytes = sum(item["bytes"] for item in meta["inputs"])
    summary = dict(meta, out_dir=str(out_dir), elapsed_s=round(elapsed, 3),
                   mb_per_s=round(input_bytes / 1e6 / max(elapsed, 1e-9), 3), workers=job.workers)
    if verbose:
        print(format_summary(summary))
    return summary


def _check_args(paths: list[Path], workers, val_fraction: float, shard_tokens: int) -> None:
    if not paths:
        raise TowerGPTError("没有给出语料文件 / no input files given (--input)")
    if workers is not None and workers < 1:
        raise TowerGPTError(f"--workers 必须是正整数 / must be a positive integer, got {workers}")
    if not 0.0 <= val_fraction < 1.0:
        raise TowerGPTError(
            f"--val-fraction {val_fraction} 超出范围，应满足 0 <= 值 < 1（常用 0.01）"
            f" / must satisfy 0 <= value < 1 (0.01 is typical)"
        )
    if shard_tokens < 1:
        raise TowerGPTError(f"shard_tokens 必须是正整数 / must be positive, got {shard_tokens}")


def _common_meta(job: _Job, kind: str, dtype: np.dtype, val_fraction: float, seed: int, shard_tokens: int) -> dict:
    """两种数据的 meta.json 共有的字段。"""
    tokenizer = job.tokenizer
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "tokenizer_fingerprint": tokenizer.fingerprint,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "dtype": dtype.name,             # "uint16" 或 "uint32"，字节序固定为小端
        "byte_order": "little",
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
    }


def _finish_meta(job: _Job, directory: Path, meta: dict) -> dict:
    """补上输入文件清单和时间，存一份分词器，写出 meta.json。"""
    meta["inputs"] = [{"path": str(path.resolve()), "bytes": path.stat().st_size} for path in job.paths]
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    job.tokenizer.save(directory / TOKENIZER_SUBDIR)
    (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return meta


# ---------------------------------------------------------------------------
# 共用的流水线：读 -> 分批 -> 并行分词 -> 划分 train/val 并写出
# ---------------------------------------------------------------------------

# read_items(路径) 逐条产出 (要送去分词的东西, 字符数, 字节数)；后两者只用来凑批和推进进度条。
ReadItems = Callable[[Path], Iterator[tuple[object, int, int]]]


def _run_pipeline(job: _Job, read_items: ReadItems, encoder_class: type, encoder_args: tuple,
                  splitter: "_SplitWriter", on_result: Callable[["_Encoded"], None], verbose: bool) -> None:
    """把 job.paths 全部读完、分词、交给 splitter 写出；每批结果先交给 on_result（计数、记录跳过的）。"""
    from tqdm import tqdm

    total_bytes = sum(path.stat().st_size for path in job.paths)
    # disable=None：标准错误不是终端（被重定向到文件、管道）时不画进度条，
    # 免得日志里塞满 \r 刷新的半行；出错时 stderr 上也就只有那一行清楚的报错。
    progress = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1000, mininterval=0.5,
                    desc="分词 / tokenizing", disable=None if verbose else True, dynamic_ncols=True)
    try:
        batches = _read_batches(job.paths, read_items, progress)
        encoded_batches = _tokenize_in_order(batches, job.tokenizer, job.tokenizer_dir, job.workers,
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
# 预训练：文本 -> [bos] + ids + [eos]
# ---------------------------------------------------------------------------

def _write_pretrain(job: _Job, directory: Path, field: str, val_fraction: float, skip_bad: bool,
                    shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出预训练数据的全部文件，返回 meta。"""
    from towergpt.data.readers import iter_texts

    dtype = token_dtype(job.tokenizer.vocab_size)
    counts = {"empty_documents": 0}
    splitter = _SplitWriter(lambda split: _ShardWriter(directory, split, dtype, shard_tokens), val_fraction, seed)

    with contextlib.closing(_SkippedLog(directory / SKIPPED_FILE)) as skipped:
        def read_items(path: Path):
            for _, text in iter_texts(path, field=field, skip_bad=skip_bad, on_bad=skipped.add):
                if not text or text.isspace():  # 空白文档：计数，但不写（它只会教模型“bos 后面紧跟 eos”）
                    counts["empty_documents"] += 1
                    continue
                yield text, len(text), len(text.encode("utf-8", errors="replace"))

        _run_pipeline(job, read_items, _TextEncoder, (dtype,), splitter, lambda encoded: None, verbose)

    if splitter.kept == 0:
        names = ", ".join(str(path) for path in job.paths)
        raise TowerGPTError(
            f"语料里没有任何非空文档：{names}（JSON 文件请确认 --field '{field}' 是否正确）"
            f" / the corpus holds no non-empty documents (for JSON, check --field '{field}')"
        )
    meta = _common_meta(job, "pretrain", dtype, val_fraction, seed, shard_tokens)
    meta.update({
        "field": field,
        "train": splitter.train.stats(),
        "val": splitter.val.stats(),
        "empty_documents": counts["empty_documents"],
        "skipped_records": skipped.count,
    })
    return _finish_meta(job, directory, meta)


# ---------------------------------------------------------------------------
# 对话：记录 -> 消息列表 -> (必要时整轮截断) -> render_chat 的 ids 和 loss_mask
# ---------------------------------------------------------------------------

def _write_sft(job: _Job, directory: Path, max_seq_len: int, val_fraction: float, skip_bad: bool,
               shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出对话数据的全部文件，返回 meta。

    解析记录（record_to_messages）在主进程做：它很便宜，而且坏记录要立刻报错、指明位置。
    渲染和截断（要分词，贵）在工作进程里做。
    坏记录（--skip-bad 时）不直接写进 skipped.txt，而是夹在批次里“搭车”走一趟工作进程再回来，
    这样 skipped.txt 里坏记录和太长的对话严格按输入顺序排列，与进程数无关。
    """
    dtype = token_dtype(job.tokenizer.vocab_size)
    formats: Counter = Counter()
    splitter, counts, skipped = _write_records(
        job, _DialogueReader(skip_bad, formats), _ChatEncoder, (dtype, max_seq_len + 1),
        lambda split: _ConversationWriter(directory, split, dtype, shard_tokens), directory, val_fraction, seed,
        verbose)
    too_long = counts["too_long_conversations"]
    _check_kept(job, splitter, too_long, "对话", "conversations", max_seq_len)
    meta = _common_meta(job, "sft", dtype, val_fraction, seed, shard_tokens)
    meta.update(_record_layout(job, max_seq_len))
    meta.update({
        "train": splitter.train.stats(),
        "val": splitter.val.stats(),
        "formats": dict(sorted(formats.items())),
        "truncated_conversations": counts["truncated_conversations"],
        "dropped_messages": counts["dropped_messages"],
        "too_long_conversations": too_long,
        "skipped_records": skipped - too_long,   # skipped.txt 里除去太长的对话，就是坏记录
    })
    return _finish_meta(job, directory, meta)


def _write_dpo(job: _Job, directory: Path, max_seq_len: int, val_fraction: float, skip_bad: bool,
               shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出偏好数据的全部文件，返回 meta。流程与 _write_sft 相同。"""
    dtype = token_dtype(job.tokenizer.vocab_size)
    splitter, counts, skipped = _write_records(
        job, _PreferenceReader(skip_bad), _PairEncoder, (dtype, max_seq_len + 1),
        lambda split: _PairWriter(directory, split, dtype, shard_tokens), directory, val_fraction, seed, verbose)
    too_long = counts["too_long_pairs"]
    _check_kept(job, splitter, too_long, "偏好对", "preference pairs", max_seq_len)
    meta = _common_meta(job, "dpo", dtype, val_fraction, seed, shard_tokens)
    meta.update(_record_layout(job, max_seq_len))
    meta.update({
        "chosen_len_dtype": "int64",     # 每对里 chosen 序列的 token 数
        "train": splitter.train.stats(),
        "val": splitter.val.stats(),
        "truncated_pairs": counts["truncated_pairs"],        # 提示丢掉了最早几轮的对数
        "dropped_messages": counts["dropped_messages"],      # 一共丢掉的提示消息条数
        "truncated_answers": counts["truncated_answers"],    # 回答被截短的对数
        "too_long_pairs": too_long,                          # 怎么都放不下、整对跳过的
        "skipped_records": skipped - too_long,
    })
    return _finish_meta(job, directory, meta)


def _write_records(job: _Job, read_items, encoder_class: type, encoder_args: tuple, make_writer, directory: Path,
                   val_fraction: float, seed: int, verbose: bool) -> tuple["_SplitWriter", Counter, int]:
    """对话与偏好数据共用：读记录 -> 工作进程里渲染 -> 划分并写出；返回 (splitter, 计数, 跳过的条数)。"""
    counts: Counter = Counter()
    splitter = _SplitWriter(make_writer, val_fraction, seed)
    with contextlib.closing(_SkippedLog(directory / SKIPPED_FILE)) as skipped:
        def on_result(encoded: _Encoded) -> None:
            counts.update(encoded.counts)
            for location, reason in encoded.skipped:
                skipped.add(location, reason)

        _run_pipeline(job, read_items, encoder_class, encoder_args, splitter, on_result, verbose)
    return splitter, counts, skipped.count


def _check_kept(job: _Job, splitter: "_SplitWriter", too_long: int, noun: str, noun_en: str, max_seq_len: int) -> None:
    """一条可用的记录都没有时报错（太长的有几条也说出来）。"""
    if splitter.kept:
        return
    names = ", ".join(str(path) for path in job.paths)
    message = f"没有任何可用的{noun}：{names} / no usable {noun_en}"
    if too_long:
        message += (f"；{too_long} 条连最短的形式都超过 max_seq_len + 1 = {max_seq_len + 1} 个 token，"
                    f"请调大 --max-seq-len / {too_long} too long for --max-seq-len {max_seq_len}")
    raise TowerGPTError(message)


def _record_layout(job: _Job, max_seq_len: int) -> dict:
    """对话与偏好数据的 meta.json 共有的字段。"""
    return {
        "max_seq_len": max_seq_len,      # 每条序列至多 max_seq_len + 1 个 token
        "im_start_id": job.tokenizer.im_start_id,
        "im_end_id": job.tokenizer.im_end_id,
        "mask_dtype": MASK_DTYPE.name,   # "uint8"：1 = 这个 token 算损失
        "index_dtype": "int64",
    }


class _DialogueReader:
    """read_items：把一个对话文件读成 (位置, 解析结果 或 None, 跳过原因 或 None) 一条条交出去。

    解析结果为 None 的是 --skip-bad 跳过的坏记录，它们夹在批次里按顺序回到主进程（见 _write_sft）。
    对话数据的解析结果是消息列表；顺带按格式（prompt_response / alpaca / messages / conversations）
    计数，写进 meta.json。偏好数据见子类 _PreferenceReader。
    """

    def __init__(self, skip_bad: bool, formats: Counter | None = None):
        self.skip_bad = skip_bad
        self.formats = formats if formats is not None else Counter()

    def parse(self, record, location: str) -> tuple[object, int, int]:
        """一条记录 -> (解析结果, 字符数, 字节数)；不合格时抛 DialogueError。"""
        from towergpt.data.dialogue import parse_record

        kind, messages = parse_record(record, location)
        self.formats[kind] += 1
        return messages, *_text_size(message["content"] for message in messages)

    def __call__(self, path: Path) -> Iterator[tuple[tuple, int, int]]:
        from towergpt.data.dialogue import DialogueError
        from towergpt.data.readers import iter_records, record_location

        bad: list[tuple[str, str]] = []   # 读取器发现的坏记录（坏 JSON、非 UTF-8……），在下一条好记录之前交出
        records = iter_records(path, skip_bad=self.skip_bad, on_bad=lambda where, why: bad.append((where, why)))
        for number, record in records:
            yield from self._flush(bad)
            location = record_location(path, number)
            try:
                parsed, characters, size = self.parse(record, location)
            except DialogueError as error:
                if not self.skip_bad:
                    raise
                yield (error.location, None, error.reason), 0, 0
                continue
            yield (location, parsed, None), characters, size
        yield from self._flush(bad)

    @staticmethod
    def _flush(bad: list) -> Iterator[tuple[tuple, int, int]]:
        for where, why in bad:
            yield (where, None, why), 0, 0
        bad.clear()


class _PreferenceReader(_DialogueReader):
    """偏好数据：解析结果是 (提示消息列表, chosen, rejected)，见 dialogue.parse_preference。"""

    def parse(self, record, location: str) -> tuple[object, int, int]:
        from towergpt.data.dialogue import parse_preference

        prompt, chosen, rejected = parse_preference(record, location)
        texts = [message["content"] for message in prompt] + [chosen, rejected]
        return (prompt, chosen, rejected), *_text_size(texts)


def _text_size(texts) -> tuple[int, int]:
    """(字符数, UTF-8 字节数)，只用于凑批和推进进度条。"""
    texts = list(texts)
    return sum(len(text) for text in texts), sum(len(text.encode("utf-8")) for text in texts)


# ---------------------------------------------------------------------------
# 分词器（主进程和工作进程共用）：一批输入 -> 一个 _Encoded
# ---------------------------------------------------------------------------

@dataclass
class _Documents:
    """若干篇文档（或对话）的 token，按篇首尾相连地放在一维数组里。

    lengths:  (n,) 每篇多少个 token
    columns:  每个 token 一个值的数组，长 lengths.sum()：{"tokens": ...}，对话还有 {"mask": ...}
    stats:    每篇一个数的统计，(n,)：{"characters": ...} 或 {"assistant_characters": ...}

    用 numpy 数组而不是 list[list[int]]：一个 uint16 数组 pickle 之后只有 2 字节/token，
    而 Python 的 int 列表要大十几倍，进程间传输会慢得多；挑选、拼接也都是向量化的。
    """

    lengths: np.ndarray
    columns: dict[str, np.ndarray]
    stats: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, keep: np.ndarray) -> "_Documents":
        """按篇挑选（keep 是每篇一个的 bool）。先把“每篇的去留”展开成“每个 token 的去留”。"""
        token_keep = np.repeat(keep, self.lengths)
        return _Documents(self.lengths[keep], {name: column[token_keep] for name, column in self.columns.items()},
                          {name: values[keep] for name, values in self.stats.items()})

    def split_last(self) -> tuple["_Documents", "_Documents"]:
        """(除最后一篇外的全部, 最后一篇)。切片是视图，不复制数据。"""
        cut = int(self.lengths[:-1].sum())
        head = _Documents(self.lengths[:-1], {name: column[:cut] for name, column in self.columns.items()},
                          {name: values[:-1] for name, values in self.stats.items()})
        tail = _Documents(self.lengths[-1:], {name: column[cut:].copy() for name, column in self.columns.items()},
                          {name: values[-1:] for name, values in self.stats.items()})
        return head, tail

    @staticmethod
    def concat(first: "_Documents", second: "_Documents") -> "_Documents":
        return _Documents(np.concatenate([first.lengths, second.lengths]),
                          {name: np.concatenate([first.columns[name], second.columns[name]]) for name in first.columns},
                          {name: np.concatenate([first.stats[name], second.stats[name]]) for name in first.stats})


@dataclass
class _Encoded:
    """一批输入分词后的结果，在工作进程里算好、整批传回主进程。

    documents: 留下来要写的文档（对话）。
    ordinals:  (n,) 每篇留下的文档在本批“占序号的输入”里排第几——它决定这篇进 train 还是 val。
    consumed:  本批一共多少条“占序号的输入”。对话里太长而丢掉的也占一个序号，
               这样改变 --max-seq-len 不会让后面所有对话的 train/val 去向整体挪位。
    counts:    额外的计数（被截断的对话、丢掉的消息……）。
    skipped:   被跳过的 (位置, 原因)，按输入顺序。
    """

    documents: _Documents
    ordinals: np.ndarray
    consumed: int
    counts: dict[str, int] = dataclass_field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclass_field(default_factory=list)


class _TextEncoder:
    """预训练：一批文本 -> 每篇 [bos] + ids + [eos]，外加每篇的字符数（用来算 bpc）。"""

    def __init__(self, tokenizer, dtype: np.dtype):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.bos = [tokenizer.bos_id]
        self.eos = [tokenizer.eos_id]

    def __call__(self, texts: list[str]) -> _Encoded:
        encoded = self.tokenizer.encode_batch(texts)  # SentencePiece 在 C++ 里多线程处理整批
        lengths = np.fromiter((len(ids) + 2 for ids in encoded), dtype=np.int64, count=len(encoded))
        # 每篇文档 = [bos] + ids + [eos]，全部首尾相连成一个一维数组
        pieces = itertools.chain.from_iterable(part for ids in encoded for part in (self.bos, ids, self.eos))
        flat = np.fromiter(pieces, dtype=self.dtype, count=int(lengths.sum()))
        characters = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
        documents = _Documents(lengths, {"tokens": flat}, {"characters": characters})
        return _Encoded(documents, np.arange(len(texts)), len(texts))


class _ChatEncoder:
    """对话：一批 (位置, 消息列表, 跳过原因) -> 每段对话的 ids 和 loss_mask（chat_template 的唯一模板）。

    max_tokens = max_seq_len + 1：训练时 x = ids[:-1]、y = ids[1:]，
    所以 max_seq_len + 1 个 token 的对话正好填满长 max_seq_len 的上下文。
    """

    def __init__(self, tokenizer, dtype: np.dtype, max_tokens: int):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_tokens = max_tokens

    def __call__(self, entries: list[tuple]) -> _Encoded:
        ids_parts, mask_parts, lengths, assistant_characters, ordinals = [], [], [], [], []
        counts = {"truncated_conversations": 0, "dropped_messages": 0, "too_long_conversations": 0}
        skipped: list[tuple[str, str]] = []
        consumed = 0
        for location, messages, reason in entries:
            if messages is None:  # 主进程已判定的坏记录，原样带回
                skipped.append((location, reason))
                continue
            ordinal, consumed = consumed, consumed + 1
            fitted = self._fit(messages)
            if fitted is None:
                counts["too_long_conversations"] += 1
                skipped.append((location, self._too_long_reason(messages)))
                continue
            kept, dropped, rendered = fitted
            if dropped:
                counts["truncated_conversations"] += 1
                counts["dropped_messages"] += dropped
            ids_parts.append(rendered.ids)
            mask_parts.append(rendered.loss_mask)
            lengths.append(len(rendered.ids))
            assistant_characters.append(sum(len(m["content"]) for m in kept if m["role"] == "assistant"))
            ordinals.append(ordinal)
        documents = _Documents(
            np.array(lengths, dtype=np.int64),
            {"tokens": np.fromiter(itertools.chain.from_iterable(ids_parts), dtype=self.dtype),
             "mask": np.fromiter(itertools.chain.from_iterable(mask_parts), dtype=MASK_DTYPE)},
            {"assistant_characters": np.array(assistant_characters, dtype=np.int64)},
        )
        return _Encoded(documents, np.array(ordinals, dtype=np.int64), consumed, counts, skipped)

    def _fit(self, messages: list[dict]):
        """放得下就原样渲染；放不下就整轮丢弃最早的对话（fit_to_context）。返回 (留下的消息, 丢掉几条, 渲染结果) 或 None。

        绝大多数对话本来就放得下：先渲染一次，够短就直接用，
        不必先让 fit_to_context 渲染一遍、再为了取 ids 渲染第二遍。
        """
        from towergpt.chat_template import fit_to_context, render_chat

        rendered = render_chat(self.tokenizer, messages)
        if len(rendered.ids) <= self.max_tokens:
            return messages, 0, rendered
        fitted = fit_to_context(self.tokenizer, messages, self.max_tokens)
        if fitted is None:
            return None
        kept, dropped = fitted
        return kept, dropped, render_chat(self.tokenizer, kept)

    def _too_long_reason(self, messages: list[dict]) -> str:
        """跳过原因里写明：只留 system 和最后一轮也有多少 token，上限是多少。"""
        from towergpt.chat_template import render_chat

        system = messages[:1] if messages[0]["role"] == "system" else []
        last_user = max(index for index, message in enumerate(messages) if message["role"] == "user")
        needed = len(render_chat(self.tokenizer, system + messages[last_user:]).ids)
        return (f"对话太长：只保留 system 和最后一轮也有 {needed} 个 token，超过 max_seq_len + 1 = {self.max_tokens}，"
                f"整段跳过（可调大 --max-seq-len）/ conversation too long: the system prompt plus the last turn"
                f" alone take {needed} tokens > max_seq_len + 1 = {self.max_tokens}; skipped")


class _PairEncoder:
    """偏好数据：一批 (位置, (提示, chosen, rejected), 跳过原因) -> 每对的 [chosen 序列, rejected 序列]。

    一对在 _Documents 里算“一篇”：token 和掩码是两条序列首尾相接，stats 里的 chosen_tokens
    记下前一条有多长。这样划分 train/val、写分片都按“对”进行，一对永远不会被拆开。
    """

    def __init__(self, tokenizer, dtype: np.dtype, max_tokens: int):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_tokens = max_tokens

    def __call__(self, entries: list[tuple]) -> _Encoded:
        from towergpt.data.preference import render_pair

        ids_parts, mask_parts, lengths, chosen_tokens, answer_characters, ordinals = [], [], [], [], [], []
        counts = {"truncated_pairs": 0, "dropped_messages": 0, "truncated_answers": 0, "too_long_pairs": 0}
        skipped: list[tuple[str, str]] = []
        consumed = 0
        for location, parsed, reason in entries:
            if parsed is None:  # 主进程已判定的坏记录，原样带回
                skipped.append((location, reason))
                continue
            ordinal, consumed = consumed, consumed + 1
            prompt, chosen, rejected = parsed
            pair = render_pair(self.tokenizer, prompt, chosen, rejected, self.max_tokens)
            if pair is None:
                counts["too_long_pairs"] += 1
                skipped.append((location, self._too_long_reason(prompt)))
                continue
            if pair.dropped_messages:
                counts["truncated_pairs"] += 1
                counts["dropped_messages"] += pair.dropped_messages
            counts["truncated_answers"] += pair.truncated
            ids_parts += [pair.chosen.ids, pair.rejected.ids]
            mask_parts += [pair.chosen.loss_mask, pair.rejected.loss_mask]
            lengths.append(len(pair.chosen.ids) + len(pair.rejected.ids))
            chosen_tokens.append(len(pair.chosen.ids))
            answer_characters.append(len(chosen) + len(rejected))   # 回答原文的字符数（截短前），仅作统计
            ordinals.append(ordinal)
        documents = _Documents(
            np.array(lengths, dtype=np.int64),
            {"tokens": np.fromiter(itertools.chain.from_iterable(ids_parts), dtype=self.dtype),
             "mask": np.fromiter(itertools.chain.from_iterable(mask_parts), dtype=MASK_DTYPE)},
            {"chosen_tokens": np.array(chosen_tokens, dtype=np.int64),
             "assistant_characters": np.array(answer_characters, dtype=np.int64)},
        )
        return _Encoded(documents, np.array(ordinals, dtype=np.int64), consumed, counts, skipped)

    def _too_long_reason(self, prompt: list[dict]) -> str:
        from towergpt.data.preference import minimal_prompt_tokens

        needed = minimal_prompt_tokens(self.tokenizer, prompt)
        return (f"偏好对太长：提示只保留 system 和最后一条 user 也有 {needed} 个 token，加上回答的开头超过"
                f" max_seq_len + 1 = {self.max_tokens}，整对跳过（可调大 --max-seq-len）/ pair too long: the"
                f" shortest prompt alone takes {needed} tokens, no room for the answers within {self.max_tokens}")


# ---------------------------------------------------------------------------
# 并行分词：结果按提交顺序取回，所以输出与进程数无关
# ---------------------------------------------------------------------------

# 工作进程里的分词器对象：每个进程只在启动时载入一次分词器（由 Pool 的 initializer 完成），
# 之后每批输入都复用它，而不是每批都重新读一遍 tokenizer.model。
_worker_encoder = None


def _init_worker(tokenizer_dir: str, encoder_class: type, encoder_args: tuple, threads: int) -> None:
    from towergpt.tokenizer import Tokenizer

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


def _tokenize_in_order(batches: Iterator[list], tokenizer, tokenizer_dir: Path, workers: int,
                       encoder_class: type, encoder_args: tuple) -> Iterator[_Encoded]:
    """用 encoder_class(分词器, *encoder_args) 处理每一批，按输入顺序产出结果。

    为什么不用 `pool.imap(函数, 批次生成器)`？因为 Pool.imap 会在后台线程里把输入生成器
    一口气读完、全部排进任务队列——语料有多大，内存就涨多大。这里自己控制：
    用 apply_async 提交，队列（deque）里最多 2×workers 个未完成的批次；满了就先取回最早的
    那一批（`.get()` 会等它算完）再读下一批。这样：
        - 所有进程都有活干（每个进程手里大约有两批，一批在算，一批在排队）；
        - 内存里最多 2×workers 批输入和结果，与语料大小无关；
        - 结果严格按提交顺序取回，输出与 workers 无关，可复现。
    encoder_class 以类的形式（而不是对象）传给工作进程：类按名字 pickle，
    每个进程自己载入分词器、自己构造对象，不必把分词器本身序列化过去。
    """
    if workers == 1:  # 单进程：不开进程池，省掉启动进程和 pickle 的开销，调试也方便
        encoder = encoder_class(tokenizer, *encoder_args)
        for batch in batches:
            yield encoder(batch)
        return

    # 用平台默认的启动方式（Linux 上是 fork，启动快；macOS / Windows 上是 spawn）。
    context = multiprocessing.get_context()
    initargs = (str(tokenizer_dir), encoder_class, encoder_args, max(1, (os.cpu_count() or 1) // workers))
    with context.Pool(workers, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque = deque()
        for batch in batches:
            pending.append(pool.apply_async(_encode_in_worker, (batch,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()  # 正常结束：让进程自己退出（with 语句退出时会 terminate，那是给出错时用的）
        pool.join()


# ---------------------------------------------------------------------------
# 划分 train / val
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


class _SplitWriter:
    """给每篇文档（对话）决定去向（train / val），交给对应的写入器。

    make_writer(划分名) 造出写入器：预训练用 _ShardWriter，对话用 _ConversationWriter；
    划分规则（下面这些）两者完全相同。

    “至少一篇验证文档”的保证：语料很小（比如 50 篇、val_fraction=0.01）时，哈希可能
    一篇也没选中，训练时就没法评估。办法是永远“扣住”最后一篇文档先不写：
    读完全部语料后，如果验证集还是空的（且至少有 2 篇文档），就把扣住的这篇放进验证集；
    反过来训练集为空时放进训练集。其余情况按它自己的哈希结果。
    这只多占一篇文档的内存，却不必回头改已经写好的文件。
    """

    def __init__(self, make_writer: Callable[[str], object], val_fraction: float, seed: int):
        self.train = make_writer("train")
        self.val = make_writer("val")
        self.val_fraction = val_fraction
        self.seed = seed
        self.seen = 0                            # 已经分配了序号的输入条数
        self.kept = 0                            # 其中留下来要写的篇数
        self.held: tuple[_Documents, bool] | None = None   # 扣住的最后一篇：(文档, 是否进 val)

    def add(self, encoded: _Encoded) -> None:
        """收下一批，写出除最后一篇外的全部。"""
        is_val = validation_mask(self.seen, encoded.consumed, self.seed, self.val_fraction)[encoded.ordinals]
        self.seen += encoded.consumed
        documents = encoded.documents
        if len(documents) == 0:
            return
        self.kept += len(documents)
        if self.held is not None:  # 把上一批扣住的那篇接到这批最前面，一起写
            held_documents, held_val = self.held
            documents = _Documents.concat(held_documents, documents)
            is_val = np.concatenate([[held_val], is_val])
        rest, last = documents.split_last()
        self.held = (last, bool(is_val[-1]))
        self._write(rest, is_val[:-1])

    def finish(self) -> None:
        """写出扣住的最后一篇（必要时改变它的去向），关闭所有文件。"""
        if self.held is not None:
            documents, to_val = self.held
            if self.kept >= 2 and self.val_fraction > 0 and self.val.count == 0:
                to_val = True
            elif self.kept >= 2 and self.train.count == 0:
                to_val = False
            self._write(documents, np.array([to_val]))
            self.held = None
        self.close()

    def close(self) -> None:
        self.train.close()
        self.val.close()

    def _write(self, documents: _Documents, is_val: np.ndarray) -> None:
        """按每篇的去向分给两个划分。向量化：不逐篇循环。"""
        if len(documents) == 0:
            return
        for writer, mask in ((self.train, ~is_val), (self.val, is_val)):
            if mask.all():
                writer.write(documents)
            elif mask.any():
                writer.write(documents.select(mask))


# ---------------------------------------------------------------------------
# 写入器：预训练的 token 分片；对话的 token + 掩码 + 索引
# ---------------------------------------------------------------------------

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
        self.count = self.tokens = self.characters = 0

    def write(self, documents: _Documents) -> None:
        """追加若干篇文档的 token，并累计篇数和字符数。"""
        self._write_tokens(documents.columns["tokens"])
        self.count += len(documents)
        self.characters += int(documents.stats["characters"].sum())

    def _write_tokens(self, tokens: np.ndarray) -> None:
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
        return {"documents": self.count, "tokens": self.tokens, "characters": self.characters,
                "shards": [dict(shard) for shard in self.shards]}


class _ConversationWriter:
    """把一个划分的对话写成三种文件：

        {split}_tokens_000000.bin  token id（uint16/uint32），对话首尾相连
        {split}_mask_000000.bin    每个 token 一个 uint8：1 = 算损失
        {split}_index.bin          int64，第 i 段对话在全部 token 里（各分片按顺序接起来）占
                                   [index[i], index[i+1])；共 对话数 + 1 个数，第一个是 0

    为什么要索引？对话长短不一，训练时要“一段一段”地取，不能像预训练那样按固定步长切窗口。
    有了累计偏移量，第 i 段的起止一查便知，不用扫描前面的数据。
    分片只在对话之间切开：一段对话永远完整地在一个分片里（分片因此可能略小于 shard_tokens；
    如果一段对话本身就超过 shard_tokens，它单独占一个分片）。
    """

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.directory = directory
        self.split = split
        self.dtype = dtype
        self.shard_tokens = shard_tokens
        self.index_file = f"{split}_index.bin"
        self.shards: list[dict] = []      # [{"tokens_file", "mask_file", "tokens", "conversations"}, ...]
        self.handles = None               # 当前分片的 (token 文件, 掩码文件)
        self.index_handle = None
        self.count = self.tokens = self.assistant_tokens = self.assistant_characters = 0

    def write(self, documents: _Documents) -> None:
        """追加若干段对话：先记索引，再按对话边界写进分片。"""
        if self.index_handle is None:  # 第一段对话到来时才建索引文件，没有对话的划分不留空文件
            self.index_handle = open(self.directory / self.index_file, "wb")
            self.index_handle.write(np.zeros(1, dtype=INDEX_DTYPE).tobytes())
        ends = self.tokens + np.cumsum(documents.lengths)
        self.index_handle.write(ends.astype(INDEX_DTYPE).tobytes())

        tokens, mask, lengths = documents.columns["tokens"], documents.columns["mask"], documents.lengths
        first = position = 0
        while first < len(lengths):
            shard = self.shards[-1] if self.handles is not None else None
            if shard is None or (shard["tokens"] and shard["tokens"] + lengths[first] > self.shard_tokens):
                shard = self._open_next()
            # 本分片还放得下接下来的几段对话（至少一段：空分片总要收下一段，哪怕它比 shard_tokens 长）
            cumulative = np.cumsum(lengths[first:])
            take = max(1, int(np.searchsorted(cumulative, self.shard_tokens - shard["tokens"], side="right")))
            size = int(cumulative[take - 1])
            self.handles[0].write(tokens[position:position + size].astype(self.dtype, copy=False).tobytes())
            self.handles[1].write(mask[position:position + size].astype(MASK_DTYPE, copy=False).tobytes())
            shard["tokens"] += size
            shard["conversations"] += take
            first += take
            position += size

        self.count += len(documents)
        self.tokens += int(lengths.sum())
        self.assistant_tokens += int(mask.sum(dtype=np.int64))
        self.assistant_characters += int(documents.stats["assistant_characters"].sum())

    def _open_next(self) -> dict:
        self._close_shard()
        number = len(self.shards)
        shard = {"tokens_file": f"{self.split}_tokens_{number:06d}.bin",
                 "mask_file": f"{self.split}_mask_{number:06d}.bin", "tokens": 0, "conversations": 0}
        self.handles = (open(self.directory / shard["tokens_file"], "wb"),
                        open(self.directory / shard["mask_file"], "wb"))
        self.shards.append(shard)
        return shard

    def _close_shard(self) -> None:
        if self.handles is not None:
            for handle in self.handles:
                handle.close()
            self.handles = None

    def close(self) -> None:
        self._close_shard()
        if self.index_handle is not None:
            self.index_handle.close()
            self.index_handle = None

    def stats(self) -> dict:
        return {"conversations": self.count, "tokens": self.tokens,
                "assistant_tokens": self.assistant_tokens,            # 掩码为 1 的 token 数（算损失的）
                "assistant_characters": self.assistant_characters,    # 留下的助手消息的字符数（算 bpc）
                "index_file": self.index_file if self.count else None,
                "shards": [dict(shard) for shard in self.shards]}


class _PairWriter(_ConversationWriter):
    """偏好数据的写入器：文件与 _ConversationWriter 相同（一“段”就是一对），另加 {split}_chosen_len.bin：
    每对一个 int64，是这一对里 chosen 序列的 token 数——训练时据此把一对切回 chosen 和 rejected 两条。"""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        super().__init__(directory, split, dtype, shard_tokens)
        self.chosen_len_file = f"{split}_chosen_len.bin"
        self.chosen_len_handle = None

    def write(self, documents: _Documents) -> None:
        if self.chosen_len_handle is None:  # 与索引文件一样，真有数据才建文件
            self.chosen_len_handle = open(self.directory / self.chosen_len_file, "wb")
        self.chosen_len_handle.write(documents.stats["chosen_tokens"].astype(INDEX_DTYPE).tobytes())
        super().write(documents)

    def close(self) -> None:
        super().close()
        if self.chosen_len_handle is not None:
            self.chosen_len_handle.close()
            self.chosen_len_handle = None

    def stats(self) -> dict:
        # "conversations" 与 "pairs" 是同一个数：数据集的读取代码与对话数据共用，认的是前者
        return {**super().stats(), "pairs": self.count,
                "chosen_len_file": self.chosen_len_file if self.count else None}


class _SkippedLog:
    """被跳过的记录：边读边写进 skipped.txt（不在内存里攒一个大列表），每行“位置<TAB>原因”。"""

    def __init__(self, path: Path):
        self.path = path
        self.handle = None
        self.count = 0

    def add(self, location: str, reason: str) -> None:
        if self.handle is None:  # 真有要记的才创建文件
            self.handle = open(self.path, "w", encoding="utf-8")
        self.handle.write(f"{location}\t{reason}\n")
        self.count += 1

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
