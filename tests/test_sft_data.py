"""`data prepare --format sft` 与 SFTData：meta 数字、存下的 token/掩码与 render_chat 一致、整轮截断、
太长的对话、进程数无关、批次里每个位置的标签、每个 epoch 不重不漏、续训、各种报错、命令行。"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SENTIMENT, run_cli
from towergpt.chat_template import fit_to_context, render_chat
from towergpt.cli import main as cli_main
from towergpt.data import pipeline as pipeline_module
from towergpt.data.data_format import load_meta
from towergpt.data.dialogue import record_to_messages
from towergpt.data.prepare import prepare, prepare_pretrain, prepare_sft
from towergpt.data.sft_dataset import SFTData
from towergpt.data.split import validation_mask
from towergpt.errors import TowerGPTError
from towergpt.model import IGNORE_INDEX
from towergpt.tokenizer import Tokenizer

SYSTEM = "你是一个判断商品评论情感的助手。"
MAX_SEQ_LEN = 160


def reviews():
    lines = (SENTIMENT / "neg.txt").read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line.strip() and len(line) < 60]


def make_records(count: int) -> list[dict]:
    """count 条对话，五种写法轮流出现：问答对、Alpaca（有/无 input）、OpenAI messages（两轮）、ShareGPT。"""
    texts = reviews()
    records = []
    for i in range(count):
        review, other = texts[i], texts[i + 500]
        kind = i % 5
        if kind == 0:
            records.append({"prompt": f"这条评论是正面还是负面？{review}", "response": "负面"})
        elif kind == 1:
            records.append({"instruction": "判断下面评论的情感", "input": review, "output": "负面", "system": SYSTEM})
        elif kind == 2:
            records.append({"instruction": f"复述：{review}", "input": "", "output": review})
        elif kind == 3:
            records.append({"messages": [{"role": "system", "content": SYSTEM},
                                         {"role": "user", "content": review}, {"role": "assistant", "content": "负面"},
                                         {"role": "user", "content": f"那这条呢？{other}"},
                                         {"role": "assistant", "content": "也是负面"}]})
        else:
            records.append({"conversations": [{"from": "human", "value": review}, {"from": "gpt", "value": "负面。"}]})
    return records


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def stored_conversations(out: Path, split: str) -> list[tuple[list[int], list[int]]]:
    """直接按文件布局读回一个划分：(token, 掩码) 一段一段。"""
    meta = load_meta(out, kind="sft")
    stats = meta[split]
    tokens = np.concatenate([np.fromfile(out / s["tokens_file"], dtype="<u2") for s in stats["shards"]])
    mask = np.concatenate([np.fromfile(out / s["mask_file"], dtype="u1") for s in stats["shards"]])
    index = np.fromfile(out / stats["index_file"], dtype="<i8")
    assert len(index) == stats["conversations"] + 1 and index[0] == 0 and index[-1] == len(tokens) == len(mask)
    return [(tokens[a:b].tolist(), mask[a:b].tolist()) for a, b in zip(index[:-1], index[1:])]


def expected_is_val(count: int, val_fraction: float) -> np.ndarray:
    """与 prepare 相同的规则：按对话序号哈希；验证集为空时最后一段进验证集。"""
    mask = validation_mask(0, count, 0, val_fraction)
    if count >= 2 and val_fraction > 0 and not mask.any():
        mask[-1] = True
    return mask


@pytest.fixture(scope="module")
def sft_dir(review_tokenizer_dir, tmp_path_factory):
    """80 段对话（五种写法），10% 验证集。"""
    root = tmp_path_factory.mktemp("sft")
    corpus = write_jsonl(root / "dialogues.jsonl", make_records(80))
    prepare_sft([corpus], review_tokenizer_dir, root / "data", max_seq_len=MAX_SEQ_LEN, workers=1, val_fraction=0.1,
                verbose=False)
    return root / "data"


# ---------------------------------------------------------------------------
# prepare_sft
# ---------------------------------------------------------------------------

def test_stored_tokens_and_mask_equal_render_chat(sft_dir, review_tokenizer):
    records = make_records(80)
    messages = [record_to_messages(record, "x") for record in records]
    is_val = expected_is_val(len(records), 0.1)
    meta = load_meta(sft_dir, kind="sft")
    for split, wanted in (("train", ~is_val), ("val", is_val)):
        expected = [render_chat(review_tokenizer, m) for m, keep in zip(messages, wanted) if keep]
        stored = stored_conversations(sft_dir, split)
        assert [ids for ids, _ in stored] == [r.ids for r in expected]
        assert [mask for _, mask in stored] == [r.loss_mask for r in expected]
        assert [review_tokenizer.decode(ids) for ids, _ in stored] == [review_tokenizer.decode(r.ids) for r in expected]
        stats = meta[split]
        kept = [m for m, keep in zip(messages, wanted) if keep]
        assert stats["conversations"] == len(expected) > 0
        assert stats["tokens"] == sum(len(r.ids) for r in expected)
        assert stats["assistant_tokens"] == sum(sum(r.loss_mask) for r in expected)
        assert stats["assistant_characters"] == sum(len(x["content"]) for m in kept for x in m if x["role"] == "assistant")
        assert stats["index_file"] == f"{split}_index.bin"
        assert stats["shards"] == [{"tokens_file": f"{split}_tokens_000000.bin", "mask_file": f"{split}_mask_000000.bin",
                                    "tokens": stats["tokens"], "conversations": stats["conversations"]}]

    assert meta["kind"] == "sft" and meta["max_seq_len"] == MAX_SEQ_LEN and meta["dtype"] == "uint16"
    assert (meta["im_start_id"], meta["im_end_id"], meta["pad_id"]) == (review_tokenizer.im_start_id,
                                                                        review_tokenizer.im_end_id,
                                                                        review_tokenizer.pad_id)
    assert meta["tokenizer_fingerprint"] == review_tokenizer.fingerprint
    assert Tokenizer.load(sft_dir / "tokenizer").fingerprint == review_tokenizer.fingerprint
    assert meta["formats"] == {"alpaca": 32, "conversations": 16, "messages": 16, "prompt_response": 16}
    assert (meta["truncated_conversations"], meta["dropped_messages"], meta["too_long_conversations"],
            meta["skipped_records"]) == (0, 0, 0, 0)
    assert not (sft_dir / "skipped.txt").exists()


def test_long_conversations_are_cut_by_whole_turns_or_skipped(tmp_path, review_tokenizer_dir, review_tokenizer):
    texts = reviews()
    turns = []
    for i in range(8):
        turns += [{"role": "user", "content": texts[i]}, {"role": "assistant", "content": texts[i + 100]}]
    long_chat = {"messages": [{"role": "system", "content": SYSTEM}, *turns]}
    huge = {"prompt": "".join(texts[:40]), "response": "好"}               # 只有一轮，一轮就放不下
    records = [make_records(1)[0], long_chat, huge, make_records(2)[1]]
    corpus = write_jsonl(tmp_path / "long.jsonl", records)
    out = tmp_path / "data"
    summary = prepare_sft([corpus], review_tokenizer_dir, out, max_seq_len=MAX_SEQ_LEN, workers=1, val_fraction=0.0,
                          verbose=False)

    messages = record_to_messages(long_chat, "x")
    kept, dropped = fit_to_context(review_tokenizer, messages, MAX_SEQ_LEN + 1)
    assert 0 < dropped < len(turns) - 1 and dropped % 2 == 0            # 真的截断了，而且是整轮
    assert kept[0]["role"] == "system" and kept[1:] == messages[1 + dropped:]  # system 保留，留下的是最近的整轮
    stored = stored_conversations(out, "train")
    assert len(stored) == 3
    assert stored[1] == (render_chat(review_tokenizer, kept).ids, render_chat(review_tokenizer, kept).loss_mask)
    assert len(stored[1][0]) <= MAX_SEQ_LEN + 1
    meta = load_meta(out)
    assert (meta["truncated_conversations"], meta["dropped_messages"]) == (1, dropped)
    assert meta["too_long_conversations"] == 1 and meta["skipped_records"] == 0
    assert summary["too_long_conversations"] == 1
    skipped = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(f"{corpus}:3\t") and "too long" in skipped[0]


def test_output_does_not_depend_on_worker_count(tmp_path, review_tokenizer_dir, monkeypatch):
    monkeypatch.setattr(pipeline_module, "BATCH_DOCUMENTS", 7)   # 多分几批，让进程池真的并行、乱序完成
    lines = [json.dumps(r, ensure_ascii=False) for r in make_records(120)]
    lines.insert(30, "{broken json")                              # 坏记录（--skip-bad）
    lines.insert(60, json.dumps({"messages": [{"role": "user", "content": "只有问题"}]}, ensure_ascii=False))
    lines.insert(90, json.dumps({"prompt": "长" * 400, "response": "好"}, ensure_ascii=False))   # 太长
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"data_w{workers}"
        prepare_sft([corpus], review_tokenizer_dir, out, max_seq_len=MAX_SEQ_LEN, workers=workers, val_fraction=0.1,
                    skip_bad=True, shard_tokens=1500, verbose=False)
        outputs.append(out)
    names = sorted(p.name for p in outputs[0].iterdir() if p.is_file() and p.name != "meta.json")
    assert names == sorted(p.name for p in outputs[1].iterdir() if p.is_file() and p.name != "meta.json")
    assert len([n for n in names if n.startswith("train_tokens_")]) > 3       # 真的切成了多个分片
    for name in names:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    metas = [load_meta(out) for out in outputs]
    for meta in metas:
        meta.pop("created")
    assert metas[0] == metas[1]
    meta = metas[0]
    assert meta["skipped_records"] == 2 and meta["too_long_conversations"] == 1
    skipped = (outputs[0] / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0].split(" ")[0] for line in skipped] == [f"{corpus}:{n}" for n in (31, 61, 91)]
    # 分片只在对话之间切开：每段对话都能完整读回
    assert all(s["tokens"] <= 1500 for s in meta["train"]["shards"])
    data = SFTData(outputs[0], "train", MAX_SEQ_LEN)
    stored = stored_conversations(outputs[0], "train")
    assert [data.conversation(i)[0].tolist() for i in range(data.num_conversations)] == [ids for ids, _ in stored]


def test_json_and_parquet_inputs(tmp_path, review_tokenizer_dir, review_tokenizer):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    records = make_records(10)
    as_json = tmp_path / "a.json"
    as_json.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    as_parquet = tmp_path / "b.parquet"
    chats = [{"messages": record_to_messages(r, "x")} for r in records]
    pq.write_table(pa.Table.from_pylist(chats), as_parquet)
    prepare_sft([as_json, as_parquet], review_tokenizer_dir, tmp_path / "data", max_seq_len=MAX_SEQ_LEN, workers=1,
                val_fraction=0.0, verbose=False)
    expected = [render_chat(review_tokenizer, c["messages"]).ids for c in chats] * 2
    assert [ids for ids, _ in stored_conversations(tmp_path / "data", "train")] == expected


def test_prepare_sft_errors(tmp_path, review_tokenizer_dir):
    text = tmp_path / "plain.txt"
    text.write_text("你好\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match="JSON/JSONL/Parquet"):
        prepare_sft([text], review_tokenizer_dir, tmp_path / "t", verbose=False)
    good = write_jsonl(tmp_path / "good.jsonl", make_records(3))
    with pytest.raises(TowerGPTError, match="max-seq-len"):
        prepare_sft([good], review_tokenizer_dir, tmp_path / "m", max_seq_len=0, verbose=False)
    too_long = write_jsonl(tmp_path / "long.jsonl", make_records(3))
    with pytest.raises(TowerGPTError, match="no usable conversations.*3 too long"):
        prepare_sft([too_long], review_tokenizer_dir, tmp_path / "l", max_seq_len=8, verbose=False)
    bad = write_jsonl(tmp_path / "bad.jsonl", [*make_records(2), {"messages": [{"role": "user", "content": "嗯"},
                                                                               {"role": "user", "content": "嗯"}]}])
    with pytest.raises(TowerGPTError, match=f"{bad}:3 字段/field 'messages\\[1\\].content'.*in a row"):
        prepare_sft([bad], review_tokenizer_dir, tmp_path / "b", workers=2, verbose=False)
    with pytest.raises(TowerGPTError, match="use --format sft"):
        prepare("dpo", inputs=[good], tokenizer_dir=review_tokenizer_dir, out_dir=tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "good.jsonl", "long.jsonl", "plain.txt"]


# ---------------------------------------------------------------------------
# SFTData
# ---------------------------------------------------------------------------

def test_batch_labels_at_every_position(sft_dir):
    data = SFTData(sft_dir, "train", MAX_SEQ_LEN, seed=3)
    indices = data.epoch_plan(0, 8)[0]
    x, y = data.next_batch(8)
    lengths = [len(data.conversation(int(i))[0]) for i in indices]
    assert x.dtype == y.dtype == torch.long and x.shape == y.shape == (len(indices), max(lengths) - 1)
    for row, index in enumerate(indices):
        ids, mask = (array.tolist() for array in data.conversation(int(index)))
        for t in range(x.shape[1]):
            if t < len(ids) - 1:
                assert x[row, t] == ids[t]
                assert y[row, t] == (ids[t + 1] if mask[t + 1] else IGNORE_INDEX)
            else:  # 右边补齐：x 是 pad，y 不计损失
                assert x[row, t] == data.pad_id and y[row, t] == IGNORE_INDEX
    assert (y != IGNORE_INDEX).sum() == sum(sum(data.conversation(int(i))[1].tolist()[1:]) for i in indices)


def test_every_conversation_once_per_epoch_and_ranks_disjoint(sft_dir):
    data = SFTData(sft_dir, "train", MAX_SEQ_LEN)
    n = data.num_conversations
    for epoch in (0, 1):
        plan = data.epoch_plan(epoch, 8)
        assert sorted(np.concatenate(plan).tolist()) == list(range(n))
        assert sum(len(batch) < 8 for batch in plan) <= 1                  # 至多一个不满的批
    assert not np.array_equal(np.concatenate(data.epoch_plan(0, 8)), np.concatenate(data.epoch_plan(1, 8)))
    ranks = [SFTData(sft_dir, "train", MAX_SEQ_LEN, rank=r, world_size=2).epoch_plan(0, 8) for r in (0, 1)]
    joined = [np.concatenate(plan).tolist() for plan in ranks]
    assert not set(joined[0]) & set(joined[1]) and sorted(joined[0] + joined[1]) == list(range(n))
    # 用 next_batch 走完一个 epoch：目标 token 总数等于这个划分全部助手 token（每段恰好一次）
    fresh = SFTData(sft_dir, "train", MAX_SEQ_LEN)
    # （每段的第一个 token 是 <s>，掩码为 0，不会成为目标，所以两者恰好相等）
    targets = sum(int((fresh.next_batch(8)[1] != IGNORE_INDEX).sum()) for _ in range(len(fresh.epoch_plan(0, 8))))
    assert targets == load_meta(sft_dir)["train"]["assistant_tokens"] and fresh.epoch == 0
    fresh.next_batch(8)
    assert fresh.epoch == 1 and fresh.batch_index == 1


def test_length_grouping_reduces_padding(sft_dir):
    data = SFTData(sft_dir, "train", MAX_SEQ_LEN)
    grouped = sum(len(b) * data.lengths[b].max() for b in data.epoch_plan(0, 4))
    order = np.random.default_rng(0).permutation(data.num_conversations)
    random = sum(len(b) * data.lengths[b].max() for b in np.array_split(order, len(data.epoch_plan(0, 4))))
    assert grouped < random


def test_state_round_trip_gives_identical_batches(sft_dir):
    data = SFTData(sft_dir, "train", MAX_SEQ_LEN, seed=5)
    for _ in range(11):                                   # 72 段对话 / 每批 6 = 12 批：第 13 批进入 epoch 1
        data.next_batch(6)
    state = data.state_dict()
    assert all(type(value) is int for value in state.values())
    expected = [data.next_batch(6) for _ in range(4)]
    assert data.epoch == 1
    resumed = SFTData(sft_dir, "train", MAX_SEQ_LEN, seed=5)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected, [resumed.next_batch(6) for _ in range(4)]):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # 改了批大小：按新批大小重新计划，位置按“读过的对话数”换算
    resumed.next_batch(4)
    assert resumed.state_dict()["batch_size"] == 4
    with pytest.raises(TowerGPTError, match="conversations"):
        SFTData(sft_dir, "val", MAX_SEQ_LEN).load_state_dict(state)


def test_eval_batches_and_characters_per_token(sft_dir):
    data = SFTData(sft_dir, "val", MAX_SEQ_LEN)
    batches = list(data.iter_eval_batches(3))
    assert sum(len(x) for x, _ in batches) == data.num_conversations
    assert len(list(data.iter_eval_batches(3, max_batches=1))) == 1
    first = batches[0][0][0]
    ids = data.conversation(0)[0]
    assert first[:len(ids) - 1].tolist() == ids[:-1].tolist()
    stats = load_meta(sft_dir)["val"]
    assert data.characters_per_token == stats["assistant_characters"] / stats["assistant_tokens"]


def test_sft_data_errors(sft_dir, tmp_path, review_tokenizer_dir):
    with pytest.raises(TowerGPTError, match=f"--max-seq-len {MAX_SEQ_LEN - 1}"):
        SFTData(sft_dir, "train", MAX_SEQ_LEN - 1)
    SFTData(sft_dir, "train", MAX_SEQ_LEN + 100)                      # 模型更长没问题

    corpus = write_jsonl(tmp_path / "news.jsonl", [{"text": "第一篇文档"}, {"text": "第二篇文档"}])
    prepare_pretrain([corpus], review_tokenizer_dir, tmp_path / "pretrain", workers=1, verbose=False)
    with pytest.raises(TowerGPTError, match="pretraining data.*--format sft"):
        SFTData(tmp_path / "pretrain", "train", MAX_SEQ_LEN)

    no_val = tmp_path / "no_val"
    prepare_sft([write_jsonl(tmp_path / "d.jsonl", make_records(5))], review_tokenizer_dir, no_val,
                max_seq_len=MAX_SEQ_LEN, val_fraction=0.0, workers=1, verbose=False)
    with pytest.raises(TowerGPTError, match="val split holds no conversations"):
        SFTData(no_val, "val", MAX_SEQ_LEN)

    with open(no_val / "train_mask_000000.bin", "ab") as handle:      # 文件被改动：大小对不上
        handle.write(b"\x00")
    with pytest.raises(TowerGPTError, match="larger than recorded"):
        SFTData(no_val, "train", MAX_SEQ_LEN)


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------

def test_cli_prepare_sft(tmp_path, review_tokenizer_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_records(20))
    out = tmp_path / "data"
    result = run_cli("data", "prepare", "--format", "sft", "--max-seq-len", "96", "--input", corpus,
                     "--tokenizer", review_tokenizer_dir, "--out", out, "--workers", "2", "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr
    assert "conversations" in result.stdout
    meta = load_meta(out, kind="sft")
    kept = meta["train"]["conversations"] + meta["val"]["conversations"]
    assert meta["max_seq_len"] == 96 and kept + meta["too_long_conversations"] == 20    # 一条不少：要么写了，要么记了

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_records(1)[0], ensure_ascii=False) + '\n{"question": "x"}\n', encoding="utf-8")
    result = run_cli("data", "prepare", "--format", "sft", "--input", bad, "--tokenizer", review_tokenizer_dir,
                     "--out", tmp_path / "bad_out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("错误") and f"{bad}:2" in lines[0], result.stderr
    assert "'question'" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "bad_out").exists()


@pytest.mark.parametrize("args, message", [
    (["--format", "sft", "--field", "body"], "--field"),
    (["--max-seq-len", "64"], "--max-seq-len"),
])
def test_cli_rejects_options_of_the_other_format(args, message, tmp_path, review_tokenizer_dir, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_records(2))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "prepare", "--input", str(corpus), "--tokenizer", str(review_tokenizer_dir),
                  "--out", str(tmp_path / "o"), *args])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("错误") and message in error
