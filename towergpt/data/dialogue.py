"""对话数据的几种常见格式 -> 统一的内部格式 / Dialogue records in common formats -> one internal format.

网上的对话数据集各有各的写法。我们接受下面这些最常见的“形状”（一条 JSON 记录 = 一段对话），
别人发布的数据集不必先转换，原样交给 `towergpt data prepare --format sft` 即可：

    1. 问答对（原 tower_gpt 的格式）
           {"prompt": "问题", "response": "回答"}
    2. Alpaca（斯坦福 Alpaca 及其大量中文翻译版；BELLE 的单轮数据也是这个形状）
           {"instruction": "指令", "input": "补充输入，可以是空串", "output": "回答",
            "history": [["更早的问题", "更早的回答"], ...]}
       用户的话 = instruction；input 非空时再接上 "\\n\\n" + input。
       history（LLaMA-Factory 等的写法，可省略）是这一问之前的几轮 [问, 答]，按顺序排在前面。
    3. OpenAI 的 messages（多轮）
           {"messages": [{"role": "system", "content": "..."}, {"role": "user", ...}, {"role": "assistant", ...}]}
    4. conversations（多轮）：ShareGPT、BELLE 多轮写 from/value，MiniMind 写 role/content
           {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}
           {"conversations": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
    5. Firefly 的 conversation（多轮，每个元素是一整轮）
           {"conversation_id": 1, "category": "...", "conversation": [{"human": "问", "assistant": "答"}, ...]}

以上每种都可以带一个可选的顶层 "system" 字符串（系统提示词）。3、4 两种里，
角色字段写 "role" 或 "from"、正文字段写 "content" 或 "value" 都可以；角色名的别名：
    system                        -> system
    user / human                  -> user
    assistant / gpt / bot / model -> assistant
记录和消息里的其他字段（id、category、MiniMind 的 reasoning_content、system 消息上的 tools……）
一律不看：我们的对话模板只有角色和正文。注意 reasoning_content（单独存放的“思考过程”）因此不会进入训练；
写在正文里的 <think>…</think> 则是正文的一部分，原样保留。

调用工具的对话（有 role 为 tool 的消息，或某条消息带非空的 tool_calls）是例外：对话模板里没有
“工具调用”和“工具结果”的位置，把它们硬塞成普通文本，会教模型输出一种聊天时没人执行的格式；
只去掉工具那几条又会教模型凭空编出工具才知道的结果（现在几点、算式等于多少）。所以这种对话整段
报错，加 --skip-bad 就逐条跳过并记进 skipped.txt（MiniMind 的 SFT 数据里混有一部分这样的对话）。

统一的内部格式（chat_template.py 只认这一种）：
    [{"role": "system" | "user" | "assistant", "content": str}, ...]

一段合格的对话必须满足（不满足就报错，说清楚是哪条记录、哪条消息、哪里不对）：
    - system 至多一条，而且只能在最前面；
    - 之后从 user 开始，user、assistant 严格交替；
    - 以 assistant 结尾（SFT 只在助手的话上算损失，没有助手回答的对话什么也学不到）；
    - user / assistant 的正文不能是空的（只有空白也算空）。
为什么这么严格？格式稍有偏差的数据（两条 user 连在一起、最后一条是 user……）
在训练时不会报错，只会悄悄地教坏模型；与其训练完才发现，不如在准备数据时就拦下来。

空的 system（"" 或只有空白）视同没有 system：聊天时不给系统提示词就是“没有 system 消息”，
训练数据与之保持一致，模型就不会学到一个“空的 system 段落”。

偏好数据（DPO）和强化学习的提示词（都带一个“提示”）见 data/prompt_records.py。
"""

from __future__ import annotations

import json

# 报错时列出记录有哪些键（看出字段名是不是写错了），用 JSON 的说法称呼类型（null、number、array……）
from towergpt.data.readers import describe_keys, json_type_name as _type_name
from towergpt.errors import TowerGPTError

# 角色名的别名 -> 内部角色。比较前先转小写、去掉首尾空白（"Human"、" gpt " 也认）。
ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}

# 工具相关的角色（OpenAI / MiniMind 的 tool、OpenAI 旧版的 function、LLaMA-Factory ShareGPT 的
# function_call / observation）和助手消息上“调用了工具”的字段：见模块开头，这种对话整段报错。
TOOL_ROLES = ("tool", "function", "function_call", "observation")
TOOL_CALL_KEYS = ("tool_calls", "function_call")

# 各种格式的名字（prepare 的 meta.json 里按它统计每种格式各有多少条）
PROMPT_RESPONSE, ALPACA, MESSAGES, CONVERSATIONS = "prompt_response", "alpaca", "messages", "conversations"
FIREFLY = "firefly"

# 识别格式靠“必需的字段都在（且不是 null）”。
REQUIRED_KEYS = {
    PROMPT_RESPONSE: ("prompt", "response"),
    ALPACA: ("instruction", "output"),
    MESSAGES: ("messages",),
    CONVERSATIONS: ("conversations",),
    FIREFLY: ("conversation",),
}

# 报“不认识的格式”时列给用户看的合法形状
ACCEPTED_SHAPES = (
    '{"prompt", "response"} | {"instruction", "input", "output", "history"?} | '
    '{"messages": [{"role", "content"}, ...]} | {"conversations": [{"from", "value"} 或 {"role", "content"}, ...]} | '
    '{"conversation": [{"human", "assistant"}, ...]}'
    '（均可带顶层 "system" / all may carry a top-level "system"）'
)


class DialogueError(TowerGPTError):
    """一条不合格的对话记录。location 是“文件:行”之类的位置，field 是出问题的字段，reason 是原因。

    单独分出这个类，是为了 `--skip-bad` 时把位置和原因分开写进 skipped.txt 的两列；
    它仍然是 TowerGPTError，命令行照样打印成一行。
    """

    def __init__(self, location: str, reason: str, field: str | None = None):
        self.location = f"{location} 字段/field '{field}'" if field else location
        self.reason = reason
        super().__init__(f"{self.location}: {reason}")


# ---------------------------------------------------------------------------
# 对外接口
# ---------------------------------------------------------------------------

def record_to_messages(record: dict, location: str) -> list[dict]:
    """把一条对话记录（四种格式之一）变成内部格式的消息列表，并检查它是一段合格的对话。

    参数:
        record:   一条 JSON 记录（dict）。
        location: 这条记录在哪里，例如 "data.jsonl:17"，只用于报错。

    返回 [{"role": ..., "content": ...}, ...]；不合格时抛 DialogueError（TowerGPTError 的子类），
    消息里写明位置、字段（例如 messages[3].content）和原因。
    """
    return parse_record(record, location)[1]


def parse_record(record: dict, location: str) -> tuple[str, list[dict]]:
    """与 record_to_messages 相同，另外返回识别出的格式名（prompt_response / alpaca / messages / conversations / firefly）。"""
    if not isinstance(record, dict):
        raise DialogueError(location, f"这条记录是 {_type_name(record)}，需要一个 JSON 对象"
                                      f" / record is {_type_name(record)}, expected an object")
    kind = detect_format(record, location)
    if kind == PROMPT_RESPONSE:
        entries = [("user", string_field(record, "prompt", location), "prompt"),
                   ("assistant", string_field(record, "response", location), "response")]
    elif kind == ALPACA:
        entries = _alpaca_entries(record, location)
    elif kind == FIREFLY:
        entries = _firefly_entries(record, location)
    else:
        entries = list_entries(record, kind, location)
    entries = add_top_level_system(record, entries, location)
    check_conversation(entries, location)
    return kind, [{"role": role, "content": content} for role, content, _ in entries]


def detect_format(record: dict, location: str) -> str:
    """看这条记录有哪些字段，认出它是哪一种格式；认不出或同时像两种时报错。

    值为 null 的字段当作不存在（Parquet 把几种格式混在一张表里时，缺的列就是 null）。
    """
    present = {key for key, value in record.items() if value is not None}
    matches = [kind for kind, keys in REQUIRED_KEYS.items() if all(key in present for key in keys)]
    if len(matches) == 1:
        return matches[0]
    keys = describe_keys(record)
    if len(matches) > 1:
        raise DialogueError(
            location,
            f"这条记录同时像 {' 和 '.join(matches)} 两种格式，无法确定用哪个（字段：{keys}）"
            f" / the record matches several formats ({', '.join(matches)}): keys {keys}",
        )
    if {"chosen", "rejected"} <= present:
        hint = "；这像是偏好数据，请用 --format dpo / this looks like preference data: use --format dpo"
    else:
        hint = ""
    raise DialogueError(
        location,
        f"不认识的对话格式，这条记录的字段：{keys}；支持的形状：{ACCEPTED_SHAPES}"
        f" / unknown dialogue format, the record has keys {keys}{hint}",
    )


# ---------------------------------------------------------------------------
# 各格式 -> (角色, 正文, 字段名) 的列表；字段名只用于报错
# ---------------------------------------------------------------------------

def string_field(record: dict, key: str, location: str, field: str | None = None) -> str:
    """取出一个必须是字符串的值。"""
    value = record.get(key)
    if not isinstance(value, str):
        raise DialogueError(location, f"值是 {_type_name(value)}，需要字符串 / value is {_type_name(value)}, "
                                      f"expected a string", field or key)
    return value


def _alpaca_entries(record: dict, location: str) -> list[tuple[str, str, str]]:
    """Alpaca：history 里更早的几轮（可以没有）+ 这一轮 instruction(+input) -> output。"""
    return _history_entries(record, location) + [("user", _alpaca_user(record, location), "instruction"),
                                                  ("assistant", string_field(record, "output", location), "output")]


def _history_entries(record: dict, location: str) -> list[tuple[str, str, str]]:
    """Alpaca 的 "history"：[[问, 答], ...]，instruction 之前的几轮对话，按原顺序排在前面；缺省或 null 表示没有。"""
    history = record.get("history")
    if history is None:
        return []
    if not isinstance(history, list):
        raise DialogueError(location, f"值是 {_type_name(history)}，需要 [[问, 答], ...] 这样的数组"
                                      f" / value is {_type_name(history)}, expected an array of [question, answer]",
                            "history")
    entries = []
    for index, turn in enumerate(history):
        field = f"history[{index}]"
        if not isinstance(turn, list) or len(turn) != 2:
            raise DialogueError(location, f"每一轮要写成 [问, 答] 两个字符串，这里是 {_describe_turn(turn)}"
                                          f" / each turn must be a [question, answer] pair", field)
        for position, role in enumerate(("user", "assistant")):
            text = turn[position]
            if not isinstance(text, str):
                raise DialogueError(location, f"值是 {_type_name(text)}，需要字符串 / value is {_type_name(text)}, "
                                              f"expected a string", f"{field}[{position}]")
            entries.append((role, text, f"{field}[{position}]"))
    return entries


def _describe_turn(turn) -> str:
    """history 里一轮写错时说它是什么：有几个元素的数组，或别的类型。"""
    if isinstance(turn, list):
        return f"{len(turn)} 个元素的数组 / an array of {len(turn)}"
    return _type_name(turn)


def _firefly_entries(record: dict, location: str) -> list[tuple[str, str, str]]:
    """Firefly 的 conversation：每个元素是一整轮 {"human": 问, "assistant": 答}，展开成 user、assistant 两条。"""
    turns = record["conversation"]
    if not isinstance(turns, list):
        raise DialogueError(location, f"值是 {_type_name(turns)}，需要 [{{\"human\", \"assistant\"}}, ...] 这样的数组"
                                      f" / value is {_type_name(turns)}, expected an array of turns", "conversation")
    entries = []
    for index, turn in enumerate(turns):
        field = f"conversation[{index}]"
        if not isinstance(turn, dict):
            raise DialogueError(location, f"这一轮是 {_type_name(turn)}，需要 {{\"human\", \"assistant\"}} 对象"
                                          f" / turn is {_type_name(turn)}, expected an object", field)
        for key, role in (("human", "user"), ("assistant", "assistant")):
            if key not in turn:
                keys = describe_keys(turn)
                raise DialogueError(location, f"这一轮缺少 '{key}'，它有的键：{keys} / turn lacks '{key}', keys: {keys}",
                                    field)
            entries.append((role, string_field(turn, key, location, f"{field}.{key}"), f"{field}.{key}"))
    return entries


def _alpaca_user(record: dict, location: str) -> str:
    """Alpaca 的用户消息：instruction，input 非空时再接 "\\n\\n" + input（input 可以缺省、为空或为 null）。"""
    instruction = string_field(record, "instruction", location)
    extra = record.get("input")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        raise DialogueError(location, f"值是 {_type_name(extra)}，需要字符串 / value is {_type_name(extra)}, "
                                      f"expected a string", "input")
    parts = [part for part in (instruction, extra) if part.strip()]
    return "\n\n".join(parts)


def list_entries(record: dict, key: str, location: str) -> list[tuple[str, str, str]]:
    """messages / conversations 列表：每个元素是一个对象，角色在 role 或 from，正文在 content 或 value。"""
    items = record[key]
    if not isinstance(items, list):
        raise DialogueError(location, f"值是 {_type_name(items)}，需要一个消息数组"
                                      f" / value is {_type_name(items)}, expected an array of messages", key)
    entries = []
    for index, item in enumerate(items):
        field = f"{key}[{index}]"
        if not isinstance(item, dict):
            raise DialogueError(location, f"消息是 {_type_name(item)}，需要一个对象"
                                          f" / message is {_type_name(item)}, expected an object", field)
        role_key = _first_key(item, ("role", "from"), location, field)
        _reject_tool_use(item, role_key, location, field)   # 先于正文的检查：调用工具的助手消息正文常是空的
        content_key = _first_key(item, ("content", "value"), location, field)
        role = _normalize_role(item[role_key], location, f"{field}.{role_key}")
        content = item[content_key]
        if not isinstance(content, str):
            raise DialogueError(location, f"正文是 {_type_name(content)}，需要字符串"
                                          f" / content is {_type_name(content)}, expected a string",
                                f"{field}.{content_key}")
        entries.append((role, content, f"{field}.{content_key}"))
    return entries


def _reject_tool_use(item: dict, role_key: str, location: str, field: str) -> None:
    """工具的消息（role 为 tool 等）或带非空 tool_calls 的消息：这段对话是“调用工具的对话”，报错（见模块开头）。"""
    role = item[role_key]
    if isinstance(role, str) and role.strip().lower() in TOOL_ROLES:
        raise DialogueError(location, _tool_use_reason(f"角色 {role!r}", f"role {role!r}"), f"{field}.{role_key}")
    for key in TOOL_CALL_KEYS:
        if _has_tool_calls(item.get(key)):
            raise DialogueError(location, _tool_use_reason(f"{key} 不是空的", f"non-empty {key}"), f"{field}.{key}")


def _has_tool_calls(value) -> bool:
    """tool_calls 里有没有调用。MiniMind 把它存成 JSON 字符串：null、""、"[]" 都表示没有调用。"""
    if isinstance(value, str):
        if not value.strip():
            return False
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return True   # 有内容却不是合法的 JSON：仍然当作一次调用，不猜它的意思
    return bool(value)


def _tool_use_reason(what: str, what_en: str) -> str:
    """“调用工具的对话”的报错原因：是哪一处看出来的（what），以及怎么办（--skip-bad）。"""
    return (f"这是一段调用工具的对话（{what}）：对话模板里没有工具调用和工具结果的位置，这段对话无法如实表示；"
            f"加 --skip-bad 跳过这类对话（逐条记进 skipped.txt）"
            f" / tool-use conversation ({what_en}): the chat template has no place for tool calls or tool results;"
            f" add --skip-bad to skip such conversations (each is listed in skipped.txt)")


def _first_key(item: dict, candidates: tuple[str, ...], location: str, field: str) -> str:
    """消息对象里第一个存在的键（例如 role 或 from）；都没有就报错并列出已有的键。"""
    # 先找值不是 null 的键：Parquet 的结构体列会把缺的键补成 null（例如同时有 role 和 from 两列）
    for key in candidates:
        if item.get(key) is not None:
            return key
    for key in candidates:
        if key in item:
            return key
    wanted = " / ".join(repr(key) for key in candidates)
    keys = describe_keys(item)
    raise DialogueError(location, f"消息里缺少 {wanted}，它有的键：{keys} / message lacks {wanted}, keys: {keys}",
                        field)


def _normalize_role(value, location: str, field: str) -> str:
    """把 human / gpt / bot ... 映射成 user / assistant；不认识的角色报错并点名。"""
    if not isinstance(value, str):
        raise DialogueError(location, f"角色是 {_type_name(value)}，需要字符串"
                                      f" / role is {_type_name(value)}, expected a string", field)
    role = ROLE_ALIASES.get(value.strip().lower())
    if role is None:
        known = ", ".join(ROLE_ALIASES)
        raise DialogueError(location, f"不认识的角色 {value!r}，可用：{known} / unknown role {value!r}, known: {known}",
                            field)
    return role


def add_top_level_system(record: dict, entries: list, location: str) -> list:
    """顶层 "system" 字符串 -> 最前面的一条 system 消息；空的 system（含列表里的）一律去掉。"""
    system = record.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise DialogueError(location, f"值是 {_type_name(system)}，需要字符串"
                                          f" / value is {_type_name(system)}, expected a string", "system")
        if system.strip():
            if any(role == "system" for role, _, _ in entries):
                raise DialogueError(location, "顶层有 system，消息列表里也有 system 消息，不知道用哪个"
                                              " / both a top-level system and a system message are present",
                                    "system")
            entries = [("system", system, "system")] + entries
    return [entry for entry in entries if not (entry[0] == "system" and not entry[1].strip())]


# ---------------------------------------------------------------------------
# 对话结构检查
# ---------------------------------------------------------------------------

def check_conversation(entries: list[tuple[str, str, str]], location: str) -> None:
    """system 只在最前；然后 user、assistant 交替，从 user 开始、以 assistant 结尾；正文非空、可编码。"""
    if not any(role != "system" for role, _, _ in entries):
        raise DialogueError(location, "对话是空的：没有任何 user / assistant 消息"
                                      " / empty conversation: no user or assistant message")
    start = 1 if entries[0][0] == "system" else 0
    for index, (role, content, field) in enumerate(entries):
        if role == "system":
            if index != 0:
                raise DialogueError(location, "system 消息只能出现在对话的最前面（而且至多一条）"
                                              " / a system message may only come first (and only once)", field)
            check_encodable(content, location, field)
            continue
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        if role != expected:
            raise DialogueError(location, _order_reason(role, index, start), field)
        if not content.strip():
            raise DialogueError(location, f"{role} 消息的正文是空的 / the {role} message is empty", field)
        check_encodable(content, location, field)
    last_role, _, last_field = entries[-1]
    if last_role != "assistant":
        raise DialogueError(location, "对话的最后一条是 user，没有助手的回答可学；对话必须以 assistant 结尾"
                                      " / the conversation ends with a user message: it must end with the assistant",
                            last_field)


def _order_reason(role: str, index: int, start: int) -> str:
    """角色顺序不对时的说明：开头不是 user，或者同一角色连着出现了两次。"""
    if index == start:
        return (f"system 之后的第一条必须是 user，这里是 {role}"
                f" / the first message (after system) must be from the user, got {role}")
    return (f"连续两条 {role} 消息；对话必须 user、assistant 交替"
            f" / two {role} messages in a row: turns must alternate user, assistant")


def check_encodable(content: str, location: str, field: str) -> None:
    """JSON 允许 "\\ud800" 这样不成对的代理项转义，解析出的字符串无法编码成 UTF-8，到分词时才会崩。"""
    if content.isascii():
        return
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DialogueError(location, f"第 {err.start + 1} 个字符是孤立的代理项（不成对的 \\ud800-\\udfff 转义），"
                                      f"无法编码成 UTF-8 / character {err.start + 1} is a lone surrogate", field) from None
