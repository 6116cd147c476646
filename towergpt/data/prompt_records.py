"""带“提示”的记录：偏好数据（DPO）和强化学习的提示词（GRPO）。

两者都是“一个提示 + 别的东西”：
    偏好   {"prompt", "chosen", "rejected"}，或 MiniMind 的两段对话 {"chosen": [...], "rejected": [...]}
    提示词 {"prompt" | "messages", "answer"}
提示的写法（字符串，或以 user 结尾的消息数组；顶层 "system"）和对话数据相同，所以消息的解析与检查
直接用 data/dialogue.py 的那几个函数；这里只管“提示”和“回答”怎么从记录里取出来。
"""

from __future__ import annotations

from towergpt.data.dialogue import (
    REQUIRED_KEYS,
    DialogueError,
    add_top_level_system,
    check_conversation,
    check_encodable,
    list_entries,
    string_field,
)
from towergpt.data.readers import describe_keys, json_type_name as _type_name


PREFERENCE_KEYS = ("prompt", "chosen", "rejected")

# 占位的助手回答：借用上面的对话检查（它要求以 assistant 结尾）来检查“以 user 结尾的提示”
_PLACEHOLDER_ANSWER = ("assistant", "placeholder", "chosen")


def parse_preference(record: dict, location: str) -> tuple[list[dict], str, str]:
    """一条偏好记录 -> (提示的消息列表, chosen 回答, rejected 回答)。两种形状：

    1. {"prompt", "chosen", "rejected"}：prompt 可以是一个字符串（= 一条 user 消息），也可以是消息数组
       （system / user / assistant 轮流，角色与正文的写法同对话数据），但必须以 user 结尾：接下来轮到助手说话，
       chosen 和 rejected 就是同一个位置上的两种回答（字符串），一个更好、一个更差。
    2. MiniMind 的 {"chosen": [消息...], "rejected": [消息...]}：两段完整的对话，提示是它们的公共前缀，
       见 _conversation_pair。
    顶层 "system" 同对话数据。两个回答都是非空字符串，而且不能相同（相同的一对没有“偏好”可学，梯度恒为 0）。
    不合格时抛 DialogueError，字段写成 prompt[2].content、chosen、rejected[1].content 这样。
    """
    if not isinstance(record, dict):
        raise DialogueError(location, f"这条记录是 {_type_name(record)}，需要一个 JSON 对象"
                                      f" / record is {_type_name(record)}, expected an object")
    if isinstance(record.get("chosen"), list) or isinstance(record.get("rejected"), list):
        messages, answers = _conversation_pair(record, location)
    else:
        messages, answers = _prompt_and_answers(record, location)
    return [{"role": role, "content": content} for role, content, _ in messages], answers[0], answers[1]


def _prompt_and_answers(record: dict, location: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """形状 1：{"prompt", "chosen": 字符串, "rejected": 字符串}。"""
    missing = [key for key in PREFERENCE_KEYS if record.get(key) is None]
    if missing:
        hint = ""
        if any(record.get(key) is not None for keys in REQUIRED_KEYS.values() for key in keys if key != "prompt"):
            hint = "；这像是对话数据，请用 --format sft / this looks like dialogue data: use --format sft"
        raise DialogueError(location, f"偏好记录缺少字段 {', '.join(missing)}（需要 prompt、chosen、rejected；"
                                      f"这条记录的字段：{describe_keys(record)}）/ preference record lacks "
                                      f"{', '.join(missing)}{hint}", missing[0])
    messages = _prompt_entries(record, location)
    answers = [_answer(string_field(record, key, location), location, key) for key in ("chosen", "rejected")]
    if answers[0] == answers[1]:
        raise DialogueError(location, "chosen 与 rejected 完全相同，这一对没有偏好可学"
                                      " / chosen and rejected are identical: nothing to prefer", "rejected")
    return messages, answers


def _conversation_pair(record: dict, location: str) -> tuple[list[tuple[str, str, str]], list[str]]:
    """形状 2（MiniMind 的 dpo.jsonl）：chosen、rejected 各是一段完整的对话，只在最后的助手回答上不同。

        chosen   = [system?, user, assistant, ..., user, 好的回答]
        rejected = [system?, user, assistant, ..., user, 差的回答]
                    └──────────── 公共前缀 = 提示 ────────┘

    从头逐条比较两段对话（角色和正文都相同才算相同），第一条不同的消息之前就是提示；之后两边必须
    各剩恰好一条 assistant 消息：它们就是 chosen / rejected 的回答。三种情况报错：两段完全相同
    （没有偏好可学）；公共前缀里没有 user 消息（问的不是同一个问题）；不同的部分不只是最后这条助手回答
    （例如一边多了一轮，或从 user 消息起就不同）——那样说不清“同一个问题的哪个回答更好”。
    """
    if record.get("prompt") is not None:
        raise DialogueError(location, "chosen / rejected 是消息数组时，提示就是两段对话的公共前缀，不能再给 prompt："
                                      "去掉 prompt，或者把 chosen / rejected 写成回答字符串"
                                      " / with chosen and rejected as message arrays the prompt is their shared"
                                      " prefix: drop \"prompt\", or give the two answers as strings", "prompt")
    chosen, rejected = (_conversation_side(record, key, location) for key in ("chosen", "rejected"))
    shared = _shared_prefix_length(chosen, rejected)
    if shared == len(chosen) == len(rejected):
        raise DialogueError(location, "chosen 与 rejected 两段对话完全相同，这一对没有偏好可学"
                                      " / chosen and rejected are the same conversation: nothing to prefer", "rejected")
    if not any(role == "user" for role, _, _ in chosen[:shared]):
        first_difference = (rejected if shared < len(rejected) else chosen)[shared][2]
        raise DialogueError(location, "两段对话没有共同的 user 提问（从最前面就不同），看不出是同一个问题的两种回答"
                                      " / the two conversations share no user turn: they must answer the same prompt",
                            first_difference)
    answers = []
    for key, entries in (("chosen", chosen), ("rejected", rejected)):
        rest = entries[shared:]
        if len(rest) != 1 or rest[0][0] != "assistant":
            roles = ", ".join(role for role, _, _ in rest) or "（无 / none）"
            raise DialogueError(location, f"两段对话的前 {shared} 条消息相同，之后 {key} 应当只剩一条 assistant 回答，"
                                          f"这里剩下：{roles} / after the {shared} shared messages {key} must hold"
                                          f" exactly one assistant message, it holds: {roles}",
                                rest[0][2] if rest else key)
        answers.append(_answer(rest[0][1], location, rest[0][2]))
    return _finish_prompt(record, chosen[:shared], location), answers


def _conversation_side(record: dict, key: str, location: str) -> list[tuple[str, str, str]]:
    """chosen 或 rejected 的消息数组（另一边也必须是数组：一边对话、一边字符串说不清提示是什么）。"""
    if not isinstance(record.get(key), list):
        kind = _type_name(record.get(key))
        raise DialogueError(location, f"值是 {kind}，需要消息数组（chosen 和 rejected 要么都是对话，要么都是字符串）"
                                      f" / value is {kind}, expected an array of messages like the other side", key)
    return list_entries(record, key, location)


def _shared_prefix_length(first: list[tuple[str, str, str]], second: list[tuple[str, str, str]]) -> int:
    """两个消息列表从头起有几条相同（角色和正文都相同；字段名不比）。"""
    length = 0
    for (first_role, first_text, _), (second_role, second_text, _) in zip(first, second):
        if (first_role, first_text) != (second_role, second_text):
            break
        length += 1
    return length


def _answer(text: str, location: str, field: str) -> str:
    """一个回答：非空、可编码成 UTF-8。"""
    if not text.strip():
        raise DialogueError(location, "回答是空的 / the answer is empty", field)
    check_encodable(text, location, field)
    return text


def _prompt_entries(record: dict, location: str) -> list[tuple[str, str, str]]:
    """prompt（字符串或消息数组）+ 顶层 system -> (角色, 正文, 字段名) 的列表，检查它以 user 结尾。"""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        entries = [("user", prompt, "prompt")]
    elif isinstance(prompt, list):
        entries = list_entries(record, "prompt", location)
    else:
        raise DialogueError(location, f"值是 {_type_name(prompt)}，需要字符串或消息数组"
                                      f" / value is {_type_name(prompt)}, expected a string or an array of messages",
                            "prompt")
    return _finish_prompt(record, entries, location)


def _finish_prompt(record: dict, entries: list[tuple[str, str, str]], location: str) -> list[tuple[str, str, str]]:
    """提示的消息加上顶层 system，检查它以 user 结尾、角色交替（两种偏好形状和强化学习的提示共用）。"""
    entries = add_top_level_system(record, entries, location)
    if not entries or entries[-1][0] != "user":
        field = entries[-1][2] if entries else "prompt"
        raise DialogueError(location, "prompt 必须以 user 消息结尾：接下来轮到助手，chosen / rejected 才是它的回答"
                                      " / the prompt must end with a user message", field)
    check_conversation(entries + [_PLACEHOLDER_ANSWER], location)
    return entries


def parse_prompt(record: dict, location: str) -> tuple[list[dict], str]:
    """一条强化学习的提示词记录 -> (提示的消息列表, 参考答案)。

    提示写成 "prompt"（字符串，或以 user 结尾的消息数组，同偏好数据）或 "messages"（以 user 结尾的消息数组）；
    "answer" 是奖励函数拿来核对的参考答案（字符串，可以省略：有的奖励不需要答案，例如 format）。
    """
    if not isinstance(record, dict):
        raise DialogueError(location, f"这条记录是 {_type_name(record)}，需要一个 JSON 对象"
                                      f" / record is {_type_name(record)}, expected an object")
    if record.get("prompt") is None and isinstance(record.get("messages"), list):
        record = {**record, "prompt": record["messages"]}
    if record.get("prompt") is None:
        raise DialogueError(location, f"提示词记录缺少 prompt 或 messages（这条记录的字段：{describe_keys(record)}）"
                                      f" / a prompt record needs \"prompt\" or \"messages\"", "prompt")
    messages = _prompt_entries(record, location)
    answer = record.get("answer", "")
    if not isinstance(answer, str):
        raise DialogueError(location, f"值是 {_type_name(answer)}，需要字符串 / expected a string", "answer")
    return [{"role": role, "content": content} for role, content, _ in messages], answer
