"""对话记录的解析：四种格式得到同样的消息；每种不合格的对话都报出位置、字段和原因；iter_records 读三种文件。"""

from __future__ import annotations

import json

import pytest

from towergpt.data.dialogue import DialogueError, parse_record, record_to_messages
from towergpt.data.readers import iter_records, record_location
from towergpt.errors import TowerGPTError

LOC = "data.jsonl:7"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


# ---------------------------------------------------------------------------
# 四种格式 -> 同一种内部格式
# ---------------------------------------------------------------------------

ONE_TURN = [user("这条评论是正面还是负面？质量不错"), assistant("正面")]
SAME_ONE_TURN = {
    "prompt_response": {"prompt": "这条评论是正面还是负面？质量不错", "response": "正面"},
    "alpaca_no_input": {"instruction": "这条评论是正面还是负面？质量不错", "input": "", "output": "正面"},
    "alpaca_missing_input": {"instruction": "这条评论是正面还是负面？质量不错", "output": "正面"},
    "alpaca_null_input": {"instruction": "这条评论是正面还是负面？质量不错", "input": None, "output": "正面"},
    "messages": {"messages": ONE_TURN, "id": 17},
    "conversations": {"conversations": [{"from": "human", "value": "这条评论是正面还是负面？质量不错"},
                                        {"from": "gpt", "value": "正面"}]},
    "conversations_role_keys": {"conversations": ONE_TURN},
    "messages_from_keys": {"messages": [{"from": "Human", "value": "这条评论是正面还是负面？质量不错"},
                                        {"from": " BOT ", "value": "正面"}]},
    "model_role": {"messages": [user("这条评论是正面还是负面？质量不错"), {"role": "model", "content": "正面"}]},
    "empty_system_is_dropped": {"system": "  ", "prompt": "这条评论是正面还是负面？质量不错", "response": "正面"},
    "empty_system_message_is_dropped": {"messages": [system(""), *ONE_TURN]},
}


@pytest.mark.parametrize("name", sorted(SAME_ONE_TURN))
def test_every_format_gives_the_same_messages(name):
    assert record_to_messages(SAME_ONE_TURN[name], LOC) == ONE_TURN


def test_alpaca_input_is_appended_after_a_blank_line():
    record = {"instruction": "判断下面评论的情感", "input": "质量不错\n物流也快", "output": "正面"}
    assert record_to_messages(record, LOC) == [user("判断下面评论的情感\n\n质量不错\n物流也快"), assistant("正面")]


WITH_SYSTEM = [system("你是一个情感分析助手。"), *ONE_TURN]
SAME_WITH_SYSTEM = {
    "prompt_response": {"system": "你是一个情感分析助手。", **SAME_ONE_TURN["prompt_response"]},
    "alpaca": {"system": "你是一个情感分析助手。", **SAME_ONE_TURN["alpaca_no_input"]},
    "messages_system_message": {"messages": WITH_SYSTEM},
    "messages_top_level_system": {"system": "你是一个情感分析助手。", "messages": ONE_TURN},
    "sharegpt_top_level_system": {"system": "你是一个情感分析助手。", **SAME_ONE_TURN["conversations"]},
    "sharegpt_system_turn": {"conversations": [{"from": "system", "value": "你是一个情感分析助手。"},
                                               *SAME_ONE_TURN["conversations"]["conversations"]]},
}


@pytest.mark.parametrize("name", sorted(SAME_WITH_SYSTEM))
def test_system_prompt_variants(name):
    assert record_to_messages(SAME_WITH_SYSTEM[name], LOC) == WITH_SYSTEM


def test_multi_turn_and_format_names():
    turns = [user("你好"), assistant("你好！"), user("今天天气怎样？"), assistant("我看不到天气。")]
    sharegpt = [{"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]} for m in turns]
    assert parse_record({"messages": turns}, LOC) == ("messages", turns)
    assert parse_record({"conversations": sharegpt}, LOC) == ("conversations", turns)
    assert parse_record(SAME_ONE_TURN["prompt_response"], LOC)[0] == "prompt_response"
    assert parse_record(SAME_ONE_TURN["alpaca_no_input"], LOC)[0] == "alpaca"
    # 内容原样保留：首尾空白、换行都不动
    assert record_to_messages({"prompt": " 问\n", "response": "答 \n"}, LOC) == [user(" 问\n"), assistant("答 \n")]


# ---------------------------------------------------------------------------
# 不合格的对话：一行消息，含位置、字段、原因
# ---------------------------------------------------------------------------

OK = ONE_TURN
INVALID = {
    "not_an_object": (["prompt", "response"], None, "array"),
    "unknown_format": ({"text": "你好", "id": 3}, None, "unknown dialogue format"),
    "unknown_format_lists_keys": ({"question": "你好", "answer": "好"}, None, "'question', 'answer'"),
    "null_field_is_absent": ({"prompt": "你好", "response": None}, None, "'response'(null)"),
    "preference_data": ({"prompt": "你好", "chosen": "好", "rejected": "坏"}, None, "--format dpo"),
    "two_formats": ({"prompt": "你好", "response": "好", "messages": OK}, None, "several formats"),
    "prompt_not_string": ({"prompt": 42, "response": "好"}, "prompt", "number"),
    "alpaca_input_not_string": ({"instruction": "翻译", "input": ["a"], "output": "好"}, "input", "array"),
    "messages_not_a_list": ({"messages": "你好"}, "messages", "array of messages"),
    "message_not_an_object": ({"messages": [user("你好"), "好"]}, "messages[1]", "expected an object"),
    "content_not_string": ({"messages": [user("你好"), {"role": "assistant", "content": [{"type": "text"}]}]},
                           "messages[1].content", "array"),
    "content_null": ({"messages": [user("你好"), {"role": "assistant", "content": None}]},
                     "messages[1].content", "null"),
    "role_missing": ({"messages": [{"content": "你好"}, assistant("好")]}, "messages[0]", "'role' / 'from'"),
    "role_not_string": ({"messages": [{"role": 1, "content": "你好"}, assistant("好")]}, "messages[0].role", "number"),
    "unknown_role": ({"messages": [user("你好"), {"role": "tool", "content": "{}"}]}, "messages[1].role", "'tool'"),
    "empty_conversation": ({"messages": []}, None, "empty conversation"),
    "only_system": ({"messages": [system("你是助手")]}, None, "empty conversation"),
    "system_not_first": ({"messages": [user("你好"), system("你是助手"), assistant("好")]},
                         "messages[1].content", "may only come first"),
    "two_systems": ({"messages": [system("甲"), system("乙"), *OK]}, "messages[1].content", "may only come first"),
    "top_level_and_message_system": ({"system": "甲", "messages": [system("乙"), *OK]}, "system", "both"),
    "system_not_string": ({"system": 1, **SAME_ONE_TURN["prompt_response"]}, "system", "number"),
    "starts_with_assistant": ({"messages": [assistant("好"), user("你好"), assistant("好")]},
                              "messages[0].content", "first message"),
    "starts_with_assistant_after_system": ({"messages": [system("甲"), assistant("好")]},
                                           "messages[1].content", "first message"),
    "two_users_in_a_row": ({"messages": [user("一"), user("二"), assistant("好")]},
                           "messages[1].content", "two user messages in a row"),
    "two_assistants_in_a_row": ({"messages": [user("一"), assistant("二"), assistant("三")]},
                                "messages[2].content", "two assistant messages in a row"),
    "ends_with_user": ({"messages": [user("一"), assistant("二"), user("三")]},
                       "messages[2].content", "must end with the assistant"),
    "single_user_message": ({"messages": [user("一")]}, "messages[0].content", "must end with the assistant"),
    "empty_assistant": ({"prompt": "你好", "response": ""}, "response", "assistant message is empty"),
    "blank_assistant": ({"messages": [user("你好"), assistant(" \n\u3000")]}, "messages[1].content",
                        "assistant message is empty"),
    "empty_user": ({"messages": [user(""), assistant("好")]}, "messages[0].content", "user message is empty"),
    "empty_alpaca_user": ({"instruction": " ", "input": "", "output": "好"}, "instruction", "user message is empty"),
    "lone_surrogate": ({"prompt": "你好\ud800", "response": "好"}, "prompt", "lone surrogate"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_conversation_names_location_field_and_reason(name):
    record, field, reason = INVALID[name]
    with pytest.raises(DialogueError) as info:
        record_to_messages(record, LOC)
    error = info.value
    message = str(error)
    assert isinstance(error, TowerGPTError)
    assert message.startswith(LOC) and reason in message and "\n" not in message, message
    if field is not None:
        assert f"字段/field '{field}'" in message, message
    assert error.location in message and error.reason in message   # --skip-bad 时分两列写进 skipped.txt


# ---------------------------------------------------------------------------
# iter_records：jsonl / json / parquet 的整条记录，坏记录照常报位置
# ---------------------------------------------------------------------------

def test_iter_records_jsonl_with_bad_records(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"".join([
        json.dumps({"prompt": "一", "response": "二"}, ensure_ascii=False).encode() + b"\n",
        b"\n",                                   # 空行：跳过，不算坏记录
        b'{"prompt": "broken",\n',               # 第 3 行：坏 JSON
        b'["not", "an", "object"]\n',            # 第 4 行：不是对象
        '{"prompt": "坏"}\n'.encode("gbk"),      # 第 5 行：不是 UTF-8
        json.dumps({"messages": OK}, ensure_ascii=False).encode() + b"\n",
    ]))
    with pytest.raises(TowerGPTError, match=f"{path}:3.*JSON"):
        list(iter_records(path))
    reports = []
    records = list(iter_records(path, skip_bad=True, on_bad=lambda where, why: reports.append((where, why))))
    assert records == [(1, {"prompt": "一", "response": "二"}), (6, {"messages": OK})]
    assert [where for where, _ in reports] == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "array" in reports[1][1] and "UTF-8" in reports[2][1]
    assert record_location(path, 6) == f"{path}:6"


def test_iter_records_json_array(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"prompt": "一", "response": "二"}, 5, {"messages": OK}], ensure_ascii=False),
                    encoding="utf-8")
    with pytest.raises(TowerGPTError, match="record 2.*number"):
        list(iter_records(path))
    assert list(iter_records(path, skip_bad=True)) == [(1, {"prompt": "一", "response": "二"}), (3, {"messages": OK})]
    assert record_location(path, 3) == f"{path} 记录/record 3"


def test_iter_records_parquet_nested_columns(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "d.parquet"
    rows = [{"conversations": [{"from": "human", "value": f"问{i}"}, {"from": "gpt", "value": f"答{i}"}],
             "system": None if i % 2 else "系统"} for i in range(2500)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=1000)
    records = list(iter_records(path))
    assert len(records) == 2500 and records[0] == (1, rows[0]) and records[-1] == (2500, rows[-1])
    assert record_location(path, 9) == f"{path} 行/row 9"
    # null 的 system 视同没有；有值的 system 成为第一条消息
    assert record_to_messages(records[1][1], "x") == [user("问1"), assistant("答1")]
    assert record_to_messages(records[0][1], "x") == [system("系统"), user("问0"), assistant("答0")]


def test_iter_records_rejects_plain_text(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("你好\n", encoding="utf-8")
    with pytest.raises(TowerGPTError, match="JSON/JSONL/Parquet"):
        iter_records(path)  # 调用时立即报错，不必等到迭代
