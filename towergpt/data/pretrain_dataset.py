"""预训练数据流：把 `data prepare` 写出的 token 分片切成固定长度的训练样本。

预训练的目标很朴素：给定前面的 token，预测下一个。一条训练样本就是一段连续的
token“窗口”（window），长 seq_len + 1：

    窗口   = [t0, t1, t2, ..., t_{L}]          L = seq_len
    输入 x = [t0, t1, ..., t_{L-1}]             窗口去掉最后一个
    目标 y = [t1, t2, ..., t_{L}]               窗口去掉第一个（x 整体左移一位）

模型在位置 i 看到 x[0..i]，要预测 y[i] = x[i+1]。一个窗口就同时提供了 L 个预测任务。

窗口怎么切？相邻窗口的起点相隔 seq_len（步长 stride = seq_len），于是相邻两个窗口
恰好共用一个 token（前一个窗口的最后一个 = 后一个窗口的第一个）：

    分片:  t0 t1 t2 t3 t4 t5 t6 t7 t8 ...          (seq_len = 4)
    窗口0: t0 t1 t2 t3 t4
    窗口1:             t4 t5 t6 t7 t8
                                    ...
每个 token 在一个 epoch 里至多当一次目标，不会重复。有两种 token 从不当目标：分片的第一个
（它前面什么也没有），以及分片末尾凑不满一个窗口的那一小段（不到 seq_len 个，见 __init__ 里的窗口数）。
一个分片有上百万 token，这点浪费不到万分之一；`towergpt eval` 连这段尾巴也算上（见 evaluate.py）。
文档之间不做填充（padding）：多篇文档首尾相连地“打包”（packing）在一起，
靠 bos/eos 分隔。这比“每篇补齐到同样长度”高效得多——算力全花在真文字上。

为什么用 np.memmap？分片可能有几十 GB。memmap 把文件“映射”成一个数组，
访问哪一段，操作系统才从磁盘读哪一段（并帮我们缓存），内存占用与文件大小无关。
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from towergpt.data.data_format import check_dataset_args, load_meta, open_memmap
from towergpt.errors import TowerGPTError


class PackedPretrainData:
    """一个划分（train 或 val）上的打包窗口流，支持多卡切分、确定性的打乱和断点续训。

        data = PackedPretrainData("data/pretrain", "train", seq_len=256, seed=0)
        x, y = data.next_batch(8)          # 两个 LongTensor，形状都是 (8, 256)
        state = data.state_dict()          # 存进检查点；续训时 load_state_dict(state)

    参数:
        data_dir:   `towergpt data prepare` 的输出目录。
        split:      "train" 或 "val"。
        seq_len:    每条样本的长度（通常等于模型的 max_seq_len）。
        seed:       打乱顺序的种子。
        rank, world_size: 多卡（DDP）训练时本进程的编号和总进程数；单卡用默认值 0 和 1。
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        check_dataset_args(split, seq_len, rank, world_size)
        self.data_dir = Path(data_dir)
        self.meta = load_meta(self.data_dir, kind="pretrain")
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.vocab_size = int(self.meta["vocab_size"])
        self.tokens = int(self.meta[split]["tokens"])

        self.shards = [self._open_shard(shard) for shard in self.meta[split]["shards"]]
        # 每个分片能切出的窗口数：起点 k·L 的窗口需要 k·L + L + 1 <= 分片长度 n，
        # 所以 k 最大取 (n - 1 - L) / L，窗口数 = (n - 1) // L（n < L + 1 时为 0）。
        windows_per_shard = np.array([max(0, (len(shard) - 1) // seq_len) for shard in self.shards], dtype=np.int64)
        # window_ends[i] = 前 i+1 个分片一共有多少窗口；用它把“全局窗口号”映射到（分片，分片内序号）
        self.window_ends = np.cumsum(windows_per_shard)
        self.num_windows = int(self.window_ends[-1]) if len(self.window_ends) else 0
        self._check_enough_windows()

        # 读取位置：第几个 epoch、本进程在这个 epoch 的顺序里走到了第几个窗口
        self.epoch = 0
        self.offset = 0
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    # -- 打开与检查 ---------------------------------------------------------

    def _open_shard(self, shard: dict) -> np.memmap:
        """只读地映射一个分片（先核对文件大小，见 data/data_format.py）。"""
        return open_memmap(self.data_dir / shard["file"], self.meta["dtype"], shard["tokens"], "pretrain")

    def _check_enough_windows(self) -> None:
        """一个完整窗口都切不出来，或者窗口少到不够每张卡分一个时，给出能照着改的建议。"""
        if self.num_windows == 0:
            raise TowerGPTError(
                f"{self.data_dir} 的 {self.split} 划分只有 {self.tokens:,} 个 token，"
                f"凑不出一个长 seq_len + 1 = {self.seq_len + 1} 的窗口；请调小 model.max_seq_len，"
                f"或者提供更多语料（验证集太小可以调大 --val-fraction）"
                f" / the {self.split} split holds only {self.tokens:,} tokens, fewer than seq_len + 1 ="
                f" {self.seq_len + 1}: use a smaller max_seq_len or more data"
            )
        if self.num_windows < self.world_size:
            raise TowerGPTError(
                f"{self.data_dir} 的 {self.split} 划分只有 {self.num_windows} 个窗口，不够 {self.world_size} 个进程每人一个"
                f" / the {self.split} split has {self.num_windows} windows, fewer than the {self.world_size} processes"
            )

    # -- 取窗口 -------------------------------------------------------------

    @property
    def characters_per_token(self) -> float:
        """验证集上平均每个 token 对应几个字符（token 数含 bos/eos），用来把 loss 换算成 bpc。

        bpc（bits per character，每字符比特数）= 每个 token 的损失 / ln2 / 每 token 字符数。
        不同分词器切出的 token 长短不一，直接比 loss 不公平；换算到“每个字符”就可以比了。
        没有验证集时退而用训练集的比值。
        """
        for split in ("val", "train"):
            stats = self.meta[split]
            if stats["tokens"]:
                return stats["characters"] / stats["tokens"]
        return 0.0

    def window(self, index: int) -> np.ndarray:
        """第 index 个窗口（全局编号，0 <= index < num_windows），长 seq_len + 1 的 token 数组。"""
        shard = int(np.searchsorted(self.window_ends, index, side="right"))  # 它落在哪个分片
        first_in_shard = int(self.window_ends[shard - 1]) if shard > 0 else 0
        start = (index - first_in_shard) * self.seq_len
        return self.shards[shard][start:start + self.seq_len + 1]

    def _batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """把若干窗口叠成 (x, y)：形状都是 (B, seq_len) 的 LongTensor（embedding 需要 int64 下标）。"""
        windows = np.stack([self.window(int(index)) for index in indices]).astype(np.int64)  # (B, L+1)
        batch = torch.from_numpy(windows)
        # 切片得到的是“视图”，每行之间隔着 L+1 个元素，不是连续内存；.contiguous() 复制一份连续的，
        # 之后 .view(-1)（交叉熵常用）才不会报错
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    # -- 训练：打乱、按卡切分、可续训 -----------------------------------------

    def epoch_order(self, epoch: int) -> np.ndarray:
        """第 epoch 个 epoch 里本进程要依次读的窗口编号。

        先用 default_rng((seed, epoch)) 生成全部窗口的一个随机排列——同样的种子和 epoch
        永远得到同样的排列，续训、重跑都一致；每个 epoch 的排列又各不相同。
        然后第 r 号进程取排列的第 r, r+W, r+2W, ... 个（W = world_size）：
        各进程互不重叠，合起来正好是全部窗口。（窗口数不能被 W 整除时，
        前几个进程每个 epoch 多一个窗口；训练按步数计，所以这无关紧要。）
        """
        if epoch != self._order_epoch:
            permutation = np.random.default_rng((self.seed, epoch)).permutation(self.num_windows)
            self._order = permutation[self.rank::self.world_size]
            self._order_epoch = epoch
        return self._order

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """取下一批 batch_size 个窗口，返回 (x, y)，形状都是 (batch_size, seq_len)。

        这个 epoch 的窗口用完了就自动进入下一个 epoch（新的排列），一个批次可以跨 epoch。
        """
        indices: list[np.ndarray] = []
        needed = batch_size
        while needed > 0:
            order = self.epoch_order(self.epoch)
            if self.offset >= len(order):  # 本 epoch 读完了
                self.epoch += 1
                self.offset = 0
                continue
            take = order[self.offset:self.offset + needed]
            indices.append(take)
            self.offset += len(take)
            needed -= len(take)
        return self._batch(np.concatenate(indices))

    def state_dict(self) -> dict:
        """读取位置，全是普通 int，可以放进用 torch.load(weights_only=True) 读的检查点。

        续训时 load_state_dict 恢复它，之后 next_batch 给出的批次与没中断时一模一样。
        seq_len 和 num_windows 一并记下，用来发现“换了数据或序列长度却续训”的情况。
        """
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed, "seq_len": self.seq_len,
                "num_windows": self.num_windows, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """恢复 state_dict() 保存的读取位置。"""
        for key in ("seq_len", "num_windows"):
            if key in state and int(state[key]) != getattr(self, key):
                raise TowerGPTError(
                    f"检查点里的数据位置是按 {key}={state[key]} 记录的，现在是 {getattr(self, key)}："
                    f"数据目录或序列长度变了，无法接着原来的顺序读"
                    f" / the checkpoint's data position was saved with {key}={state[key]}, now"
                    f" {getattr(self, key)}: the data or seq_len changed, so the position cannot be restored"
                )
        self.epoch = int(state["epoch"])
        offset = int(state["offset"])
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size:
            # 换了卡数：各进程的 offset 含义不同了。按“全体一共读了多少窗口”近似换算，
            # 这个 epoch 里会有少量窗口重复或跳过，但不会从头再来。
            offset = offset * saved_world // self.world_size
        self.offset = offset

    # -- 评估：不打乱、按顺序 -------------------------------------------------

    def iter_eval_batches(self, batch_size: int, max_batches: int | None = None):
        """按顺序产出评估用的 (x, y)，不打乱，每次调用都从头开始，结果可比。

        多卡时第 r 号进程取窗口 r, r+W, r+2W, ...，各进程合起来覆盖全部窗口。
        最后一批可能不足 batch_size（调用者按 token 数加权平均即可）。
        max_batches 给出时最多产出这么多批（验证集很大时，每次只评估前一部分，省时间）。
        """
        indices = np.arange(self.rank, self.num_windows, self.world_size)
        produced = 0
        for start in range(0, len(indices), batch_size):
            if max_batches is not None and produced >= max_batches:
                return
            yield self._batch(indices[start:start + batch_size])
            produced += 1

    def __repr__(self) -> str:
        return (f"PackedPretrainData({str(self.data_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"tokens={self.tokens:,}, windows={self.num_windows:,}, rank={self.rank}/{self.world_size})")
