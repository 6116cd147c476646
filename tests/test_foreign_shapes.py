"""别人发布的数据原样可用 / Other projects' published data, as it is.

MiniMind、Alpaca（带 history）、BELLE、Firefly 的记录（按它们发布的样子逐字写成 JSON 行），经过与
`towergpt data prepare` 相同的函数，得到的 token 和损失掩码与同一段对话写成我们的 {"messages": [...]}
时逐个相同：外来的形状与原生的形状表达的是同一件事。偏好数据：MiniMind 的“两段对话”
{"chosen": [...], "rejected": [...]} 与显式的 {"prompt", "chosen", "rejected"} 相同。
调用工具的对话、不认识的角色、说不清提示的偏好对：一条错误，写明文件、行号和字段。
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import run_cli
from towergpt.data.data_format import load_meta
from towergpt.data.dialogue import DialogueError, parse_record
from towergpt.data.prompt_records import parse_preference
from towergpt.data.dpo_dataset import DPOData
from towergpt.data.prepare import prepare_dpo, prepare_pretrain, prepare_sft
from towergpt.data.sft_dataset import SFTData
from towergpt.errors import TowerGPTError
from towergpt.tokenizer import Tokenizer

MAX_SEQ_LEN = 256


def system(text):
    return {"role": "system", "content": text}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_lines(path, lines):
    """逐字写出 JSON 行（不经过 json.dumps：测试的就是别人文件里的原样）。"""
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def native_lines(conversations):
    """同样的对话写成我们的原生形状 {"messages": [...]}。"""
    return [json.dumps({"messages": messages}, ensure_ascii=False) for messages in conversations]


def prepared_sft(tmp_path, tokenizer_dir, name, lines, **kwargs):
    """把这些行写成 name.jsonl，走 prepare_sft（`data prepare --format sft` 调的就是它），读回每段的 (ids, 掩码)。"""
    source = write_lines(tmp_path / f"{name}.jsonl", lines)
    out = tmp_path / f"{name}_data"
    summary = prepare_sft([str(source)], str(tokenizer_dir), str(out), max_seq_len=MAX_SEQ_LEN, workers=1,
                          val_fraction=0.0, verbose=False, **kwargs)
    data = SFTData(out, "train", seq_len=MAX_SEQ_LEN)
    sequences = [tuple(array.tolist() for array in data.conversation(index)) for index in range(data.num_conversations)]
    return summary, sequences


def prepared_dpo(tmp_path, tokenizer_dir, name, lines, **kwargs):
    """同上，走 prepare_dpo，读回每对的 ((chosen ids, 掩码), (rejected ids, 掩码))。"""
    source = write_lines(tmp_path / f"{name}.jsonl", lines)
    out = tmp_path / f"{name}_data"
    summary = prepare_dpo([str(source)], str(tokenizer_dir), str(out), max_seq_len=MAX_SEQ_LEN, workers=1,
                          val_fraction=0.0, verbose=False, **kwargs)
    data = DPOData(out, "train", seq_len=MAX_SEQ_LEN)
    pairs = [tuple(tuple(array.tolist() for array in side) for side in data.pair(index))
             for index in range(data.num_pairs)]
    return summary, pairs


# ---------------------------------------------------------------------------
# 对话（SFT）：每种发布的形状 == 同一段对话的 {"messages": [...]}
# ---------------------------------------------------------------------------

# 名字 -> (发布的原样 JSON 行, 同样的对话写成消息列表, meta.json 里的格式名)
SFT_SHAPES = {
    # MiniMind 的 sft_t2t_mini.jsonl / sft_mini_512.jsonl：conversations + role/content。
    # system 上的 tools、助手上的 reasoning_content、空的 tool_calls（null、"[]"）都不看；
    # 写在正文里的 <think>…</think> 是正文的一部分，原样保留。
    "minimind_sft": ([
        r'{"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！有什么可以帮你？"}, {"role": "user", "content": "再见"}, {"role": "assistant", "content": "再见！"}]}',
        r'{"conversations": [{"role": "system", "content": "你是 MiniMind，一个小巧但有用的语言模型。", "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"get_current_time\", \"description\": \"获取当前时间\", \"parameters\": {}}}]"}, {"role": "user", "content": "长城有多长？"}, {"role": "assistant", "content": "明长城全长约八千八百公里。", "reasoning_content": "用户问长城的长度，这是常识，不需要调用工具。", "tool_calls": "[]"}]}',
        r'{"conversations": [{"role": "system", "content": "你是一个乐于助人的助手。", "tools": null, "reasoning_content": null, "tool_calls": null}, {"role": "user", "content": "一加一等于几？", "tools": null, "reasoning_content": null, "tool_calls": null}, {"role": "assistant", "content": "<think>\n很简单。\n</think>\n\n一加一等于二。", "tools": null, "reasoning_content": null, "tool_calls": null}]}',
    ], [
        [user("你好"), assistant("你好！有什么可以帮你？"), user("再见"), assistant("再见！")],
        [system("你是 MiniMind，一个小巧但有用的语言模型。"), user("长城有多长？"), assistant("明长城全长约八千八百公里。")],
        [system("你是一个乐于助人的助手。"), user("一加一等于几？"), assistant("<think>\n很简单。\n</think>\n\n一加一等于二。")],
    ], {"conversations": 3}),
    # Alpaca（LLaMA-Factory 的写法）：system + history 里更早的几轮 [问, 答]，再是这一问
    "alpaca_history": ([
        r'{"instruction": "那它有多长？", "input": "", "output": "明长城全长约八千八百公里。", "system": "你是一位历史老师。", "history": [["长城是什么？", "长城是中国古代的军事防御工程。"], ["它是谁修的？", "历代都有修筑，现存的大多是明代修的。"]]}',
        r'{"instruction": "判断下面评论的情感。", "input": "质量很好，物流也快。", "output": "正面", "history": []}',
    ], [
        [system("你是一位历史老师。"), user("长城是什么？"), assistant("长城是中国古代的军事防御工程。"),
         user("它是谁修的？"), assistant("历代都有修筑，现存的大多是明代修的。"),
         user("那它有多长？"), assistant("明长城全长约八千八百公里。")],
        [user("判断下面评论的情感。\n\n质量很好，物流也快。"), assistant("正面")],
    ], {"alpaca": 2}),
    # BELLE 的单轮数据（train_0.5M_CN 等）：instruction / input / output
    "belle_single": ([
        r'{"instruction": "把下面这句话翻译成英文。\n今天天气很好。", "input": "", "output": "The weather is very nice today."}',
    ], [
        [user("把下面这句话翻译成英文。\n今天天气很好。"), assistant("The weather is very nice today.")],
    ], {"alpaca": 1}),
    # BELLE 的多轮数据（train_3.5M_CN）：id + conversations，from 是 human / assistant
    "belle_multiturn": ([
        r'{"id": "66623028", "conversations": [{"from": "human", "value": "我想学做红烧肉，第一步做什么？"}, {"from": "assistant", "value": "先把五花肉切块，冷水下锅焯水。"}, {"from": "human", "value": "然后呢？"}, {"from": "assistant", "value": "炒糖色，再放肉翻炒上色。"}]}',
    ], [
        [user("我想学做红烧肉，第一步做什么？"), assistant("先把五花肉切块，冷水下锅焯水。"),
         user("然后呢？"), assistant("炒糖色，再放肉翻炒上色。")],
    ], {"conversations": 1}),
    # Firefly：conversation 里每个元素是一整轮 {"human", "assistant"}；可带顶层 system
    "firefly": ([
        r'{"conversation_id": 1, "category": "Brainstorming", "conversation": [{"human": "如何保障工作中遵循正确的安全准则？", "assistant": "了解相关的安全规定，并接受必要的培训。"}, {"human": "如何应对突发紧急情况？", "assistant": "保持冷静，评估情况，按应急计划行动。"}], "dataset": "moss"}',
        r'{"conversation_id": 2, "category": "Brainstorming", "conversation": [{"human": "你是谁？", "assistant": "我是 Firefly。"}], "system": "你是一个名为 Firefly 的助手。"}',
    ], [
        [user("如何保障工作中遵循正确的安全准则？"), assistant("了解相关的安全规定，并接受必要的培训。"),
         user("如何应对突发紧急情况？"), assistant("保持冷静，评估情况，按应急计划行动。")],
        [system("你是一个名为 Firefly 的助手。"), user("你是谁？"), assistant("我是 Firefly。")],
    ], {"firefly": 2}),
}


@pytest.mark.parametrize("name", sorted(SFT_SHAPES))
def test_published_dialogue_shapes_give_the_same_tokens_and_masks_as_messages(name, tmp_path, news_tokenizer_dir):
    published, conversations, formats = SFT_SHAPES[name]
    summary, sequences = prepared_sft(tmp_path, news_tokenizer_dir, name, published)
    native_summary, native = prepared_sft(tmp_path, news_tokenizer_dir, "native", native_lines(conversations))
    assert sequences == native
    assert summary["formats"] == formats and native_summary["formats"] == {"messages": len(conversations)}
    assert summary["skipped_records"] == 0 and summary["train"]["conversations"] == len(conversations)
    assert all(1 in mask for _, mask in sequences)   # 每段都有要学的助手 token


# MiniMind 发布的 tool use 样本（与它的 README 里的一样）：tools 在 system 上，tool_calls 在助手上，之后是 tool 消息
MINIMIND_TOOL_USE = r'{"conversations": [{"role": "system", "content": "# Tools ...", "tools": "[{\"type\": \"function\", \"function\": {\"name\": \"translate_text\"}}]"}, {"role": "user", "content": "把\u0027你好世界\u0027翻译成english"}, {"role": "assistant", "content": "", "tool_calls": "[{\"name\":\"translate_text\",\"arguments\":{\"text\":\"你好世界\",\"target_language\":\"english\"}}]"}, {"role": "tool", "content": "{\"translated_text\":\"Hello World\"}"}, {"role": "assistant", "content": "Hello World"}]}'
# tool_calls 也可以是 JSON 对象（而不是字符串），助手在调用之前也可以先说一句
TOOL_CALLS_AS_OBJECTS = r'{"conversations": [{"role": "user", "content": "现在几点？"}, {"role": "assistant", "content": "我查一下。", "tool_calls": [{"name": "get_current_time", "arguments": {"timezone": "Asia/Shanghai"}}]}, {"role": "tool", "content": "{\"datetime\": \"2026-03-15 17:18:22\"}"}, {"role": "assistant", "content": "现在是下午五点十八分。"}]}'


def test_tool_use_conversations_are_one_clear_error_or_skipped_and_listed(tmp_path, news_tokenizer_dir):
    plain = SFT_SHAPES["minimind_sft"][0]
    lines = [plain[0], MINIMIND_TOOL_USE, TOOL_CALLS_AS_OBJECTS, plain[1]]
    with pytest.raises(TowerGPTError) as info:
        prepared_sft(tmp_path, news_tokenizer_dir, "tools", lines)
    message = str(info.value)
    assert "\n" not in message and "--skip-bad" in message and "tool" in message
    assert message.startswith(f"{tmp_path / 'tools.jsonl'}:2 字段/field 'conversations[2].tool_calls'"), message
    assert not (tmp_path / "tools_data").exists()   # 出错时不留半成品

    # --skip-bad：调用工具的两段跳过、逐条记进 skipped.txt；其余两段与原生形状逐个相同
    summary, sequences = prepared_sft(tmp_path, news_tokenizer_dir, "tools", lines, skip_bad=True)
    _, native = prepared_sft(tmp_path, news_tokenizer_dir, "native",
                             native_lines([SFT_SHAPES["minimind_sft"][1][0], SFT_SHAPES["minimind_sft"][1][1]]))
    assert sequences == native and summary["skipped_records"] == 2
    skipped = (tmp_path / "tools_data" / "skipped.txt").read_text(encoding="utf-8").splitlines()
    source = tmp_path / "tools.jsonl"
    assert [line.split(" ")[0] for line in skipped] == [f"{source}:2", f"{source}:3"]
    assert all("tool-use conversation" in line for line in skipped)


@pytest.mark.parametrize("message, field", [
    ({"role": "tool", "content": "{}"}, "conversations[1].role"),
    ({"role": "function", "content": "{}"}, "conversations[1].role"),
    ({"from": "observation", "value": "{}"}, "conversations[1].from"),
    ({"role": "assistant", "content": None, "tool_calls": "[{\"name\": \"f\"}]"}, "conversations[1].tool_calls"),
    ({"role": "assistant", "content": "好", "function_call": {"name": "f", "arguments": "{}"}},
     "conversations[1].function_call"),
])
def test_every_tool_marker_names_its_field(message, field):
    record = {"conversations": [user("你好"), message, assistant("好的")]}
    with pytest.raises(DialogueError, match=rf"x.jsonl:1 字段/field '{re.escape(field)}'.*tool-use conversation"):
        parse_record(record, "x.jsonl:1")


@pytest.mark.parametrize("tool_calls", [None, "", "[]", " [] ", []])
def test_empty_tool_calls_are_ignored(tool_calls):
    record = {"conversations": [user("你好"), {"role": "assistant", "content": "你好！", "tool_calls": tool_calls}]}
    assert parse_record(record, "x")[1] == [user("你好"), assistant("你好！")]


@pytest.mark.parametrize("line, field, reason", [
    (r'{"conversations": [{"role": "user", "content": "你好"}, {"role": "robot", "content": "你好！"}]}',
     "conversations[1].role", "unknown role 'robot'"),
    (r'{"conversation_id": 3, "category": "QA", "conversation": [{"human": "你好", "assistant": "你好！"}, {"human": "在吗？"}]}',
     "conversation[1]", "lacks 'assistant'"),
    (r'{"conversation_id": 4, "conversation": [{"human": "你好", "assistant": null}]}',
     "conversation[0].assistant", "null"),
    (r'{"conversation_id": 5, "conversation": "你好"}', "conversation", "array of turns"),
    (r'{"instruction": "再见", "output": "再见！", "history": [["只有问题"]]}', "history[0]", "[question, answer]"),
    (r'{"instruction": "再见", "output": "再见！", "history": [["你好", 1]]}', "history[0][1]", "number"),
    (r'{"instruction": "再见", "output": "再见！", "history": [["你好", ""]]}', "history[0][1]", "empty"),
    (r'{"instruction": "再见", "output": "再见！", "history": "你好"}', "history", "array"),
])
def test_bad_published_records_name_file_line_and_field(tmp_path, news_tokenizer_dir, line, field, reason):
    good = SFT_SHAPES["minimind_sft"][0][0]
    with pytest.raises(TowerGPTError) as info:
        prepared_sft(tmp_path, news_tokenizer_dir, "bad", [good, line])
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}:2 字段/field '{field}'"), message
    assert reason in message and "\n" not in message


def test_a_record_with_conversation_and_conversations_is_ambiguous():
    record = {"conversation": [{"human": "你好", "assistant": "好"}], "conversations": [user("你好"), assistant("好")]}
    with pytest.raises(DialogueError, match="several formats"):
        parse_record(record, "x")


def test_minimind_pretraining_text_is_native(tmp_path, news_tokenizer_dir):
    """MiniMind 的 pretrain_hq.jsonl / pretrain_t2t_mini.jsonl 就是 {"text": ...}：每篇 [bos] + 文本 + [eos]。"""
    lines = [r'{"text": "如何才能摆脱拖延症？治愈拖延症并不容易，但以下建议可能有所帮助。"}',
             r'{"text": "清晨的阳光透过窗帘洒进房间，桌上的书页被风轻轻翻动。"}']
    source = write_lines(tmp_path / "pretrain_hq.jsonl", lines)
    prepare_pretrain([str(source)], str(news_tokenizer_dir), str(tmp_path / "pretrain"), workers=1,
                     val_fraction=0.0, verbose=False)
    tokenizer = Tokenizer.load(news_tokenizer_dir)
    expected = [token for line in lines
                for token in [tokenizer.bos_id, *tokenizer.encode(json.loads(line)["text"]), tokenizer.eos_id]]
    meta = load_meta(tmp_path / "pretrain", kind="pretrain")
    shards = meta["train"]["shards"]
    stored = [np.fromfile(tmp_path / "pretrain" / shard["file"], dtype=meta["dtype"]) for shard in shards]
    assert np.concatenate(stored).tolist() == expected


# ---------------------------------------------------------------------------
# 偏好数据（DPO）：MiniMind 的两段对话 == 显式的 {"prompt", "chosen", "rejected"}
# ---------------------------------------------------------------------------

# MiniMind 的 dpo.jsonl：chosen、rejected 各是一段完整的对话（键的顺序也照它：content 在 role 前面）
MINIMIND_DPO = [
    r'{"chosen": [{"content": "请用一句话介绍长城。", "role": "user"}, {"content": "长城是中国古代绵延万里的军事防御工程。", "role": "assistant"}], "rejected": [{"content": "请用一句话介绍长城。", "role": "user"}, {"content": "不知道。", "role": "assistant"}]}',
    r'{"chosen": [{"content": "你是一位历史老师。", "role": "system"}, {"content": "长城是什么？", "role": "user"}, {"content": "长城是中国古代的军事防御工程。", "role": "assistant"}, {"content": "它有多长？", "role": "user"}, {"content": "明长城全长约八千八百公里。", "role": "assistant", "reasoning_content": "记得是 8851.8 公里。"}], "rejected": [{"content": "你是一位历史老师。", "role": "system"}, {"content": "长城是什么？", "role": "user"}, {"content": "长城是中国古代的军事防御工程。", "role": "assistant"}, {"content": "它有多长？", "role": "user"}, {"content": "很长很长。", "role": "assistant", "tool_calls": null}]}',
]
EXPLICIT_DPO = [
    {"prompt": "请用一句话介绍长城。", "chosen": "长城是中国古代绵延万里的军事防御工程。", "rejected": "不知道。"},
    {"prompt": [system("你是一位历史老师。"), user("长城是什么？"), assistant("长城是中国古代的军事防御工程。"),
                user("它有多长？")],
     "chosen": "明长城全长约八千八百公里。", "rejected": "很长很长。"},
]


def test_minimind_conversation_pairs_equal_the_explicit_prompt_form(tmp_path, news_tokenizer_dir):
    for line, explicit in zip(MINIMIND_DPO, EXPLICIT_DPO):
        assert parse_preference(json.loads(line), "x") == parse_preference(explicit, "x")
    summary, pairs = prepared_dpo(tmp_path, news_tokenizer_dir, "dpo", MINIMIND_DPO)
    explicit_lines = [json.dumps(record, ensure_ascii=False) for record in EXPLICIT_DPO]
    _, explicit_pairs = prepared_dpo(tmp_path, news_tokenizer_dir, "explicit", explicit_lines)
    assert pairs == explicit_pairs and summary["train"]["pairs"] == 2 and summary["skipped_records"] == 0
    for (chosen_ids, chosen_mask), (rejected_ids, _) in pairs:
        assert chosen_ids != rejected_ids and 1 in chosen_mask


def test_top_level_system_applies_to_the_shared_prefix():
    record = {"system": "你是助手。", "chosen": [user("你好"), assistant("你好！")],
              "rejected": [user("你好"), assistant("走开。")]}
    assert parse_preference(record, "x") == ([system("你是助手。"), user("你好")], "你好！", "走开。")


def _pair(chosen, rejected, **extra):
    return json.dumps({"chosen": chosen, "rejected": rejected, **extra}, ensure_ascii=False)


@pytest.mark.parametrize("line, field, reason", [
    (_pair([user("问题甲"), assistant("好")], [user("问题乙"), assistant("坏")]),
     "rejected[0].content", "share no user turn"),
    (_pair([system("助手"), user("问题甲"), assistant("好")], [system("助手"), user("问题乙"), assistant("坏")]),
     "rejected[1].content", "share no user turn"),
    (_pair([user("问"), assistant("答")], [user("问"), assistant("答")]), "rejected", "same conversation"),
    (_pair([user("问"), {"role": "robot", "content": "答"}], [user("问"), assistant("坏")]),
     "chosen[1].role", "unknown role 'robot'"),
    (_pair([user("问"), assistant("好"), user("再问"), assistant("好")], [user("问"), assistant("坏")]),
     "chosen[1].content", "exactly one assistant message, it holds: assistant, user, assistant"),
    (_pair([user("问"), assistant("答")], [user("问"), assistant("答"), user("再问"), assistant("坏")]),
     "chosen", "it holds: （无 / none）"),
    (_pair([user("问"), assistant("  ")], [user("问"), assistant("坏")]), "chosen[1].content", "empty"),
    (_pair([user("问"), assistant("好")], [user("问"), assistant("坏")], prompt="问"), "prompt", "shared prefix"),
    (json.dumps({"chosen": [user("问"), assistant("好")], "rejected": "坏"}, ensure_ascii=False),
     "rejected", "array of messages"),
    (_pair([user("问"), {"role": "tool", "content": "{}"}, assistant("好")], [user("问"), assistant("坏")]),
     "chosen[1].role", "tool-use conversation"),
])
def test_bad_conversation_pairs_name_file_line_and_field(tmp_path, news_tokenizer_dir, line, field, reason):
    with pytest.raises(TowerGPTError) as info:
        prepared_dpo(tmp_path, news_tokenizer_dir, "pairs", [MINIMIND_DPO[0], line])
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'pairs.jsonl'}:2 字段/field '{field}'"), message
    assert reason in message and "\n" not in message
    assert not (tmp_path / "pairs_data").exists()


def test_cli_reads_minimind_files_as_they_are(tmp_path, news_tokenizer_dir):
    """真正的命令行：MiniMind 的 SFT（混着 tool use，--skip-bad）和 DPO 文件原样交给 `data prepare`。"""
    sft = write_lines(tmp_path / "sft_mini_512.jsonl", [*SFT_SHAPES["minimind_sft"][0], MINIMIND_TOOL_USE])
    result = run_cli("data", "prepare", "--format", "sft", "--input", sft, "--tokenizer", news_tokenizer_dir,
                     "--out", tmp_path / "sft", "--max-seq-len", MAX_SEQ_LEN, "--workers", 1, "--val-fraction", 0,
                     "--skip-bad")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "conversations 3" in result.stdout and "skipped bad records: 1" in result.stdout

    dpo = write_lines(tmp_path / "dpo.jsonl", MINIMIND_DPO)
    result = run_cli("data", "prepare", "--format", "dpo", "--input", dpo, "--tokenizer", news_tokenizer_dir,
                     "--out", tmp_path / "dpo", "--max-seq-len", MAX_SEQ_LEN, "--workers", 1, "--val-fraction", 0)
    assert result.returncode == 0, result.stderr[-2000:]
    assert DPOData(tmp_path / "dpo", "train", seq_len=MAX_SEQ_LEN).num_pairs == 2

    bad = write_lines(tmp_path / "bad_dpo.jsonl", [MINIMIND_DPO[0], _pair([user("甲"), assistant("好")],
                                                                          [user("乙"), assistant("坏")])])
    result = run_cli("data", "prepare", "--format", "dpo", "--input", bad, "--tokenizer", news_tokenizer_dir,
                     "--out", tmp_path / "bad", "--workers", 1)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"{bad}:2 字段/field 'rejected[0].content'" in result.stderr
    assert not (tmp_path / "bad").exists()
