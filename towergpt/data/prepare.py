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

几个设计要点，各在一个文件里（每个文件开头都有详细解释）：
    1. 并行分词（预训练用线程：SentencePiece 在 C++ 里放开了 GIL；对话要在 Python 里渲染，用进程），
       但输出与 workers 无关（按顺序收集结果）：workers=1 和 workers=8 写出的文件逐字节相同。（data/pipeline.py）
    2. 内存有界：输入是流式读的，同时“在路上”的批次最多 2×workers 个，
       峰值内存不随语料大小增长——100 GB 的语料也能在小机器上处理。（data/pipeline.py）
    3. 按文档（对话）划分验证集：用“序号的带种子哈希”决定一篇文档进 train 还是 val，
       结果确定、可复现，而且同一篇文档的 token 不会一半在训练集一半在验证集
       （那样验证损失会偏低，因为模型“见过”这篇文章的前半段）。（data/split.py）
    4. 要么完整、要么没有：先写到 DIR 旁边的临时目录，全部成功后才改名为 DIR；
       中途出错（坏记录、磁盘满、Ctrl-C）就删掉临时目录，绝不留下一个“看起来完整”的半成品。
       （towergpt/output_dir.py，export、import、tokenizer train 也用它）
    5. 不悄悄丢数据：空文档、坏记录、被截断的对话、太长的对话，全部计数写进 meta.json。

其余几步：读语料见 data/readers/，一批输入怎样变成 token 见 data/encoders.py，
写分片见 data/shard_writers.py，文件名和 dtype 这些与数据集共用的约定见 data/data_format.py，
结束时的摘要见 data/prepare_summary.py。这个文件只管“把它们接起来”。
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from towergpt.data.data_format import (FORMATS, META_FILE, SKIPPED_FILE, TOKENIZER_SUBDIR, common_meta, record_layout,
                                       token_dtype)
from towergpt.data.encoders import (ChatEncoder, DialogueReader, Encoded, PairEncoder, PreferenceReader,
                                    TextEncoder)
from towergpt.data.pipeline import run_pipeline
from towergpt.data.prepare_summary import format_summary
from towergpt.data.shard_writers import ConversationWriter, PairWriter, ShardWriter, SkippedLog
from towergpt.data.split import SplitWriter
from towergpt.data.readers import check_input, iter_texts
from towergpt.errors import TowerGPTError
from towergpt.output_dir import check_out_dir, staged_output
from towergpt.tokenizer import Tokenizer

# 这些名字以前定义在这里，训练、数据集、测试都从这里导入，所以继续从这里导出（定义已搬到 data_format、split）
from towergpt.data.data_format import FORMAT_VERSION, INDEX_DTYPE, MASK_DTYPE, load_meta
from towergpt.data.split import validation_mask

__all__ = ["prepare", "prepare_pretrain", "prepare_sft", "prepare_dpo", "format_summary", "load_meta",
           "token_dtype", "validation_mask", "FORMATS", "FORMAT_VERSION", "INDEX_DTYPE", "MASK_DTYPE", "META_FILE",
           "SKIPPED_FILE", "TOKENIZER_SUBDIR"]

# ---------------------------------------------------------------------------
# 1. 对外接口
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
        workers:       并行分词的线程数（预训练用线程，见 data/pipeline.py），默认 os.cpu_count()；
                       1 表示就在主线程里做。
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
        return _write_records(_SFT, job, directory, max_seq_len, val_fraction, skip_bad, shard_tokens, seed, verbose)

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

    参数同 prepare_sft。prompt 是字符串或以 user 结尾的消息数组（见 prompt_records.parse_preference），
    chosen / rejected 是字符串。每条序列（提示 + 一个回答）至多 max_seq_len + 1 个 token；
    太长的一对先整轮丢掉提示里最早的对话，再截短回答，仍放不下的整对跳过（见 data/preference.py），
    各自计数写进 meta.json。验证集按“对”划分。
    """
    job = _start_record_job(inputs, tokenizer_dir, out_dir, max_seq_len, workers, val_fraction, shard_tokens,
                            overwrite)

    def write(directory: Path) -> dict:
        return _write_records(_DPO, job, directory, max_seq_len, val_fraction, skip_bad, shard_tokens, seed, verbose)

    return _run_job(job, write, verbose)


# ---------------------------------------------------------------------------
# 2. 三种数据共用的外壳：检查参数 -> 写临时目录 -> 改名 -> 摘要
# ---------------------------------------------------------------------------

@dataclass
class Job:
    """一次 prepare 的公共部分：输入文件、分词器、输出目录、进程数。"""

    paths: list[Path]
    tokenizer: object
    tokenizer_dir: Path
    out_dir: Path
    workers: int


def _start_job(inputs, tokenizer_dir, out_dir, workers, val_fraction, shard_tokens, overwrite) -> Job:
    """在读一个字节语料之前，先把能发现的问题都报出来，然后载入分词器。"""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [check_input(path) for path in inputs] if inputs else []
    _check_args(paths, workers, val_fraction, shard_tokens)
    out_dir = Path(out_dir)
    # 替换时只替换“以前 prepare 写出的目录”（有 meta.json），且语料和分词器不能在里面：
    # 手一滑写成 `--out ~ --overwrite`，或语料就在 --out 里，--overwrite 都会把它们整个删掉
    check_out_dir(out_dir, overwrite, "--out", inputs=[*paths, Path(tokenizer_dir)], marker=META_FILE)
    tokenizer = Tokenizer.load(tokenizer_dir)
    return Job(paths, tokenizer, Path(tokenizer_dir), out_dir, workers or os.cpu_count() or 1)


def _start_record_job(inputs, tokenizer_dir, out_dir, max_seq_len, workers, val_fraction, shard_tokens,
                      overwrite) -> Job:
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


def _run_job(job: Job, write: Callable[[Path], dict], verbose: bool) -> dict:
    """在 out_dir 旁边的临时目录里调用 write(临时目录) 写出全部文件，成功后改名为 out_dir；返回 meta + 用时。

    先写临时目录，成功后再改名（见 towergpt/output_dir.py）：改名在同一文件系统里是原子的，
    别人（或训练脚本）看到的 out_dir 要么不存在，要么是完整的。
    """
    out_dir = job.out_dir
    started = time.perf_counter()
    try:
        with staged_output(out_dir) as staging:   # 出错时（包括 Ctrl-C）它已删掉临时目录，不留半成品
            meta = write(staging)
    except OSError as err:  # 没有写权限、磁盘满……：说清楚是哪个文件，而不是抛 traceback
        raise TowerGPTError(f"{err.filename or out_dir}: 读写失败 / I/O error: {err.strerror or err}") from None

    elapsed = time.perf_counter() - started
    input_bytes = sum(item["bytes"] for item in meta["inputs"])
    summary = dict(meta, out_dir=str(out_dir), elapsed_s=round(elapsed, 3),
                   mb_per_s=round(input_bytes / 1e6 / max(elapsed, 1e-9), 3), workers=job.workers)
    if verbose:
        print(format_summary(summary))
    return summary


def _finish_meta(job: Job, directory: Path, meta: dict) -> dict:
    """补上输入文件清单和时间，存一份分词器，写出 meta.json。"""
    meta["inputs"] = [{"path": str(path.resolve()), "bytes": path.stat().st_size} for path in job.paths]
    meta["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    job.tokenizer.save(directory / TOKENIZER_SUBDIR)
    (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return meta


# ---------------------------------------------------------------------------
# 3. 预训练：文本 -> [bos] + ids + [eos]
# ---------------------------------------------------------------------------

def _write_pretrain(job: Job, directory: Path, field: str, val_fraction: float, skip_bad: bool,
                    shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出预训练数据的全部文件，返回 meta。"""
    dtype = token_dtype(job.tokenizer.vocab_size)
    counts = {"empty_documents": 0}
    splitter = SplitWriter(lambda split: ShardWriter(directory, split, dtype, shard_tokens), val_fraction, seed)

    with contextlib.closing(SkippedLog(directory / SKIPPED_FILE)) as skipped:
        def read_items(path: Path):
            for _, text in iter_texts(path, field=field, skip_bad=skip_bad, on_bad=skipped.add):
                if not text or text.isspace():  # 空白文档：计数，但不写（它只会教模型“bos 后面紧跟 eos”）
                    counts["empty_documents"] += 1
                    continue
                yield text, len(text), len(text.encode("utf-8", errors="replace"))

        run_pipeline(job, read_items, TextEncoder, (dtype,), splitter, lambda encoded: None, verbose)

    if splitter.kept == 0:
        names = ", ".join(str(path) for path in job.paths)
        raise TowerGPTError(
            f"语料里没有任何非空文档：{names}（JSON 文件请确认 --field '{field}' 是否正确）"
            f" / the corpus holds no non-empty documents (for JSON, check --field '{field}')"
        )
    meta = common_meta(job.tokenizer, "pretrain", dtype, val_fraction, seed, shard_tokens)
    meta.update({
        "field": field,
        "train": splitter.train.stats(),
        "val": splitter.val.stats(),
        "empty_documents": counts["empty_documents"],
        "skipped_records": skipped.count,
    })
    return _finish_meta(job, directory, meta)


# ---------------------------------------------------------------------------
# 4. 对话与偏好对：记录 -> 消息 -> (必要时截断) -> ids 和 loss_mask
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _RecordKind:
    """对话（sft）与偏好（dpo）数据的全部差别；流程本身只有一份，见 _write_records。"""

    name: str            # meta.json 的 kind
    reader: type         # 主进程里解析记录：DialogueReader / PreferenceReader
    encoder: type        # 工作进程里渲染：ChatEncoder / PairEncoder（它的 COUNTS 就是 meta.json 里的计数）
    writer: type         # 写文件：ConversationWriter / PairWriter
    noun: str            # 报错时怎么称呼一条记录
    noun_en: str
    layout: tuple = ()   # meta.json 里额外的布局字段 (名字, 值)


_SFT = _RecordKind("sft", DialogueReader, ChatEncoder, ConversationWriter, "对话", "conversations")
_DPO = _RecordKind("dpo", PreferenceReader, PairEncoder, PairWriter, "偏好对", "preference pairs",
                   layout=(("chosen_len_dtype", "int64"),))   # 每对里 chosen 序列的 token 数


def _write_records(kind: _RecordKind, job: Job, directory: Path, max_seq_len: int, val_fraction: float,
                   skip_bad: bool, shard_tokens: int, seed: int, verbose: bool) -> dict:
    """在 directory（临时目录）里写出对话或偏好数据的全部文件，返回 meta。

    解析记录在主进程做：它很便宜，而且坏记录要立刻报错、指明位置。
    渲染和截断（要分词，贵）在工作进程里做。
    坏记录（--skip-bad 时）不直接写进 skipped.txt，而是夹在批次里“搭车”走一趟工作进程再回来，
    这样 skipped.txt 里坏记录和太长的记录严格按输入顺序排列，与进程数无关（见 data/encoders.py）。
    """
    dtype = token_dtype(job.tokenizer.vocab_size)
    reader = kind.reader(skip_bad)
    counts = dict.fromkeys(kind.encoder.COUNTS, 0)
    splitter = SplitWriter(lambda split: kind.writer(directory, split, dtype, shard_tokens), val_fraction, seed)
    with contextlib.closing(SkippedLog(directory / SKIPPED_FILE)) as skipped:
        def on_result(encoded: Encoded) -> None:
            for name, count in encoded.counts.items():
                counts[name] += count
            for location, reason in encoded.skipped:
                skipped.add(location, reason)

        run_pipeline(job, reader, kind.encoder, (dtype, max_seq_len + 1), splitter, on_result, verbose)

    too_long = counts[kind.encoder.TOO_LONG]
    _check_kept(job, splitter, too_long, kind.noun, kind.noun_en, max_seq_len)
    meta = common_meta(job.tokenizer, kind.name, dtype, val_fraction, seed, shard_tokens)
    meta.update(record_layout(job.tokenizer, max_seq_len))
    meta.update(kind.layout)
    meta.update({"train": splitter.train.stats(), "val": splitter.val.stats()})
    meta.update(reader.meta_fields())
    meta.update(counts)
    meta["skipped_records"] = skipped.count - too_long   # skipped.txt 里除去太长的，就是坏记录
    return _finish_meta(job, directory, meta)


def _check_kept(job: Job, splitter: SplitWriter, too_long: int, noun: str, noun_en: str, max_seq_len: int) -> None:
    """一条可用的记录都没有时报错（太长的有几条也说出来）。"""
    if splitter.kept:
        return
    names = ", ".join(str(path) for path in job.paths)
    message = f"没有任何可用的{noun}：{names} / no usable {noun_en}"
    if too_long:
        message += (f"；{too_long} 条连最短的形式都超过 max_seq_len + 1 = {max_seq_len + 1} 个 token，"
                    f"请调大 --max-seq-len / {too_long} too long for --max-seq-len {max_seq_len}")
    raise TowerGPTError(message)

