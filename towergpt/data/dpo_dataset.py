"""偏好数据（DPO）：`data prepare --format dpo` 写出的偏好对，组成“chosen 在上、rejected 在下”的批次。

磁盘上的布局与对话数据相同（见 data/prepare.py），只是“一段”换成了“一对”：
第 i 对 = [chosen 序列][rejected 序列] 首尾相接，{split}_chosen_len.bin 记下前一条有多长。
所以读取、按长度分组、打乱、多卡切分、断点续训全部沿用 SFTData（data/sft_dataset.py），
这里只换了三样：meta.json 要求的数据种类（类属性 kind），多读一个 chosen 长度文件，以及怎样把一组“对”拼成一批。

一批 B 对拼成 2B 行（一次前向同时算完两种回答，比分两次前向省一半调用开销）：

    inputs  (2B, T)   第 0..B-1 行是各对的 chosen，第 B..2B-1 行是同样顺序的 rejected
    targets (2B, T)   错开一位的下一个 token；只有回答（含 <|im_end|>）的位置有值，其余是 -100
    pairs   B         这一批有几对：DPO 的损失是“每对一个数”的平均，目标函数把它报成结果的权重
                      （train/dpo.py），评估和梯度累积都按它加权

右补齐：inputs 补 pad_id、targets 补 -100，与 SFT 相同（因果注意力下右边的 pad 影响不到真实 token）。
宽度 T 取 2B 条序列里最长的那条减一：同一对的两条一般长度相近（提示相同），
按“一对的总长”分组也就让同一批里的序列长度相近。
"""

from __future__ import annotations

import os

import numpy as np
import torch

from towergpt.data.data_format import INDEX_DTYPE, check_file_size
from towergpt.data.sft_dataset import SFTData, pad_right
from towergpt.errors import TowerGPTError


class DPOData(SFTData):
    """一个划分（train 或 val）上的偏好对批次流；接口与 SFTData 相同，批次是一个 dict（见模块开头）。

        data = DPOData("data/dpo", "train", seq_len=256, seed=0)
        batch = data.next_batch(8)    # {"inputs": (16, T), "targets": (16, T), "pairs": 8}

    继承来的名字里的 “conversation” 在这里指“一对”：num_conversations 是对数，conversation(i)
    是第 i 对的 [chosen 序列][rejected 序列]。一个 epoch 里每对恰好出现一次，最后一批可能不足 batch_size。
    继承来的 characters_per_token 对偏好对没有意义，也没人用它：DPO 的损失不是交叉熵（目标函数的结果
    is_token_cross_entropy 为 False），训练循环就既不算困惑度也不算 bpc（见 train/objective.py 的 validation_metrics）。
    """

    kind = "dpo"
    sample_name = ("偏好对", "preference pairs")

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        # SFTData.__init__ 读 meta.json（要求 kind = "dpo"）、索引和分片；lengths 在这里是每对两条序列的总长
        super().__init__(data_dir, split, seq_len, seed=seed, rank=rank, world_size=world_size)
        self.num_pairs = self.num_conversations
        self.chosen_lengths = self._read_chosen_lengths(self.meta[split])

    def _read_chosen_lengths(self, stats: dict) -> np.ndarray:
        """每对里 chosen 序列的长度；必须在 (1, 这一对的总长) 之间，否则数据目录坏了。"""
        path = self.data_dir / stats["chosen_len_file"]
        check_file_size(path, self.num_pairs * INDEX_DTYPE.itemsize, self.kind)
        chosen = np.fromfile(path, dtype=INDEX_DTYPE).astype(np.int64)
        if not bool(np.all((chosen > 1) & (chosen < self.lengths - 1))):
            raise TowerGPTError(f"{path}: chosen 序列的长度与索引对不上，请重新运行 towergpt data prepare --format dpo"
                                f" / chosen lengths do not match the index: prepare the data again")
        return chosen

    def pair(self, index: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """第 index 对的 ((chosen ids, 掩码), (rejected ids, 掩码))。"""
        ids, mask = self.conversation(index)
        cut = int(self.chosen_lengths[index])
        return (ids[:cut], mask[:cut]), (ids[cut:], mask[cut:])

    def _collate(self, indices: np.ndarray) -> dict:
        """几对拼成一批：前 B 行 chosen，后 B 行 rejected，右补齐（见模块开头）。"""
        pairs = [self.pair(int(index)) for index in indices]
        sequences = [pair[0] for pair in pairs] + [pair[1] for pair in pairs]   # 2B 条 (ids, mask)
        # targets 只在回答的位置有值：只有这些位置参与对数概率的求和
        inputs, targets = pad_right(sequences, self.pad_id)      # 都是 (2B, T)
        return {"inputs": torch.from_numpy(inputs), "targets": torch.from_numpy(targets), "pairs": len(pairs)}

    def __repr__(self) -> str:
        return (f"DPOData({str(self.data_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"pairs={self.num_pairs:,}, tokens={self.tokens:,}, rank={self.rank}/{self.world_size})")
