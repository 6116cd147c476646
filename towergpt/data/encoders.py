"""分词：一批输入 -> 一批 token（预训练文本、对话、偏好对）/ Encoders: one batch in, one batch of tokens out.

prepare 的流水线（见 data/pipeline.py）把输入凑成一批批交给工作进程，每个进程里的“编码器”
把一批变成一个 `Encoded`：留下的文档的 token（`Documents`）、它们占的序号、计数、跳过的记录。

    TextEncoder    预训练：一批文本 -> 每篇 [bos] + ids + [eos]
    ChatEncoder    对话：一批消息列表 -> 每段 render_chat 的 ids 和 loss_mask（必要时整轮截断）
    PairEncoder    偏好对：一批 (提示, chosen, rejected) -> 每对 chosen 序列接 rejected 序列

对话和偏好对的记录先在主进程里解析（`DialogueReader`、`PreferenceReader`）：解析很便宜，
而且坏记录要立刻报错、指明位置；渲染和截断要分词，贵，放在工作进程里做。
两者之间传的“条目”是 (位置, 解析结果, 跳过原因)：

    解析结果 不是 None   一条好记录，编码器把它渲染出来（太长的记进跳过清单）
    解析结果 是 None     --skip-bad 跳过的坏记录，“搭车”走一趟工作进程、原样带回主进程，
                         这样 skipped.txt 里坏记录和太长的记录严格按输入顺序排列，与进程数无关
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Iterator

import numpy as np

from towergpt.chat_template import fit_to_context, render_chat
from towergpt.data.data_format import MASK_DTYPE
from towergpt.data.dialogue import DialogueError, parse_record
from towergpt.data.prompt_records import parse_preference
from towergpt.data.preference import minimal_prompt_tokens, render_pair
from towergpt.data.readers import iter_records, record_location


# ---------------------------------------------------------------------------
# 1. 一批结果：Documents 与 Encoded
# ---------------------------------------------------------------------------

@dataclass
class Documents:
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

    def select(self, keep: np.ndarray) -> "Documents":
        """按篇挑选（keep 是每篇一个的 bool）。先把“每篇的去留”展开成“每个 token 的去留”。"""
        token_keep = np.repeat(keep, self.lengths)
        return Documents(self.lengths[keep], {name: column[token_keep] for name, column in self.columns.items()},
                         {name: values[keep] for name, values in self.stats.items()})

    def split_last(self) -> tuple["Documents", "Documents"]:
        """(除最后一篇外的全部, 最后一篇)。切片是视图，不复制数据。"""
        cut = int(self.lengths[:-1].sum())
        head = Documents(self.lengths[:-1], {name: column[:cut] for name, column in self.columns.items()},
                         {name: values[:-1] for name, values in self.stats.items()})
        tail = Documents(self.lengths[-1:], {name: column[cut:].copy() for name, column in self.columns.items()},
                         {name: values[-1:] for name, values in self.stats.items()})
        return head, tail

    @staticmethod
    def concat(first: "Documents", second: "Documents") -> "Documents":
        return Documents(np.concatenate([first.lengths, second.lengths]),
                         {name: np.concatenate([first.columns[name], second.columns[name]]) for name in first.columns},
                         {name: np.concatenate([first.stats[name], second.stats[name]]) for name in first.stats})


@dataclass
class Encoded:
    """一批输入分词后的结果，在工作进程里算好、整批传回主进程。

    documents: 留下来要写的文档（对话）。
    ordinals:  (n,) 每篇留下的文档在本批“占序号的输入”里排第几——它决定这篇进 train 还是 val。
    consumed:  本批一共多少条“占序号的输入”。对话里太长而丢掉的也占一个序号，
               这样改变 --max-seq-len 不会让后面所有对话的 train/val 去向整体挪位。
    counts:    额外的计数（被截断的对话、丢掉的消息……）。
    skipped:   被跳过的 (位置, 原因)，按输入顺序。
    """

    documents: Documents
    ordinals: np.ndarray
    consumed: int
    counts: dict[str, int] = dataclass_field(default_factory=dict)
    skipped: list[tuple[str, str]] = dataclass_field(default_factory=list)


# ---------------------------------------------------------------------------
# 2. 预训练：文本 -> [bos] + ids + [eos]
# ---------------------------------------------------------------------------

class TextEncoder:
    """预训练：一批文本 -> 每篇 [bos] + ids + [eos]，外加每篇的字符数（用来算 bpc）。

    分词器交回的是每篇一个 int32 的 numpy 数组（`Tokenizer.encode_batch_arrays`），
    这里用一次 np.concatenate 把 [bos]、ids、[eos] 一篇接一篇拼成一维数组，再转成分片的 dtype。
    以前交回的是 Python 的 int 列表：每个 token 先造一个 Python 整数对象，再在 Python 里一个个抄进数组
    （每篇一千多个；单是抄写，在以前的剖析里就占整条流水线的 8%）。两种做法写出的 id 逐个相同。

    RUNS_IN_THREADS：几乎全部时间都在 SentencePiece 的 C++ 里（那里放开了 GIL），
    所以流水线用线程而不是进程来并行它（见 data/pipeline.py）。
    """

    RUNS_IN_THREADS = True

    def __init__(self, tokenizer, dtype: np.dtype):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.bos = np.array([tokenizer.bos_id], dtype=np.int32)
        self.eos = np.array([tokenizer.eos_id], dtype=np.int32)

    def __call__(self, texts: list[str]) -> Encoded:
        encoded = self.tokenizer.encode_batch_arrays(texts)  # SentencePiece 在 C++ 里分词，直接交回数组
        lengths = np.fromiter((len(ids) + 2 for ids in encoded), dtype=np.int64, count=len(encoded))
        parts = []   # [bos, 第 1 篇, eos, bos, 第 2 篇, eos, ...]
        for ids in encoded:
            parts += (self.bos, ids, self.eos)
        # id 都小于词表大小，而 dtype 是按词表大小挑的（见 data_format.token_dtype），int32 -> uint16 不会丢值
        flat = np.concatenate(parts).astype(self.dtype, copy=False) if parts else np.zeros(0, dtype=self.dtype)
        characters = np.fromiter((len(text) for text in texts), dtype=np.int64, count=len(texts))
        documents = Documents(lengths, {"tokens": flat}, {"characters": characters})
        return Encoded(documents, np.arange(len(texts)), len(texts))


# ---------------------------------------------------------------------------
# 3. 对话与偏好对，主进程这一半：记录 -> 条目 (位置, 解析结果, 跳过原因)
# ---------------------------------------------------------------------------

class DialogueReader:
    """read_items：把一个对话文件读成 (位置, 解析结果 或 None, 跳过原因 或 None) 一条条交出去。

    对话数据的解析结果是消息列表；顺带按格式（prompt_response / alpaca / messages / conversations）
    计数，写进 meta.json（见 meta_fields）。偏好数据见子类 PreferenceReader。
    """

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.formats: Counter = Counter()

    def parse(self, record, location: str) -> tuple[object, int, int]:
        """一条记录 -> (解析结果, 字符数, 字节数)；不合格时抛 DialogueError。"""
        kind, messages = parse_record(record, location)
        self.formats[kind] += 1
        return messages, *_text_size(message["content"] for message in messages)

    def meta_fields(self) -> dict:
        """读完之后写进 meta.json 的字段。"""
        return {"formats": dict(sorted(self.formats.items()))}

    def __call__(self, path: Path) -> Iterator[tuple[tuple, int, int]]:
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


class PreferenceReader(DialogueReader):
    """偏好数据：解析结果是 (提示消息列表, chosen, rejected)，见 prompt_records.parse_preference。"""

    def parse(self, record, location: str) -> tuple[object, int, int]:
        prompt, chosen, rejected = parse_preference(record, location)
        texts = [message["content"] for message in prompt] + [chosen, rejected]
        return (prompt, chosen, rejected), *_text_size(texts)

    def meta_fields(self) -> dict:
        return {}


def _text_size(texts) -> tuple[int, int]:
    """(字符数, UTF-8 字节数)，只用于凑批和推进进度条。"""
    texts = list(texts)
    return sum(len(text) for text in texts), sum(len(text.encode("utf-8")) for text in texts)


# ---------------------------------------------------------------------------
# 4. 对话与偏好对，工作进程这一半：条目 -> ids 和 loss_mask
# ---------------------------------------------------------------------------

class ChatEncoder:
    """对话：一批 (位置, 消息列表, 跳过原因) -> 每段对话的 ids 和 loss_mask（chat_template 的唯一模板）。

    max_tokens = max_seq_len + 1：训练时 x = ids[:-1]、y = ids[1:]，
    所以 max_seq_len + 1 个 token 的对话正好填满长 max_seq_len 的上下文。

    __call__ 是对话和偏好对共用的骨架：坏记录原样带回；其余每条占一个序号，交给 render
    渲染成一条或几条序列，首尾相接算作“一篇”（render 返回 None 表示太长，整条跳过）。
    偏好对（PairEncoder）只换掉 render、too_long_reason 和下面三个类属性。
    """

    RUNS_IN_THREADS = False   # 渲染模板、截断都在 Python 里，一直握着 GIL：用进程并行（见 data/pipeline.py）
    COUNTS = ("truncated_conversations", "dropped_messages", "too_long_conversations")  # 按此顺序写进 meta.json
    TOO_LONG = "too_long_conversations"       # COUNTS 里“太长而跳过”的那一个
    STATS = ("assistant_characters",)         # 每篇一个数的统计（Documents.stats）

    def __init__(self, tokenizer, dtype: np.dtype, max_tokens: int):
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_tokens = max_tokens

    def __call__(self, entries: list[tuple]) -> Encoded:
        ids_parts, mask_parts, lengths, ordinals = [], [], [], []
        stats: dict[str, list[int]] = {name: [] for name in self.STATS}
        counts = dict.fromkeys(self.COUNTS, 0)
        skipped: list[tuple[str, str]] = []
        consumed = 0
        for location, parsed, reason in entries:
            if parsed is None:  # 主进程已判定的坏记录，原样带回
                skipped.append((location, reason))
                continue
            ordinal, consumed = consumed, consumed + 1
            rendered = self.render(parsed, counts)
            if rendered is None:
                counts[self.TOO_LONG] += 1
                skipped.append((location, self.too_long_reason(parsed)))
                continue
            sequences, row = rendered
            for sequence in sequences:
                ids_parts.append(sequence.ids)
                mask_parts.append(sequence.loss_mask)
            lengths.append(sum(len(sequence.ids) for sequence in sequences))
            for name, values in stats.items():
                values.append(row[name])
            ordinals.append(ordinal)
        documents = Documents(
            np.array(lengths, dtype=np.int64),
            {"tokens": np.fromiter(itertools.chain.from_iterable(ids_parts), dtype=self.dtype),
             "mask": np.fromiter(itertools.chain.from_iterable(mask_parts), dtype=MASK_DTYPE)},
            {name: np.array(values, dtype=np.int64) for name, values in stats.items()},
        )
        return Encoded(documents, np.array(ordinals, dtype=np.int64), consumed, counts, skipped)

    def render(self, messages: list[dict], counts: dict) -> tuple[list, dict] | None:
        """一段对话 -> ([渲染结果], {"assistant_characters": 留下的助手消息的字符数})；放不下返回 None。

        绝大多数对话本来就放得下：先渲染一次，够短就直接用，
        不必先让 fit_to_context 渲染一遍、再为了取 ids 渲染第二遍。
        放不下就整轮丢弃最早的对话（fit_to_context，system 保留），丢了几条记进 counts。
        """
        rendered = render_chat(self.tokenizer, messages)
        kept = messages
        if len(rendered.ids) > self.max_tokens:
            fitted = fit_to_context(self.tokenizer, messages, self.max_tokens)
            if fitted is None:
                return None
            kept, dropped = fitted
            if dropped:
                counts["truncated_conversations"] += 1
                counts["dropped_messages"] += dropped
            rendered = render_chat(self.tokenizer, kept)
        characters = sum(len(message["content"]) for message in kept if message["role"] == "assistant")
        return [rendered], {"assistant_characters": characters}

    def too_long_reason(self, messages: list[dict]) -> str:
        """跳过原因里写明：只留 system 和最后一轮也有多少 token，上限是多少。"""
        system = messages[:1] if messages[0]["role"] == "system" else []
        last_user = max(index for index, message in enumerate(messages) if message["role"] == "user")
        needed = len(render_chat(self.tokenizer, system + messages[last_user:]).ids)
        return (f"对话太长：只保留 system 和最后一轮也有 {needed} 个 token，超过 max_seq_len + 1 = {self.max_tokens}，"
                f"整段跳过（可调大 --max-seq-len）/ conversation too long: the system prompt plus the last turn"
                f" alone take {needed} tokens > max_seq_len + 1 = {self.max_tokens}; skipped")


class PairEncoder(ChatEncoder):
    """偏好数据：一批 (位置, (提示, chosen, rejected), 跳过原因) -> 每对的 [chosen 序列, rejected 序列]。

    一对在 Documents 里算“一篇”：token 和掩码是两条序列首尾相接，stats 里的 chosen_tokens
    记下前一条有多长。这样划分 train/val、写分片都按“对”进行，一对永远不会被拆开。
    """

    COUNTS = ("truncated_pairs",      # 提示丢掉了最早几轮的对数
              "dropped_messages",     # 一共丢掉的提示消息条数
              "truncated_answers",    # 回答被截短的对数
              "too_long_pairs")       # 怎么都放不下、整对跳过的
    TOO_LONG = "too_long_pairs"
    STATS = ("chosen_tokens", "assistant_characters")

    def render(self, parsed: tuple, counts: dict) -> tuple[list, dict] | None:
        """一对 -> ([chosen 序列, rejected 序列], 统计)；怎么截都放不下返回 None（见 data/preference.py）。"""
        prompt, chosen, rejected = parsed
        pair = render_pair(self.tokenizer, prompt, chosen, rejected, self.max_tokens)
        if pair is None:
            return None
        if pair.dropped_messages:
            counts["truncated_pairs"] += 1
            counts["dropped_messages"] += pair.dropped_messages
        counts["truncated_answers"] += pair.truncated
        # assistant_characters：回答原文的字符数（截短前），仅作统计
        return [pair.chosen, pair.rejected], {"chosen_tokens": len(pair.chosen.ids),
                                              "assistant_characters": len(chosen) + len(rejected)}

    def too_long_reason(self, parsed: tuple) -> str:
        needed = minimal_prompt_tokens(self.tokenizer, parsed[0])
        return (f"偏好对太长：提示只保留 system 和最后一条 user 也有 {needed} 个 token，加上回答的开头超过"
                f" max_seq_len + 1 = {self.max_tokens}，整对跳过（可调大 --max-seq-len）/ pair too long: the"
                f" shortest prompt alone takes {needed} tokens, no room for the answers within {self.max_tokens}")
