"""偏好数据（DPO）：`data prepare --format dpo` 写出的偏好对，组成“chosen 在上、rejected 在下”的批次。

磁盘上的布局与对话数据相同（见 data/prepare.py），只是“一段”换成了“一对”：
第 i 对 = [chosen 序列][rejected 序列] 首尾相接，{split}_chosen_len.bin 记下前一条有多长。
所以读取、按长度分组、打乱、多卡切分、断点续训全部沿用 SFTData（data/sft_dataset.py），
这里只换了两样：读哪种 meta.json，以及怎样把一组“对”拼成一批。

一批 B 对拼成 2B 行（一次前向同时算完两种回答，比分两次前向省一半调用开销）：

    inputs  (2B, T)   第 0..B-1 行是各对的 chosen，第 B..2B-1 行是同样顺序的 rejected
    targets (2B, T)   错开一位的下一个 token；只有回答（含 <|im_end|>）的位置有值，其余是 -100
    pairs   B         这一批有几对：DPO 的损失是“每对一个数”的平均，评估和梯度累积都按它加权

右补齐：inputs 补 pad_id、targets 补 -100，与 SFT 相同（因果注意力下右边的 pad 影响不到真实 token）。
宽度 T 取 2B 条序列里最长的那条减一：同一对的两条一般长度相近（提示相同），
按“一对的总长”分组也就让同一批里的序列长度相近。
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from towergpt.data.prepare import INDEX_DTYPE, load_meta
from towergpt.data.pretrain_dataset import check_dataset_args
from towergpt.data.sft_dataset import SFTData, _check_file_size
from towergpt.errors import TowerGPTError
from towergpt.model import IGNORE_INDEX


class DPOData(SFTData):
    """一个划分（train 或 val）上的偏好对批次流；接口与 SFTData 相同，批次是一个 dict（见模块开头）。

        data = DPOData("data/dpo", "train", seq_len=256, seed=0)
        batch = data.next_batch(8)    # {"inputs": (16, T), "targets": (16, T), "pairs": 8}

    继承来的名字里的 “conversation” 在这里指“一对”：num_conversations 是对数，conversation(i)
    是第 i 对的 [chosen 序列][rejected 序列]。一个 epoch 里每对恰好出现一次，最后一批可能不足 batch_size。
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        # 与 SFTData.__init__ 相同的各项属性，只是 meta.json 要求 kind = "dpo"
        check_dataset_args(split, seq_len, rank, world_size)
        self.data_dir = Path(data_dir)
        self.meta = _load_dpo_meta(self.data_dir, seq_len)
        self.split, self.seq_len, self.seed, self.rank, self.world_size = split, seq_len, seed, rank, world_size
        self.vocab_size = int(self.meta["vocab_size"])
        self.pad_id = int(self.meta["pad_id"])
        stats = self.meta[split]
        self.num_conversations = self.num_pairs = int(stats["pairs"])
        self.tokens = int(stats["tokens"])
        if self.num_pairs == 0:
            raise TowerGPTError(
                f"{self.data_dir} 的 {split} 划分里没有偏好对（prepare 时 --val-fraction 是 {self.meta['val_fraction']}）"
                f" / the {split} split holds no preference pairs"
            )
        index = self._read_index(stats)
        self.starts = index[:-1]
        self.lengths = np.diff(index)                       # 每对两条序列的 token 总数（按它分组）
        self.chosen_lengths = self._read_chosen_lengths(stats)
        self.shards = [(self._open(shard["tokens_file"], self.meta["dtype"], shard["tokens"]),
                        self._open(shard["mask_file"], self.meta["mask_dtype"], shard["tokens"]))
                       for shard in stats["shards"]]
        shard_ends = np.cumsum([int(shard["tokens"]) for shard in stats["shards"]])
        self.shard_starts = np.concatenate([[0], shard_ends[:-1]])
        self.conversation_shard = np.searchsorted(shard_ends, self.starts, side="right")
        self._check_layout(index, shard_ends)
        self.epoch, self.batch_index = 0, 0
        self.batch_size: int | None = None
        self._plan_key: tuple | None = None
        self._plan: list[np.ndarray] = []

    def _read_chosen_lengths(self, stats: dict) -> np.ndarray:
        """每对里 chosen 序列的长度；必须在 (1, 这一对的总长) 之间，否则数据目录坏了。"""
        path = self.data_dir / stats["chosen_len_file"]
        _check_file_size(path, self.num_pairs * INDEX_DTYPE.itemsize)
        chosen = np.fromfile(path, dtype=INDEX_DTYPE).astype(np.int64)
        if not bool(np.all((chosen > 1) & (chosen < self.lengths - 1))):
            raise TowerGPTError(f"{path}: chosen 序列的长度与索引对不上，请重新运行 towergpt data prepare --format dpo"
                                f" / chosen lengths do not match the index: prepare the data again")
        return chosen

    @property
    def characters_per_token(self) -> float:
        """DPO 的损失不是“每个 token 的交叉熵”，换算成每字符比特数（bpc）没有意义：返回 0 表示不算。"""
        return 0.0

    def pair(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """第 index 对的 ((chosen ids, 掩码), (rejected ids, 掩码))。"""
        ids, mask = self.conversation(index)
        cut = int(self.chosen_lengths[index])
        return (ids[:cut], mask[:cut]), (ids[cut:], mask[cut:])

    def _collate(self, indices: np.ndarray) -> dict:
        """几对拼成一批：前 B 行 chosen，后 B 行 rejected，右补齐（见模块开头）。"""
        pairs = [self.pair(int(index)) for index in indices]
        sequences = [pair[0] for pair in pairs] + [pair[1] for pair in pairs]   # 2B 条 (ids, mask)
        width = max(len(ids) for ids, _ in sequences) - 1
        inputs = np.full((len(sequences), width), self.pad_id, dtype=np.int64)      # (2B, T)
        targets = np.full((len(sequences), width), IGNORE_INDEX, dtype=np.int64)    # (2B, T)
        for row, (ids, mask) in enumerate(sequences):
            ids = ids.astype(np.int64)
            n = len(ids) - 1
            inputs[row, :n] = ids[:-1]
            # 第 i 个位置预测 ids[i+1]；只有 ids[i+1] 属于回答（mask 为 1）才参与对数概率的求和
            targets[row, :n] = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
        return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets), "pairs": len(pairs)}

    def __repr__(self) -> str:
        return (f"DPOData({str(self.data_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"pairs={self.num_pairs:,}, tokens={self.tokens:,}, rank={self.rank}/{self.world_size})")


def _load_dpo_meta(data_dir: Path, seq_len: int) -> dict:
    """读 meta.json，确认它是偏好数据、而且每条序列都放得进 seq_len。"""
    meta = load_meta(data_dir)
    if meta.get("kind") != "dpo":
        raise TowerGPTError(
            f"{data_dir}: 这是 {meta.get('kind')!r} 数据，DPO 需要偏好数据：towergpt data prepare --format dpo"
            f" --input 偏好文件 --tokenizer 分词器 --out 目录 / holds {meta.get('kind')!r} data, DPO needs preference"
            f" data prepared with `towergpt data prepare --format dpo`"
        )
    prepared = int(meta["max_seq_len"])
    if prepared > seq_len:
        raise TowerGPTError(
            f"{data_dir} 是按 --max-seq-len {prepared} 准备的，放不进序列长度 {seq_len} 的模型；"
            f"请用 --max-seq-len {seq_len} 重新运行 towergpt data prepare --format dpo"
            f" / the data was prepared with --max-seq-len {prepared}, longer than the model's {seq_len}"
        )
    return meta
