"""写入器：把一个划分（train 或 val）的文档写成磁盘上的文件 / Shard writers.

三种数据，三个写入器，接口相同（`SplitWriter` 只认这几个方法，见 data/split.py）：

    write(documents)  追加若干篇（Documents，见 data/encoders.py）
    close()           关闭打开着的文件（出错时也会调用，所以可以调用多次）
    stats()           写进 meta.json 的数字：篇数、token 数、分片清单……
    count             已经写了几篇（SplitWriter 用它保证“至少一篇验证文档”）

    ShardWriter         预训练：token 首尾相连，`{split}_000000.bin`……
    ConversationWriter  对话：token + 损失掩码 + 索引，分片只在对话之间切开
    PairWriter          偏好对：同上，再加每对里 chosen 序列的长度

文件名和 dtype 是与数据集共用的约定，见 data/data_format.py。另有 SkippedLog：被跳过的记录写进 skipped.txt。
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from towergpt.data.data_format import INDEX_DTYPE, MASK_DTYPE
from towergpt.data.encoders import Documents


# ---------------------------------------------------------------------------
# 1. 预训练：只有 token
# ---------------------------------------------------------------------------

class ShardWriter:
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

    def write(self, documents: Documents) -> None:
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


# ---------------------------------------------------------------------------
# 2. 对话与偏好对：token + 掩码 + 索引
# ---------------------------------------------------------------------------

class ConversationWriter:
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

    def write(self, documents: Documents) -> None:
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


class PairWriter(ConversationWriter):
    """偏好数据的写入器：文件与 ConversationWriter 相同（一“段”就是一对），另加 {split}_chosen_len.bin：
    每对一个 int64，是这一对里 chosen 序列的 token 数——训练时据此把一对切回 chosen 和 rejected 两条。"""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, shard_tokens: int):
        super().__init__(directory, split, dtype, shard_tokens)
        self.chosen_len_file = f"{split}_chosen_len.bin"
        self.chosen_len_handle = None

    def write(self, documents: Documents) -> None:
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


# ---------------------------------------------------------------------------
# 3. skipped.txt
# ---------------------------------------------------------------------------

class SkippedLog:
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
