"""偏好数据：`data prepare --format dpo` 的渲染与掩码、截断策略、坏记录，以及 DPOData 的批次布局。"""

import json
import re

import numpy as np
import pytest

from conftest import run_cli
from towergpt.chat_template import render_chat, render_message
from towergpt.data.data_format import load_meta
from towergpt.data.dpo_dataset import DPOData
from towergpt.data.prepare import prepare_dpo, prepare_sft
from towergpt.errors import TowerGPTError
from towergpt.model import IGNORE_INDEX
from towergpt.tokenizer import Tokenizer

MULTI_TURN = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "你好"},
              {"role": "assistant", "content": "你好！有什么可以帮你？"},
              {"role": "user", "content": "今天的新闻说了什么？"}]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")
    return path


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


def prepare(tmp_path, tokenizer_dir, records, **kwargs):
    source = write_jsonl(tmp_path / "pairs.jsonl", records)
    settings = dict(max_seq_len=128, workers=1, val_fraction=0.0, verbose=False)
    settings.update(kwargs)
    return prepare_dpo([str(source)], str(tokenizer_dir), str(tmp_path / "data"), **settings)


def answer_text(tokenizer, ids, mask):
    """掩码为 1 的 token 解码成文本（<|im_end|> 是控制符，解码时不出现）。"""
    return tokenizer.decode([int(t) for t, m in zip(ids, mask) if m])


def test_pairs_share_the_prompt_and_only_the_answers_carry_the_mask(tmp_path, news_tokenizer_dir, tokenizer):
    records = [{"prompt": "新年有什么打算？", "chosen": "努力工作，好好学习。", "rejected": "不知道。"},
               {"prompt": MULTI_TURN, "chosen": "经济在发展。", "rejected": "没有新闻。"}]
    summary = prepare(tmp_path, news_tokenizer_dir, records)
    assert summary["kind"] == "dpo" and summary["train"]["pairs"] == 2 and summary["skipped_records"] == 0
    data = DPOData(tmp_path / "data", "train", seq_len=128)
    for index, record in enumerate(records):
        (chosen, chosen_mask), (rejected, rejected_mask) = data.pair(index)
        prompt = record["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        expected_prompt = render_chat(tokenizer, messages).ids
        for ids, mask, answer in ((chosen, chosen_mask, record["chosen"]), (rejected, rejected_mask, record["rejected"])):
            assert list(ids) == expected_prompt + render_message(tokenizer, "assistant", answer).ids
            assert not mask[:len(expected_prompt)].any()   # 提示（含更早的助手发言）全是 0
            assert answer_text(tokenizer, ids, mask) == answer
            assert ids[mask == 1][-1] == tokenizer.im_end_id  # 回答以 <|im_end|> 结束，也算进去


def test_batches_put_chosen_above_rejected(tmp_path, news_tokenizer_dir, tokenizer):
    records = [{"prompt": f"第{i}题", "chosen": "好" * (i + 1), "rejected": "坏"} for i in range(5)]
    prepare(tmp_path, news_tokenizer_dir, records)
    data = DPOData(tmp_path / "data", "train", seq_len=128)
    batch = next(data.iter_eval_batches(4))
    assert batch["pairs"] == 4 and batch["inputs"].shape == batch["targets"].shape
    assert batch["inputs"].shape[0] == 8
    for row in range(4):
        chosen = batch["targets"][row][batch["targets"][row] != IGNORE_INDEX].tolist()
        rejected = batch["targets"][row + 4][batch["targets"][row + 4] != IGNORE_INDEX].tolist()
        assert tokenizer.decode(chosen) == "好" * (row + 1) and tokenizer.decode(rejected) == "坏"
        pads = batch["inputs"][row + 4] == tokenizer.pad_id   # 较短的 rejected 在右边补齐
        assert pads.any() and (batch["targets"][row + 4][pads] == IGNORE_INDEX).all()


def test_long_pairs_drop_old_turns_then_cut_answers_then_skip(tmp_path, news_tokenizer_dir, tokenizer):
    long_answer = "中国人民" * 30
    records = [
        {"prompt": MULTI_TURN, "chosen": "经济在发展。", "rejected": "没有。"},   # 丢掉最早的一轮就放得下
        {"prompt": "简短的问题", "chosen": long_answer, "rejected": "好"},         # 回答要截短
        {"prompt": "很长的问题" * 40, "chosen": "是", "rejected": "否"},           # 提示本身就放不下
    ]
    minimal = render_chat(tokenizer, [MULTI_TURN[0], MULTI_TURN[3]]).ids
    full = render_chat(tokenizer, MULTI_TURN).ids
    answer = render_message(tokenizer, "assistant", "经济在发展。").ids
    max_seq_len = len(minimal) + len(answer) + 3 - 1
    assert len(full) + len(answer) > max_seq_len + 1  # 第一对确实需要丢轮次
    summary = prepare(tmp_path, news_tokenizer_dir, records, max_seq_len=max_seq_len)
    assert summary["truncated_pairs"] == 1 and summary["dropped_messages"] == 2
    assert summary["truncated_answers"] == 1 and summary["too_long_pairs"] == 1
    assert summary["skipped_records"] == 0 and summary["train"]["pairs"] == 2
    skipped = (tmp_path / "data" / "skipped.txt").read_text(encoding="utf-8")
    assert "pairs.jsonl:3" in skipped and "太长" in skipped
    data = DPOData(tmp_path / "data", "train", seq_len=max_seq_len)
    for index in range(2):
        for ids, mask in data.pair(index):
            assert len(ids) <= max_seq_len + 1 and mask.sum() >= 1
    (chosen, chosen_mask), _ = data.pair(1)
    assert long_answer.startswith(answer_text(tokenizer, chosen, chosen_mask))   # 截短的是回答的末尾
    assert json.loads((tmp_path / "data" / "meta.json").read_text())["truncated_answers"] == 1


@pytest.mark.parametrize("record, field, reason", [
    ({"prompt": "问", "chosen": "答"}, "rejected", "缺少"),
    ({"prompt": "问", "chosen": "答", "rejected": 3}, "rejected", "字符串"),
    ({"prompt": "问", "chosen": "  ", "rejected": "不"}, "chosen", "空"),
    ({"prompt": "问", "chosen": "一样", "rejected": "一样"}, "rejected", "相同"),
    ({"prompt": {"text": "问"}, "chosen": "是", "rejected": "否"}, "prompt", "消息数组"),
    ({"prompt": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}],
      "chosen": "是", "rejected": "否"}, "prompt[1].content", "user 消息结尾"),
    ({"prompt": [{"role": "user", "content": "问"}, {"role": "user", "content": "再问"}],
      "chosen": "是", "rejected": "否"}, "prompt[1].content", "连续两条"),
    ({"prompt": [{"role": "robot", "content": "问"}], "chosen": "是", "rejected": "否"}, "prompt[0].role", "robot"),
])
def test_bad_records_name_file_line_and_field(tmp_path, news_tokenizer_dir, record, field, reason):
    good = {"prompt": "问", "chosen": "是", "rejected": "否"}
    with pytest.raises(TowerGPTError, match=rf"pairs.jsonl:2 字段/field '{re.escape(field)}'.*{reason}"):
        prepare(tmp_path, news_tokenizer_dir, [good, record])
    assert not (tmp_path / "data").exists()  # 出错时不留半成品


def test_dialogue_records_get_a_hint_and_skip_bad_keeps_going(tmp_path, news_tokenizer_dir):
    with pytest.raises(TowerGPTError, match="--format sft"):
        prepare(tmp_path, news_tokenizer_dir, [{"prompt": "问", "response": "答"}])
    records = [{"prompt": "问", "chosen": "是", "rejected": "否"}, "{broken json", {"prompt": "问", "chosen": "是"},
               {"prompt": "再问", "chosen": "对", "rejected": "错"}]
    summary = prepare(tmp_path, news_tokenizer_dir, records, skip_bad=True)
    assert summary["train"]["pairs"] == 2 and summary["skipped_records"] == 2
    lines = (tmp_path / "data" / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0].split(" ")[0] for line in lines] == [
        f"{tmp_path / 'pairs.jsonl'}:2", f"{tmp_path / 'pairs.jsonl'}:3"]


def test_split_keeps_pairs_whole_and_kinds_are_checked(tmp_path, news_tokenizer_dir):
    records = [{"prompt": f"问题{i}", "chosen": f"好答案{i}", "rejected": "坏"} for i in range(60)]
    summary = prepare(tmp_path, news_tokenizer_dir, records, val_fraction=0.2)
    train, val = summary["train"], summary["val"]
    assert train["pairs"] + val["pairs"] == 60 and val["pairs"] > 0
    assert load_meta(tmp_path / "data", "dpo")["val"]["chosen_len_file"] == "val_chosen_len.bin"
    data = DPOData(tmp_path / "data", "val", seq_len=128)
    for index in range(data.num_pairs):
        (chosen, _), (rejected, _) = data.pair(index)
        assert chosen[0] == rejected[0] and len(chosen) > len(rejected)   # 一对的两条都在这里，同一个提示
    with pytest.raises(TowerGPTError, match="max-seq-len 128"):
        DPOData(tmp_path / "data", "train", seq_len=64)

    sft_source = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "问", "response": "答"}] * 3)
    prepare_sft([str(sft_source)], str(news_tokenizer_dir), str(tmp_path / "sft"), max_seq_len=64, workers=1,
                val_fraction=0.0, verbose=False)
    with pytest.raises(TowerGPTError, match="--format dpo"):
        DPOData(tmp_path / "sft", "train", seq_len=64)


def test_corrupt_chosen_lengths_are_reported(tmp_path, news_tokenizer_dir):
    prepare(tmp_path, news_tokenizer_dir, [{"prompt": "问", "chosen": "是", "rejected": "否"}] * 2)
    path = tmp_path / "data" / "train_chosen_len.bin"
    np.array([1, 999], dtype="<i8").tofile(path)
    with pytest.raises(TowerGPTError, match="chosen"):
        DPOData(tmp_path / "data", "train", seq_len=128)


def test_cli_prepares_preference_data(tmp_path, news_tokenizer_dir):
    source = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "问", "chosen": "是", "rejected": "否"}] * 3)
    result = run_cli("data", "prepare", "--format", "dpo", "--input", source, "--tokenizer", news_tokenizer_dir,
                     "--out", tmp_path / "out", "--max-seq-len", 64, "--workers", 1, "--val-fraction", 0)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "偏好对 / pairs" in result.stdout
    assert load_meta(tmp_path / "out", "dpo")["max_seq_len"] == 64
    field = run_cli("data", "prepare", "--format", "dpo", "--input", source, "--tokenizer", news_tokenizer_dir,
                    "--out", tmp_path / "out2", "--field", "text")
    assert field.returncode == 2 and "--field" in field.stderr and "Traceback" not in field.stderr
