"""划分 train / val：用“文档序号的带种子哈希”决定每篇文档（对话、偏好对）去哪一边 / The validation split.

为什么按文档划分、而且用哈希？
    - 按文档：同一篇文档的 token 不会一半在训练集、一半在验证集
      （那样验证损失会偏低，因为模型“见过”这篇文章的前半段）；
    - 用哈希(种子, 序号)：结果只取决于种子和文档在语料里的序号，与分词进程数、批大小都无关，
      同样的输入和种子永远得到同样的划分，而且不必先把语料读完、也不必在内存里洗牌。

`validation_mask` 是规则本身（数据集和测试也用它来复核）；`SplitWriter` 按这个规则把
一批批文档分给 train 和 val 两个写入器（见 data/shard_writers.py）。
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from towergpt.data.encoders import Documents, Encoded

# splitmix64 的常数（Steele 等人 2014；Java 的 SplittableRandom 用的就是它）。
# 它把相邻的整数 0, 1, 2, ... 打散成看起来毫无规律的 64 位数，正适合“按序号抽样”。
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_1 = 0xBF58476D1CE4E5B9
_MIX_2 = 0x94D049BB133111EB
_MASK_64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# 1. 规则：哈希(种子, 序号) < val_fraction 就进验证集
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


# ---------------------------------------------------------------------------
# 2. 按规则分给两个写入器
# ---------------------------------------------------------------------------

class SplitWriter:
    """给每篇文档（对话）决定去向（train / val），交给对应的写入器。

    make_writer(划分名) 造出写入器：预训练用 ShardWriter，对话用 ConversationWriter，偏好对用 PairWriter；
    划分规则（下面这些）三者完全相同。

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
        self.held: tuple[Documents, bool] | None = None   # 扣住的最后一篇：(文档, 是否进 val)

    def add(self, encoded: Encoded) -> None:
        """收下一批，写出除最后一篇外的全部。"""
        is_val = validation_mask(self.seen, encoded.consumed, self.seed, self.val_fraction)[encoded.ordinals]
        self.seen += encoded.consumed
        documents = encoded.documents
        if len(documents) == 0:
            return
        self.kept += len(documents)
        if self.held is not None:  # 把上一批扣住的那篇接到这批最前面，一起写
            held_documents, held_val = self.held
            documents = Documents.concat(held_documents, documents)
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

    def _write(self, documents: Documents, is_val: np.ndarray) -> None:
        """按每篇的去向分给两个划分。向量化：不逐篇循环。"""
        if len(documents) == 0:
            return
        for writer, mask in ((self.train, ~is_val), (self.val, is_val)):
            if mask.all():
                writer.write(documents)
            elif mask.any():
                writer.write(documents.select(mask))
