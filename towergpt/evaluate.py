"""`towergpt eval`：给一个检查点打分。

两种评估：

1. 语言模型（默认）：在任意文本上算损失（loss）、困惑度（perplexity）和每字符比特数（bpc）。

       towergpt eval --ckpt runs/tiny --data data/pretrain          # prepare 写出的目录，默认验证集
       towergpt eval --ckpt runs/tiny --data my_text.jsonl          # 原始语料：当场用检查点的分词器分词

   三个数的关系（详见 docs/evaluate.md）：
       loss       = 所有被预测的 token 的交叉熵之和 / token 数          （单位：nat / token）
       perplexity = exp(loss)                                          “平均在几个候选里犹豫”
       bpc        = 交叉熵之和 / ln2 / 原文字符数                        （单位：bit / 字符）
   loss 是“每个 token”的，不同分词器切出的 token 长短不同，loss 没法直接比；
   bpc 按“每个字符”算，同一段文字的字符数与分词器无关，所以换了词表的模型也能公平比较。

2. 情感任务（`--task sentiment`）：quickstart 的对话任务，在留出的评论上报告准确率。

文本怎么切成模型的输入？和预训练完全一样：每篇文档写成 [bos] + 文本 + [eos]，首尾相连成一条
token 流，切成长 max_seq_len + 1 的窗口，相邻窗口共用一个 token。与训练时的验证不同，这里连
最后那个不满长的窗口也算上：除了第一个 bos，流里每个 token 都恰好被预测一次，
于是“交叉熵之和 / 原文字符数”是精确的 bpc。`--stride` 小于 max_seq_len 时窗口互相重叠（滑动窗口），
每个 token 仍只计一次损失，但能看到更长的上文，评估更准、也更慢。

损失怎么算？与训练时的验证走同一条路：train/objective.py 的 evaluate_objective 在每批上跑
language_model_objective（预训练和 SFT 训练用的就是它），按每批的目标 token 数加权求和。
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.data.data_format import load_meta, prepare_command
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.data.readers import check_input, iter_texts
from towergpt.data.sft_dataset import SFTData, pad_right
from towergpt.data.tokenizer_match import check_data_tokenizer
from towergpt.demo import sentiment
from towergpt.demo.corpus import split_reviews
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError, where
from towergpt.model import IGNORE_INDEX
from towergpt.train import precision
from towergpt.train.objective import evaluate_objective, language_model_objective

SHARD_CHUNK_TOKENS = 1 << 20  # 从分片里一次读多少 token（memmap：只有这一段会进内存）


# ---------------------------------------------------------------------------
# 命令行（参数的定义在 towergpt/cli/tools.py）
# ---------------------------------------------------------------------------

def main(args: argparse.Namespace) -> None:
    """命令行入口：评估，把 JSON 打印到标准输出（进度条在标准错误），--out 给出时另存一份。"""
    _check_args(args)
    device = pick_device(args.device)
    checkpoint = resolve_checkpoint(args.ckpt)
    model, tokenizer = load(checkpoint, device)
    if args.task == "sentiment":
        result = evaluate_sentiment(model, tokenizer, args.data[0] if args.data else None)
    else:
        result = evaluate_language_model(model, tokenizer, args.data, split=args.split or "val",
                                         field=args.field, max_tokens=args.max_tokens, stride=args.stride,
                                         batch_size=args.batch_size, dtype=args.dtype)
    result = {"checkpoint": str(checkpoint), **result}
    text = json.dumps(result, ensure_ascii=False, indent=2)
    print(text)
    if args.out:
        _write_text(Path(args.out), text + "\n")


def _check_args(args: argparse.Namespace) -> None:
    """在载入模型之前就把给错的参数报出来。"""
    if args.task == "lm" and not args.data:
        raise TowerGPTError("需要 --data：数据目录或语料文件 / --data is required (a prepared dir or text files)")
    if args.task == "sentiment" and args.data and len(args.data) > 1:
        raise TowerGPTError("--task sentiment 只接受一个评论文件 / takes a single reviews file")
    for name in ("max_tokens", "batch_size", "stride"):
        value = getattr(args, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise TowerGPTError(f"{flag} 必须是正整数 / must be a positive integer, got {value}")
    if args.split is not None and args.data and not Path(args.data[0]).is_dir():
        raise TowerGPTError("--split 只用于 `data prepare` 写出的目录 / --split only applies to a prepared dir")


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as err:
        raise TowerGPTError(f"{path}: 无法写入 / cannot write: {err.strerror or err}") from None


# ---------------------------------------------------------------------------
# 语言模型评估：数据 -> token 流 -> 窗口 -> 批次 -> 交叉熵之和
# ---------------------------------------------------------------------------

@dataclass
class _Source:
    """一份待评估的数据：产出 (x, y) 批次的迭代器，以及换算 bpc 需要的字符信息。

    counter.characters 是精确的原文字符数；数据只评估了一部分（--max-tokens）而字符数无从精确得知时，
    它是 None，改用 chars_per_token（整个划分的平均值）估算。
    """

    batches: Iterator
    kind: str                       # "text" / "pretrain" / "sft"
    name: str                       # 数据是什么（写进结果）
    total_tokens: int | None        # 进度条的总量（不知道时 None）
    counter: "_Counter"
    chars_per_token: float | None = None
    extra: dict = dataclass_field(default_factory=dict)   # 写进结果的其他信息


class _Counter:
    """一个可变的计数器：数据在被读的同时累计字符数、文档数（生成器里改外面的数）。"""

    def __init__(self, characters: int | None = 0):
        self.characters = characters
        self.documents = 0
        self.empty_documents = 0


def evaluate_language_model(model, tokenizer, data: str | Path | list, split: str = "val", field: str = "text",
                            max_tokens: int | None = None, stride: int | None = None, batch_size: int = 8,
                            dtype: str = "float32") -> dict:
    """在 data 上评估 model 的 loss / perplexity / bpc，返回一个可以直接写成 JSON 的 dict。

    参数:
        data:       `data prepare` 写出的目录（pretrain 或 sft 格式），或一个/多个语料文件。
        split:      数据目录用哪个划分（"train" / "val"）。
        field:      JSON / Parquet 里文本所在的字段。
        max_tokens: 最多计多少个 token 的损失（None = 全部）。
        stride:     窗口起点的间隔，默认 model.config.max_seq_len。
        batch_size: 每批几个窗口（sft 数据：几段对话）。
        dtype:      前向精度："float32"、"bfloat16"、"float16" 或 "auto"。
    """
    seq_len = model.config.max_seq_len
    stride = seq_len if stride is None else stride
    if not 1 <= stride <= seq_len:
        raise TowerGPTError(f"--stride 必须在 1..max_seq_len={seq_len} 之间 / must be within 1..{seq_len}")
    paths = [Path(item) for item in ([data] if isinstance(data, (str, Path)) else data)]
    source = _open_source(paths, tokenizer, split, field, max_tokens, seq_len, stride, batch_size)
    device = model.embed.weight.device
    compute_dtype = precision.pick_dtype(dtype, device)
    model.eval()
    with tqdm(total=source.total_tokens, unit="tok", unit_scale=True, desc="评估 / eval", dynamic_ncols=True,
              disable=None) as progress:
        sums = evaluate_objective(language_model_objective, model, source.batches, device, compute_dtype,
                                  on_result=lambda result: progress.update(result.weight))
    # 每批的平均交叉熵 × 目标 token 数 = 这批的交叉熵之和；全部加起来除以总数才是真正的“每个 token 的平均”
    nats, tokens = sums.weighted_loss, sums.weight
    if tokens == 0:
        raise TowerGPTError(f"{paths[0]}: 没有可评估的 token（数据是空的？）/ nothing to evaluate (empty data?)")
    return _report(nats, tokens, source, split, seq_len, stride, max_tokens)


def _report(nats: float, tokens: int, source: _Source, split: str, seq_len: int, stride: int,
            max_tokens: int | None) -> dict:
    """把“交叉熵之和、token 数、字符数”换算成 loss、perplexity、bpc。"""
    counter = source.counter
    characters = counter.characters
    exact = characters is not None
    if not exact:  # 只评估了一部分：按整个划分的平均“每 token 字符数”估算这部分有多少字
        characters = round(tokens * source.chars_per_token) if source.chars_per_token else 0
    loss = nats / tokens
    result = {
        "data": source.name,
        "format": source.kind,
        **({"split": split} if source.kind != "text" else {}),
        "loss": round(loss, 6),
        # exp(loss) 在 loss 超过约 709 时溢出；那样的模型也没什么可比的了，记成 null
        "perplexity": round(math.exp(loss), 4) if loss < 700 else None,
        # bpc = 总比特数 / 总字符数；1 nat = 1/ln2 bit
        "bpc": round(nats / math.log(2) / characters, 6) if characters else None,
        "tokens": tokens,
        "characters": characters,
        "characters_exact": exact,
        "seq_len": seq_len,
        "stride": stride,
        "max_tokens_reached": max_tokens is not None and tokens >= max_tokens,
        **source.extra,
    }
    if source.kind == "text":
        result.update(documents=counter.documents, empty_documents=counter.empty_documents)
    return result


def _open_source(paths: list[Path], tokenizer, split: str, field: str, max_tokens: int | None,
                 seq_len: int, stride: int, batch_size: int) -> _Source:
    """按 --data 的种类（数据目录 / 语料文件）准备批次流。"""
    if paths[0].is_dir():
        if len(paths) > 1:
            raise TowerGPTError("--data 给了数据目录时只能给一个 / a prepared dir must be the only --data")
        meta = load_meta(paths[0])
        _check_same_tokenizer(paths[0], meta, tokenizer)
        if meta.get("kind") == "sft":
            return _sft_source(paths[0], meta, split, max_tokens, seq_len, batch_size)
        if meta.get("kind") != "pretrain":
            raise TowerGPTError(f"{paths[0]}: 不支持评估 {meta.get('kind')!r} 数据，只支持 pretrain 和 sft"
                                f" / cannot evaluate {meta.get('kind')!r} data: only pretrain and sft")
        return _pretrain_source(paths[0], meta, split, max_tokens, seq_len, stride, batch_size, tokenizer.pad_id)
    return _text_source(paths, tokenizer, field, max_tokens, seq_len, stride, batch_size)


def _check_same_tokenizer(data_dir: Path, meta: dict, tokenizer) -> None:
    """数据里的 token id 只有在“同一个分词器”下才有意义：指纹（sha256）不同就拒绝（与训练前的核对是同一个函数）。

    评估比训练多一条出路：原始语料文件会用检查点的分词器当场分词，不必重新 prepare。
    """
    command = prepare_command(meta.get("kind", "pretrain"))
    check_data_tokenizer(data_dir, meta, tokenizer, None, advice=(
        f"评估没有意义。请直接评估原始语料文件（会用检查点的分词器重新分词），或用检查点的分词器重新运行 {command}",
        f"evaluate the raw text files instead (they are tokenized with the checkpoint's tokenizer),"
        f" or run `{command}` again with the checkpoint's tokenizer",
    ))


def _pretrain_source(data_dir: Path, meta: dict, split: str, max_tokens: int | None, seq_len: int,
                     stride: int, batch_size: int, pad_id: int) -> _Source:
    """prepare 写出的预训练数据：把这个划分的所有分片首尾相连，当作一条 token 流。"""
    stats = meta[split]
    if not stats["tokens"]:
        raise TowerGPTError(f"{data_dir} 的 {split} 划分是空的（prepare 时 --val-fraction {meta['val_fraction']}），"
                            f"可以用 --split train / the {split} split is empty: try --split train")
    # PackedPretrainData 负责打开分片、核对文件大小；这里只借用它的 memmap，窗口自己切（见模块说明）
    shards = PackedPretrainData(data_dir, split, seq_len).shards
    stream_tokens = int(stats["tokens"])
    if max_tokens is not None:
        stream_tokens = min(stream_tokens, max_tokens + 1)   # n 个 token 的流里有 n - 1 个被预测
    complete = stream_tokens == int(stats["tokens"])
    pieces = _limit(_shard_pieces(shards), stream_tokens)
    return _Source(
        batches=_batches(iter_windows(pieces, seq_len, stride), batch_size, pad_id),
        kind="pretrain", name=str(data_dir), total_tokens=stream_tokens - 1,
        # 整个划分都评估了：meta 里的字符数就是精确值（bos / eos 不对应任何字符）
        counter=_Counter(int(stats["characters"]) if complete else None),
        chars_per_token=stats["characters"] / stats["tokens"],
    )


def _shard_pieces(shards) -> Iterator:
    for shard in shards:
        for start in range(0, len(shard), SHARD_CHUNK_TOKENS):
            yield shard[start:start + SHARD_CHUNK_TOKENS]


def _limit(pieces: Iterable, max_stream_tokens: int) -> Iterator:
    """只取 token 流的前 max_stream_tokens 个。"""
    remaining = max_stream_tokens
    for piece in pieces:
        if remaining <= 0:
            return
        piece = piece[:remaining]
        remaining -= len(piece)
        yield piece


def _sft_source(data_dir: Path, meta: dict, split: str, max_tokens: int | None, seq_len: int,
                batch_size: int) -> _Source:
    """对话数据：每段对话一行（与 SFT 训练的验证相同），只在助手说的话上算损失。"""
    data = SFTData(data_dir, split, seq_len)
    stats = meta[split]
    total = int(stats["assistant_tokens"])
    batches = data.iter_eval_batches(batch_size)
    if max_tokens is not None and max_tokens < total:
        batches = _stop_after(batches, max_tokens)
        counter = _Counter(None)
    else:
        counter = _Counter(int(stats["assistant_characters"]))
    return _Source(batches=batches, kind="sft", name=str(data_dir), total_tokens=min(total, max_tokens or total),
                   counter=counter, chars_per_token=data.characters_per_token,
                   extra={"conversations": data.num_conversations})


def _stop_after(batches: Iterable, max_tokens: int) -> Iterator:
    """对话不能从中间切开：按整批截断，累计的目标 token 达到 max_tokens 就停。"""
    counted = 0
    for inputs, targets in batches:
        yield inputs, targets
        counted += int((targets != IGNORE_INDEX).sum())
        if counted >= max_tokens:
            return


def _text_source(paths: list[Path], tokenizer, field: str, max_tokens: int | None, seq_len: int,
                 stride: int, batch_size: int) -> _Source:
    """原始语料文件：用检查点的分词器当场分词，与 `data prepare` 一样写成 [bos] + 文本 + [eos]。"""
    for path in paths:  # 先检查所有文件，免得评估到一半才发现最后一个文件名打错了
        check_input(path)
    counter = _Counter()
    limit = None if max_tokens is None else max_tokens + 1
    pieces = _document_tokens(paths, tokenizer, field, limit, counter)
    return _Source(batches=_batches(iter_windows(pieces, seq_len, stride), batch_size, tokenizer.pad_id),
                   kind="text", name=", ".join(str(path) for path in paths), total_tokens=max_tokens,
                   counter=counter)


def _document_tokens(paths: list[Path], tokenizer, field: str, limit: int | None, counter: _Counter) -> Iterator:
    """逐篇产出 [bos] + ids + [eos]，同时精确地数原文字符（与 prepare 相同：len(文本)，空白文档跳过）。

    limit 给出时 token 流在第 limit 个 token 处截断。被截断的那篇只算保留下来的部分：
    把保留的 id 解码回文字再数字符（字节回退的字偶尔被切成两半，误差至多一两个字）。
    """
    produced = 0
    for path in paths:
        for _, text in iter_texts(path, field=field):
            if not text or text.isspace():
                counter.empty_documents += 1
                continue
            ids = [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]
            if limit is not None and produced + len(ids) >= limit:
                kept = ids[:limit - produced]
                counter.characters += len(tokenizer.decode(kept[1:])) if len(kept) < len(ids) else len(text)
                counter.documents += 1
                yield np.array(kept, dtype=np.int64)
                return
            counter.characters += len(text)
            counter.documents += 1
            produced += len(ids)
            yield np.array(ids, dtype=np.int64)


def iter_windows(pieces: Iterable, seq_len: int, stride: int) -> Iterator[tuple]:
    """把一条 token 流（分成若干段依次给出）切成评估窗口，产出 (窗口, 从第几个目标开始计损失)。

    窗口 = 流里 [s, s + seq_len] 这 seq_len + 1 个 token（最后一个窗口可能更短），
    输入 x = 窗口[:-1]，目标 y = 窗口[1:]。起点 s = 0, stride, 2·stride, ...

        stride = seq_len：相邻窗口共用一个 token，每个目标恰好出现在一个窗口里（和训练的打包一样）；
        stride < seq_len：窗口重叠。重叠部分的目标前一个窗口已经算过，这个窗口只算新的那些——
                          它们现在能看到更长的上文（至少 seq_len - stride 个 token），预测更准。

    除了流里的第一个 token（没有上文，无从预测），每个 token 恰好计一次损失。
    只在内存里保留当前窗口附近的一小段流：100 GB 的语料也不会撑爆内存。
    """
    buffer = np.empty(0, dtype=np.int64)
    base = 0            # buffer[0] 在流里的位置
    start = 0           # 下一个窗口的起点（流里的位置）
    scored_until = 1    # 流里 [1, scored_until) 的目标已经计过损失
    for piece in pieces:
        buffer = np.concatenate([buffer, np.asarray(piece, dtype=np.int64)])
        while base + len(buffer) >= start + seq_len + 1:   # 攒够一个完整窗口
            window = buffer[start - base:start - base + seq_len + 1]
            yield window, scored_until - start - 1
            scored_until = start + seq_len + 1
            start += stride
            buffer, base = buffer[start - base:], start     # 丢掉再也用不到的部分
    end = base + len(buffer)
    while scored_until < end:                                # 流的尾巴：不满长的窗口
        window = buffer[start - base:]
        yield window, scored_until - start - 1
        scored_until = end
        start += stride


def _batches(windows: Iterable[tuple], batch_size: int, pad_id: int) -> Iterator[tuple]:
    """把 (窗口, first_scored) 凑成批次 (x, y)，形状 (B, T)。"""
    group: list[tuple] = []
    for item in windows:
        group.append(item)
        if len(group) == batch_size:
            yield _padded(group, pad_id)
            group = []
    if group:
        yield _padded(group, pad_id)


def _padded(group: list[tuple], pad_id: int) -> tuple:
    """一组 (窗口, first_scored) -> 右补齐的 (x, y)：x 补 pad_id，y 补 IGNORE_INDEX，两个 LongTensor (B, T)。

    补齐用的就是 SFT / DPO 组批的那个 pad_right（data/sft_dataset.py）。它要 (token, 损失掩码)：
    这里的掩码表示“从第 first_scored 个目标起才计损失”——滑动窗口里已经计过的重叠部分不再计。
    右补齐不影响真 token 的结果：模型是因果的，真 token 只能看见左边（同一窗口里的真 token）。
    """
    sequences = []
    for window, first_scored in group:
        mask = np.zeros(len(window), dtype=np.uint8)
        mask[first_scored + 1:] = 1        # 窗口里第 i 个 token 是目标 y[i-1]：i > first_scored 才计损失
        sequences.append((window, mask))
    inputs, targets = pad_right(sequences, pad_id)          # 两个 int64 数组 (B, T)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


# ---------------------------------------------------------------------------
# 情感任务：quickstart 第 7 步的成绩单
# ---------------------------------------------------------------------------

def evaluate_sentiment(model, tokenizer, reviews_path: str | Path | None = None) -> dict:
    """对留出的评论逐条用对话问“正面还是负面”，报告准确率、多数类基线、答不上来的条数和几条示例。

    reviews_path 是每行 {"review": ..., "label": ...} 的 JSONL（quickstart 写出的
    sentiment_heldout.jsonl 就是）；None 时用内置语料的留出评论（与 quickstart 完全相同的 1000 条）。
    这个任务要在 SFT 之后的检查点上才有意义：只预训练过的模型不会按对话格式作答。
    """
    if reviews_path is not None:
        _check_reviews_file(Path(reviews_path))
        result = sentiment.evaluate(model, tokenizer, reviews_path)
        return {"task": "sentiment", "data": str(reviews_path), **result}
    _, heldout = split_reviews()
    rows = [{"review": text, "label": label} for text, label in heldout]
    result = sentiment.evaluate_rows(model, tokenizer, rows)
    return {"task": "sentiment", "data": "内置语料的留出评论 / built-in held-out reviews", **result}


def _check_reviews_file(path: Path) -> None:
    """评论文件的每一行都必须是 {"review": 文本, "label": 文本}；不对就指出哪一行哪个字段。"""
    if not path.is_file():
        raise TowerGPTError(f"找不到评论文件 / reviews file not found: {path}")
    count = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TowerGPTError(f"{where(path, number)}: 不是合法的 JSON / invalid JSON: {err.msg}") from None
            for field in ("review", "label"):
                if not isinstance(row, dict) or not isinstance(row.get(field), str):
                    raise TowerGPTError(f"{where(path, number, field)}: 每行应是 {{\"review\": 文本, \"label\": 文本}}"
                                        f" / each line must be {{\"review\": str, \"label\": str}}")
            count += 1
    if count == 0:
        raise TowerGPTError(f"{path}: 文件里没有评论 / no reviews in the file")

