"""对话微调（SFT）数据：`data prepare --format sft` 写出的对话，一段对话一行地组成批次。

和预训练的区别（见 pretrain_dataset.py）：
    预训练把文档首尾相连、按固定步长切窗口——哪怕一个窗口横跨两篇文章也无所谓。
    对话不行：一行（一条样本）只放**一段**对话，不同对话之间互相看不见。
    否则模型在回答第二段对话时，注意力能看到第一段对话的内容，学到的是“根据无关的上文作答”。

一行对话的 x 和 y（与预训练一样错开一位）：

    ids       = [<s>, <|im_start|>, user, \\n, 你, 好, <|im_end|>, \\n, <|im_start|>, assistant, \\n, 嗨, <|im_end|>, \\n]
    loss_mask = [ 0,      0,         0,    0,  0,  0,     0,       0,      0,          0,       0,  1,     1,       0 ]
    x = ids[:-1]                      模型的输入
    y = ids[1:]，但 loss_mask[1:] == 0 的位置换成 -100（IGNORE_INDEX，交叉熵会跳过它）

于是模型只在“该助手说话”的位置学习：y 里留下的只有助手的正文和它的 <|im_end|>
（学会“说完就停”）。用户的话、system、角色名都只当作上文，不学着去“说”。

一批里的对话长短不一，短的在**右边**补齐（padding）：x 补 pad_id，y 补 -100。为什么右补齐不需要注意力掩码？
    模型是因果的（causal）：位置 i 只能看见位置 0..i。真实 token 全在左边、pad 全在右边，
    所以任何一个真实 token 往左看，看到的都是同一段对话里的真实 token，根本看不到 pad；
    pad 位置自己会看到前面的真实 token、算出一些没有意义的输出，但它们的标签是 -100，不计损失，
    梯度也就不会从这些位置传回去。所以右补齐的结果与“每段对话单独算”完全一样，
    只是多花了 pad 位置的算力——下面的“按长度分组”就是为了把这部分浪费降下来。

按长度分组（length grouping）：
    如果完全随机地组批，一批里常常是一段 30 token 的短对话配一段 500 token 的长对话，
    短的要补 470 个 pad，大半算力白费。办法：每个 epoch 先随机打乱全部对话，
    再每 64 个批次的量切成一块（chunk），块内按长度排序后切成批次——同一批里的对话长度相近；
    最后把所有批次的顺序再打乱一次，免得模型总是“先见短的、再见长的”。
    块只有 64 批那么大，所以排序只在局部进行，整体的随机性基本保留。
    这一切都由 default_rng((seed, epoch)) 决定：同样的种子和 epoch 永远得到同样的批次，续训时可以精确复现。
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from towergpt.data.data_format import (
    INDEX_DTYPE, check_dataset_args, check_file_size, load_meta, open_memmap, prepare_command,
)
from towergpt.errors import TowerGPTError
from towergpt.model import IGNORE_INDEX


# 每多少个批次的对话放在一起按长度排序（见模块开头“按长度分组”）
CHUNK_BATCHES = 64

# 报错时怎么称呼 meta.json 里 "kind" 的三种数据
DATA_NAMES = {"pretrain": ("预训练数据", "pretraining data"), "sft": ("对话数据", "dialogue data"),
              "dpo": ("偏好数据", "preference data")}


class SFTData:
    """一个划分（train 或 val）上的对话批次流，支持按长度分组、多卡切分、确定性的打乱和断点续训。

        data = SFTData("data/sft", "train", seq_len=256, seed=0)
        x, y = data.next_batch(8)     # 两个 LongTensor，形状都是 (8, T)，T = 本批最长对话的 token 数 - 1
        state = data.state_dict()     # 存进检查点；续训时 load_state_dict(state)

    与 PackedPretrainData 接口相同：next_batch、state_dict / load_state_dict、iter_eval_batches、
    characters_per_token。不同之处是每批的宽度 T 随批变化（不超过 seq_len），
    而且一个 epoch 的最后一批可能不足 batch_size（保证每段对话每个 epoch 恰好出现一次）。

    参数:
        data_dir:   `towergpt data prepare --format sft` 的输出目录。
        split:      "train" 或 "val"。
        seq_len:    模型的序列长度（model.max_seq_len）；必须不小于 prepare 时的 --max-seq-len。
        seed:       打乱顺序的种子。
        rank, world_size: 多卡（DDP）训练时本进程的编号和总进程数；单卡用默认值 0 和 1。
    """

    # meta.json 里要求的数据种类，以及报错时怎么称呼一条样本；DPOData 换成偏好数据的，其余全部沿用
    kind = "sft"
    sample_name = ("对话", "conversations")

    def __init__(self, data_dir: str | os.PathLike, split: str, seq_len: int,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        check_dataset_args(split, seq_len, rank, world_size)
        self.data_dir = Path(data_dir)
        self.meta = _load_record_meta(self.data_dir, seq_len, self.kind)
        self.split = split
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.vocab_size = int(self.meta["vocab_size"])
        self.pad_id = int(self.meta["pad_id"])
        stats = self.meta[split]
        self.num_conversations = int(stats["conversations"])   # 偏好数据的 stats 里它等于对数
        self.tokens = int(stats["tokens"])
        if self.num_conversations == 0:
            zh, en = self.sample_name
            raise TowerGPTError(
                f"{self.data_dir} 的 {split} 划分里没有{zh}（prepare 时 --val-fraction 是 {self.meta['val_fraction']}）；"
                f"需要验证集就用 --val-fraction 0.01 之类的值重新 prepare"
                f" / the {split} split holds no {en} (prepared with --val-fraction"
                f" {self.meta['val_fraction']}): prepare again with e.g. --val-fraction 0.01"
            )

        # 第 i 段对话 = 全部 token（各分片按顺序接起来）的 [index[i], index[i+1])
        index = self._read_index(stats)
        self.starts = index[:-1]
        self.lengths = np.diff(index)                       # 每段对话的 token 数（DPO：一对两条序列的总数）
        self.shards = [(self._open(shard["tokens_file"], self.meta["dtype"], shard["tokens"]),
                        self._open(shard["mask_file"], self.meta["mask_dtype"], shard["tokens"]))
                       for shard in stats["shards"]]
        shard_ends = np.cumsum([int(shard["tokens"]) for shard in stats["shards"]])
        self.shard_starts = np.concatenate([[0], shard_ends[:-1]])
        # 每段对话在哪个分片：分片终点 > 对话起点的第一个分片
        self.conversation_shard = np.searchsorted(shard_ends, self.starts, side="right")
        self._check_layout(index, shard_ends)

        # 读取位置：第几个 epoch、本进程在这个 epoch 的批次计划里走到了第几批、计划是按多大的批做的
        self.epoch = 0
        self.batch_index = 0
        self.batch_size: int | None = None
        self._plan_key: tuple | None = None
        self._plan: list[np.ndarray] = []

    # -- 打开与检查 ---------------------------------------------------------

    def _open(self, name: str, dtype_name: str, count: int) -> np.memmap:
        """只读地映射数据目录里的一个文件（先核对文件大小，见 data/data_format.py）。"""
        return open_memmap(self.data_dir / name, dtype_name, count, self.kind)

    def _read_index(self, stats: dict) -> np.ndarray:
        """索引只有“对话数 + 1”个 int64，直接读进内存（100 万段对话也才 8 MB）。"""
        path = self.data_dir / stats["index_file"]
        check_file_size(path, (self.num_conversations + 1) * INDEX_DTYPE.itemsize, self.kind)
        return np.fromfile(path, dtype=INDEX_DTYPE).astype(np.int64)

    def _check_layout(self, index: np.ndarray, shard_ends: np.ndarray) -> None:
        """索引与分片对得上：从 0 开始、递增、总数等于 token 数、每段对话完整地在一个分片里。"""
        ends = index[1:]
        ok = (index[0] == 0 and index[-1] == self.tokens and bool(np.all(self.lengths > 0))
              and bool(np.all(self.conversation_shard < len(shard_ends))))
        if ok:
            ok = bool(np.all(ends <= shard_ends[self.conversation_shard]))
        if not ok:
            raise TowerGPTError(
                f"{self.data_dir / self.meta[self.split]['index_file']}: 索引与分片对不上，数据目录可能损坏，"
                f"请重新运行 {prepare_command(self.kind)}"
                f" / the index does not match the shards: run `{prepare_command(self.kind)}` again"
            )

    # -- 取对话、组批 ---------------------------------------------------------

    @property
    def characters_per_token(self) -> float:
        """本划分里，每个算损失的 token 平均对应几个助手字符，用来把 loss 换算成 bpc。

        SFT 的损失只算在助手的 token 上（含 <|im_end|>），所以分子分母都只数助手：
        bpc = 每个 token 的损失 / ln2 / (assistant_characters / assistant_tokens)。
        """
        stats = self.meta[self.split]
        return stats["assistant_characters"] / stats["assistant_tokens"] if stats["assistant_tokens"] else 0.0

    def conversation(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """第 index 段对话（0 <= index < num_conversations）的 (token id, 损失掩码)，两个等长的一维数组。"""
        shard = int(self.conversation_shard[index])
        start = int(self.starts[index] - self.shard_starts[shard])
        end = start + int(self.lengths[index])
        tokens, mask = self.shards[shard]
        return tokens[start:end], mask[start:end]

    def _collate(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """把几段对话拼成一批 (x, y)，形状都是 (B, T)，T = 最长那段的 token 数 - 1；右边补齐。

        x 的空位补 pad_id，y 的空位补 -100；y 在非助手位置也是 -100（见模块开头）。
        """
        inputs, targets = pad_right([self.conversation(int(index)) for index in indices], self.pad_id)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    # -- 训练：按长度分组、打乱、按卡切分、可续训 --------------------------------

    def epoch_plan(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """第 epoch 个 epoch 里本进程要依次读的批次，每批是一个对话编号数组。

        1. default_rng((seed, epoch)) 生成全部对话的随机排列；
        2. 每 CHUNK_BATCHES 批的量（64 × batch_size 段对话）切成一块，块内按长度排序，再切成批；
        3. 用同一个随机数生成器把所有批次的顺序打乱；
        4. 第 r 号进程取第 r, r+W, r+2W, ... 批（W = world_size），各进程互不重叠。
        每段对话每个 epoch 恰好出现一次；只有最后一块可能切出一个不满 batch_size 的批。
        """
        key = (epoch, batch_size)
        if key != self._plan_key:
            rng = np.random.default_rng((self.seed, epoch))
            order = rng.permutation(self.num_conversations)
            chunk = batch_size * CHUNK_BATCHES
            batches: list[np.ndarray] = []
            for start in range(0, len(order), chunk):
                part = order[start:start + chunk]
                part = part[np.argsort(self.lengths[part], kind="stable")]  # stable：结果与排序算法的实现无关
                batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
            shuffled = [batches[k] for k in rng.permutation(len(batches))]
            self._plan = shuffled[self.rank::self.world_size]
            self._plan_key = key
            if not self._plan:
                raise TowerGPTError(
                    f"{self.data_dir} 的 {self.split} 划分只有 {self.num_conversations} 段对话，按每批 {batch_size} 段"
                    f"凑不够 {self.world_size} 个进程每人一批；请调小批大小或用更少的卡"
                    f" / the {self.split} split has {self.num_conversations} conversations: too few batches of"
                    f" {batch_size} for {self.world_size} processes"
                )
        return self._plan

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """取下一批，返回 (x, y)，形状都是 (B, T)：B <= batch_size，T <= seq_len。

        这个 epoch 的批次用完了就自动进入下一个 epoch（新的排列）。
        如果这次要的 batch_size 与当前计划的不同（比如续训时改了 micro_batch_size），
        就按新的批大小重新做计划，并把位置换算成“已经读过的对话数 / 新批大小”：
        这个 epoch 里可能有少量对话重复或跳过，但不会从头再来。
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.batch_size is not None and batch_size != self.batch_size:
            self.batch_index = self.batch_index * self.batch_size // batch_size
        self.batch_size = batch_size
        plan = self.epoch_plan(self.epoch, batch_size)
        while self.batch_index >= len(plan):  # 本 epoch 读完了
            self.epoch += 1
            self.batch_index = 0
            plan = self.epoch_plan(self.epoch, batch_size)
        indices = plan[self.batch_index]
        self.batch_index += 1
        return self._collate(indices)

    def state_dict(self) -> dict:
        """读取位置，全是普通 int，可以放进用 torch.load(weights_only=True) 读的检查点。

        状态就是 (epoch, batch_index, batch_size)：计划由种子、epoch 和批大小完全决定，
        所以记下这三个数，续训后 next_batch 给出的批次与没中断时一模一样。
        batch_size 为 0 表示还没取过批。num_conversations 用来发现“换了数据却续训”。
        """
        return {"epoch": self.epoch, "batch_index": self.batch_index, "batch_size": self.batch_size or 0,
                "seed": self.seed, "num_conversations": self.num_conversations, "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        """恢复 state_dict() 保存的读取位置。"""
        if "num_conversations" in state and int(state["num_conversations"]) != self.num_conversations:
            raise TowerGPTError(
                f"检查点里的数据位置是按 {state['num_conversations']} 段对话记录的，现在的 {self.split} 划分有"
                f" {self.num_conversations} 段：数据目录变了，无法接着原来的顺序读"
                f" / the checkpoint's data position was saved for {state['num_conversations']} conversations, the"
                f" {self.split} split now has {self.num_conversations}: the data changed"
            )
        self.epoch = int(state["epoch"])
        self.batch_index = int(state["batch_index"])
        self.batch_size = int(state["batch_size"]) or None
        saved_world = int(state.get("world_size", self.world_size))
        if saved_world != self.world_size:
            # 换了卡数：各进程在计划里的位置含义不同了。按“全体一共读了多少批”近似换算。
            self.batch_index = self.batch_index * saved_world // self.world_size

    # -- 评估：不打乱、按顺序 -------------------------------------------------

    def iter_eval_batches(self, batch_size: int, max_batches: int | None = None):
        """按顺序产出评估用的 (x, y)，不打乱、不按长度分组，每次调用都从头开始，结果可比。

        为什么评估不按长度分组？max_batches 只取前几批时，排过序的批会偏向短对话，验证损失就有偏差了。
        多卡时第 r 号进程取对话 r, r+W, r+2W, ...；最后一批可能不足 batch_size。
        """
        indices = np.arange(self.rank, self.num_conversations, self.world_size)
        for produced, start in enumerate(range(0, len(indices), batch_size)):
            if max_batches is not None and produced >= max_batches:
                return
            yield self._collate(indices[start:start + batch_size])

    def __repr__(self) -> str:
        return (f"SFTData({str(self.data_dir)!r}, split={self.split!r}, seq_len={self.seq_len}, "
                f"conversations={self.num_conversations:,}, tokens={self.tokens:,}, rank={self.rank}/{self.world_size})")


def pad_right(sequences: list[tuple[np.ndarray, np.ndarray]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """把 N 条 (token id, 损失掩码) 右补齐成 (inputs, targets)，两个 int64 数组，形状都是 (N, T)。

    T = 最长那条的 token 数 - 1。inputs 是每条去掉最后一个 token，空位补 pad_id；
    targets 是错开一位的下一个 token，只在掩码为 1 的位置有值，其余位置和空位都是 IGNORE_INDEX。
    这是项目里唯一的右补齐：SFT 的对话、DPO 的偏好对、`towergpt eval` 的评估窗口都用它组批。
    """
    width = max(len(ids) for ids, _ in sequences) - 1
    inputs = np.full((len(sequences), width), pad_id, dtype=np.int64)      # (N, T)
    targets = np.full((len(sequences), width), IGNORE_INDEX, dtype=np.int64)    # (N, T)
    for row, (ids, mask) in enumerate(sequences):
        ids = ids.astype(np.int64)
        n = len(ids) - 1
        inputs[row, :n] = ids[:-1]
        # 第 i 个位置要预测 ids[i+1]；只有 ids[i+1] 算损失（mask 为 1：SFT 里是助手说的话，DPO 里是回答）才留下
        targets[row, :n] = np.where(mask[1:] == 1, ids[1:], IGNORE_INDEX)
    return inputs, targets


def _load_record_meta(data_dir: Path, seq_len: int, kind: str) -> dict:
    """读 meta.json，确认它是 kind 种数据（"sft" 或 "dpo"）、而且每条序列都放得进 seq_len。"""
    meta = load_meta(data_dir)
    found = meta.get("kind")
    if found != kind:
        found_zh, found_en = DATA_NAMES.get(found, (f"{found!r} 数据", f"{found!r} data"))
        wanted_zh, wanted_en = DATA_NAMES[kind]
        raise TowerGPTError(
            f"{data_dir} 是{found_zh}，这里需要{wanted_zh}："
            f"{prepare_command(kind)} --input 数据文件 --tokenizer 分词器 --out 目录"
            f" / this is {found_en}; {wanted_en} is needed, prepared with `{prepare_command(kind)}`"
        )
    prepared = int(meta["max_seq_len"])
    if prepared > seq_len:
        raise TowerGPTError(
            f"{data_dir} 是按 --max-seq-len {prepared} 准备的，每条序列最长 {prepared + 1} 个 token，"
            f"放不进序列长度 {seq_len} 的模型；请用 --max-seq-len {seq_len} 重新运行 {prepare_command(kind)}"
            f" / the data was prepared with --max-seq-len {prepared}, longer than the model's {seq_len}:"
            f" run `{prepare_command(kind)} --max-seq-len {seq_len}` again"
        )
    return meta
