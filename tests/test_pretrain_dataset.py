"""PackedPretrainData：每个 token 一个 epoch 恰好当一次目标、多卡不重不漏、可续训、评估顺序、报错。"""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import SENTIMENT
from towergpt.data.data_format import load_meta
from towergpt.data.prepare import prepare_pretrain
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.errors import TowerGPTError

SEQ_LEN = 32


@pytest.fixture(scope="module")
def data_dir(review_tokenizer_dir, tmp_path_factory):
    """小分词器（词表 3000）+ 600 条评论，分片故意切小（每片 4000 token），让窗口跨不了分片的规则真的起作用。"""
    root = tmp_path_factory.mktemp("packed")
    reviews = [line for line in (SENTIMENT / "neg.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = root / "reviews.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in reviews[:600]),
                      encoding="utf-8")
    prepare_pretrain([corpus], review_tokenizer_dir, root / "data", workers=1, val_fraction=0.1, shard_tokens=4000,
                     verbose=False)
    return root / "data"


def shard_arrays(data_dir, split):
    meta = load_meta(data_dir)
    return [np.fromfile(data_dir / s["file"], dtype=np.uint16) for s in meta[split]["shards"]]


def expected_targets(data_dir, split, seq_len=SEQ_LEN):
    """每个分片里会被当作目标的 token：第 1 个到第 (n-1)//L·L 个（不跨分片）。"""
    return np.concatenate([shard[1:1 + (len(shard) - 1) // seq_len * seq_len] for shard in shard_arrays(data_dir, split)])


def one_epoch_windows(data, batch_size=7):
    """用 next_batch 读满一个 epoch，返回 (x 行, y 行) 两个数组，形状 (本进程窗口数, L)。"""
    count = len(data.epoch_order(0))
    xs, ys = [], []
    while sum(len(x) for x in xs) < count:
        x, y = data.next_batch(batch_size)
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs)[:count], np.concatenate(ys)[:count]


def test_batches_have_the_right_shape_and_shift(data_dir):
    data = PackedPretrainData(data_dir, "train", SEQ_LEN)
    x, y = data.next_batch(5)
    assert x.shape == y.shape == (5, SEQ_LEN) and x.dtype == y.dtype == torch.long
    assert x.is_contiguous() and y.is_contiguous()
    assert torch.equal(x[:, 1:], y[:, :-1])  # y 就是 x 左移一位
    assert len(data.shards) > 3 and data.num_windows == sum((len(s) - 1) // SEQ_LEN for s in shard_arrays(data_dir, "train"))


def test_every_token_is_a_target_exactly_once_per_epoch(data_dir):
    data = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=3)
    order = data.epoch_order(0)
    assert sorted(order.tolist()) == list(range(data.num_windows))  # 是全部窗口的一个排列
    x, y = one_epoch_windows(data)
    # 把按打乱顺序读到的窗口放回原位，拼起来应该正好是各分片里的全部目标 token
    by_window = np.empty_like(y)
    by_window[order] = y
    assert np.array_equal(by_window.reshape(-1), expected_targets(data_dir, "train"))
    assert not np.array_equal(order, np.arange(data.num_windows))  # 真的打乱了


def test_two_ranks_are_disjoint_and_together_complete(data_dir):
    ranks = [PackedPretrainData(data_dir, "train", SEQ_LEN, seed=3, rank=r, world_size=2) for r in (0, 1)]
    orders = [rank.epoch_order(0) for rank in ranks]
    assert not set(orders[0].tolist()) & set(orders[1].tolist())
    assert sorted(orders[0].tolist() + orders[1].tolist()) == list(range(ranks[0].num_windows))
    assert abs(len(orders[0]) - len(orders[1])) <= 1

    by_window = np.empty((ranks[0].num_windows, SEQ_LEN), dtype=np.int64)
    for data, order in zip(ranks, orders):
        _, y = one_epoch_windows(data, batch_size=5)
        by_window[order] = y
    assert np.array_equal(by_window.reshape(-1), expected_targets(data_dir, "train"))


def test_order_is_deterministic_and_changes_each_epoch(data_dir):
    first = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=1)
    second = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=1)
    other_seed = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=2)
    assert np.array_equal(first.epoch_order(0), second.epoch_order(0))
    assert not np.array_equal(first.epoch_order(0), first.epoch_order(1))
    assert not np.array_equal(first.epoch_order(0), other_seed.epoch_order(0))
    assert torch.equal(first.next_batch(4)[0], second.next_batch(4)[0])


def test_state_dict_round_trip_continues_with_the_same_batches(data_dir, tmp_path):
    data = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=4)
    batch_size = 64  # 几批就跨过一个 epoch 的边界
    for _ in range(data.num_windows // batch_size - 1):
        data.next_batch(batch_size)
    state = data.state_dict()
    assert all(type(value) is int for value in state.values())
    torch.save(state, tmp_path / "state.pt")
    expected = [data.next_batch(batch_size) for _ in range(4)]
    assert data.epoch == 1  # 确实进入了下一个 epoch

    resumed = PackedPretrainData(data_dir, "train", SEQ_LEN, seed=4)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for (x, y), (x2, y2) in zip(expected, (resumed.next_batch(batch_size) for _ in range(4))):
        assert torch.equal(x, x2) and torch.equal(y, y2)

    with pytest.raises(TowerGPTError, match="seq_len"):
        PackedPretrainData(data_dir, "train", SEQ_LEN * 2).load_state_dict(state)


def test_eval_batches_are_sequential(data_dir):
    data = PackedPretrainData(data_dir, "val", SEQ_LEN)
    batches = list(data.iter_eval_batches(batch_size=8))
    assert sum(len(x) for x, _ in batches) == data.num_windows
    assert all(len(x) == 8 for x, _ in batches[:-1]) and 0 < len(batches[-1][0]) <= 8
    targets = np.concatenate([y.numpy().reshape(-1) for _, y in batches])
    assert np.array_equal(targets, expected_targets(data_dir, "val"))
    assert len(list(data.iter_eval_batches(batch_size=2, max_batches=3))) == 3
    again = next(data.iter_eval_batches(batch_size=8))  # 每次都从头开始
    assert torch.equal(again[0], batches[0][0])

    meta = load_meta(data_dir)
    assert data.characters_per_token == pytest.approx(meta["val"]["characters"] / meta["val"]["tokens"])


def test_split_too_short_for_seq_len(data_dir):
    tokens = load_meta(data_dir)["val"]["tokens"]
    with pytest.raises(TowerGPTError) as error:
        PackedPretrainData(data_dir, "val", seq_len=10_000)
    assert f"{tokens:,}" in str(error.value) and "max_seq_len" in str(error.value)


def test_not_a_data_directory(tmp_path):
    with pytest.raises(TowerGPTError, match="data prepare"):
        PackedPretrainData(tmp_path, "train", SEQ_LEN)
    with pytest.raises(TowerGPTError, match="not found"):
        PackedPretrainData(tmp_path / "nowhere", "train", SEQ_LEN)


def test_truncated_or_missing_shard(data_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(data_dir, broken)
    shard = broken / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(TowerGPTError) as error:
        PackedPretrainData(broken, "train", SEQ_LEN)
    assert "train_000001.bin" in str(error.value) and "truncated" in str(error.value)
    shard.unlink()
    with pytest.raises(TowerGPTError, match="missing"):
        PackedPretrainData(broken, "train", SEQ_LEN)
