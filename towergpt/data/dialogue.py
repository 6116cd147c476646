"""对话数据的几种常见格式 -> 统一的内部格式 / Dialogue records in common formats -> one internal format.

网上的对话数据集各有各的写法。我们接受四种最常见的“形状”（一条 JSON 记录 = 一段对话）：

    1. 问答对（原 tower_gpt 的格式）
           {"prompt": "问题", "response": "回答"}
    2. Alpaca（斯坦福 Alpaca 及其大量中文翻译版）
           {"instruction": "指令", "input": "补充输入，可以是空串", "output": "回答"}
       用户的话 = instruction；input 非空时再接上 "\\n\\n" + input。
    3. OpenAI 的 messages（多轮）
           {"messages": [{"role": "system", "content": "..."}, {"role": "user", ...}, {"role": "assistant", ...}]}
    4. ShareGPT 的 conversations（多轮）
           {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}

以上每种都可以带一个可选的顶层 "system" 字符串（系统提示词）。3、4 两种里，
角色字段写 "role" 或 "from"、正文字段写 "content" 或 "value" 都可以；角色名的别名：
    system                        -> system
    user / human                  -> user
    assistant / gpt / bot / model -> assistant

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
"""

from __future__ import annotations

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

# 各种格式的名字（prepare 的 meta.json 里按它统计每种格式各有多少条）
PROMPT_RESPONSE, ALPACA, MESSAGES, CONVERSATIONS = "prompt_response", "alpaca", "messages", "conversations"

# 识别格式靠“必需的字段都在（且不是 null）”。
_REQUIRED_KEYS = {
    PROMPT_RESPONSE: ("prompt", "response"),
    ALPACA: ("instruction", "output"),
    MESSAGES: ("messages",),
    CONVERSATIONS: ("conversations",),
}

# 报“不认识的格式”时列给用户看的合法形状
ACCEPTED_SHAPES = (
    '{"prompt", "response"} | {"instruction", "input", "output"} | '
    '{"messages": [{"role", "content"}, ...]} | {"conversations": [{"from", "value"}, ...]}'
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
    """与 record_to_messages 相同，另外返回识别出的格式名（prompt_response / alpaca / messages / conversations）。"""
    if not isinstance(record, dict):
        raise DialogueError(location, f"这条记录是 {_type_name(record)}，需要一个 JSON 对象"
                                      f" / record is {_type_name(record)}, expected an object")
    kind = detect_format(record, location)
    if kind == PROMPT_RESPONSE:
        entries = [("user", _string(record, "prompt", location), "prompt"),
                   ("assistant", _string(record, "response", location), "response")]
    elif kind == ALPACA:
        entries = [("user", _alpaca_user(record, location), "instruction"),
                   ("assistant", _string(record, "output", location), "output")]
    else:
        entries = _list_entries(record, kind, location)
    entries = _add_top_level_system(record, entries, location)
    _check_conversation(entries, location)
    return kind, [{"role": role, "content": content} for role, content, _ in entries]


def detect_format(record: dict, location: str) -> str:
    """看这条记录有哪些字段，认出它是哪一种格式；认不出或同时像两种时报错。

    值为 null 的字段当作不存在（Parquet 把几种格式混在一张表里时，缺的列就是 null）。
    """
    present = {key for key, value in record.items() if value is not None}
    matches = [kind for kind, keys in _REQUIRED_KEYS.items() if all(key in present for key in keys)]
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

def _string(record: dict, key: str, location: str, field: str | None = None) -> str:
    """取出一个必须是字符串的值。"""
    value = record.get(key)
    if not isinstance(value, str):
        raise DialogueError(location, f"值是 {_type_name(value)}，需要字符串 / value is {_type_name(value)}, "
                                      f"expected a string", field or key)
    return value


def _alpaca_user(record: dict, location: str) -> str:
    """Alpaca 的用户消息：instruction，input 非空时再接 "\\n\\n" + input（input 可以缺省、为空或为 null）。"""
    instruction = _string(record, "instruction", location)
    extra = record.get("input")
    if extra is None:
        extra = ""
    if not isinstance(extra, str):
        raise DialogueError(location, f"值是 {_type_name(extra)}，需要字符串 / value is {_type_name(extra)}, "
                                      f"expected a string", "input")
    parts = [part for part in (instruction, extra) if part.strip()]
    return "\n\n".join(parts)


def _list_entries(record: dict, key: str, location: str) -> list[tuple[str, str, str]]:
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
        content_key = _first_key(item, ("content", "value"), location, field)
        role = _normalize_role(item[role_key], location, f"{field}.{role_key}")
        content = item[content_key]
        if not isinstance(content, str):
            raise DialogueError(location, f"正文是 {_type_name(content)}，需要字符串"
                                          f" / content is {_type_name(content)}, expected a string",
                                f"{field}.{content_key}")
        entries.append((role, content, f"{field}.{content_key}"))
    return entries


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


def _add_top_level_system(record: dict, entries: list, location: str) -> list:
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

def _check_conversation(entries: list[tuple[str, str, str]], location: str) -> None:
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
            _check_encodable(content, location, field)
            continue
        expected = "user" if (index - start) % 2 == 0 else "assistant"
        if role != expected:
            raise DialogueError(location, _order_reason(role, index, start), field)
        if not content.strip():
            raise DialogueError(location, f"{role} 消息的正文是空的 / the {role} message is empty", field)
        _check_encodable(content, location, field)
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


def _check_encodable(content: str, location: str, field: str) -> None:
    """JSON 允许 "\\ud800" 这样不成对的代理项转义，解析出的字符串无法编码成 UTF-8，到分词时才会崩。"""
    if content.isascii():
        return
    try:
        content.encode("utf-8")
    except UnicodeEncodeError as err:
        raise DialogueError(location, f"第 {err.start + 1} 个字符是孤立的代理项（不成对的 \\ud800-\\udfff 转义），"
                                      f"无法编码成 UTF-8 / character {err.start + 1} is a lone surrogate", field) from None


# ---------------------------------------------------------------------------
# 偏好数据（DPO）：{"prompt", "chosen", "rejected"}
# ---------------------------------------------------------------------------

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")

# 占位的助手回答：借用上面的对话检查（它要求以 assistant 结尾）来检查“以 user 结尾的提示”
_PLACEHOLDER_ANSWER = ("assistant", "placeholder", "chosen")


def parse_preference(record: dict, location: str) -> tuple[list[dict], str, str]:
    """一条偏好记录 -> (提示的消息列表, chosen 回答, rejected 回答)。

    prompt 可以是一个字符串（= 一条 user 消息），也可以是消息数组（system / user / assistant 轮流，
    角色与正文的写法同对话数据），但必须以 user 结尾：接下来轮到助手说话，chosen 和 rejected
    就是同一个位置上的两种回答，一个更好、一个更差。顶层 "system" 同对话数据。
    chosen / rejected 是非空字符串，而且不能相同（相同的一对没有“偏好”可学，梯度恒为 0）。
    不合格时抛 DialogueError，字段写成 prompt[2].content、chosen 这样。
    """
    if not isinstance(record, dict):
        raise DialogueError(location, f"这条记录是 {_type_name(record)}，需要一个 JSON 对象"
                                      f" / record is {_type_name(record)}, expected an object")
    missing = [key for key in PREFERENCE_KEYS if record.get(key) is None]
    if missing:
        hint = ""
        if any(record.get(key) is not None for keys in _REQUIRED_KEYS.values() for key in keys if key != "prompt"):
            hint = "；这像是对话数据，请用 --format sft / this looks like dialogue data: use --format sft"
        raise DialogueError(location, f"偏好记录缺少字段 {', '.join(missing)}（需要 prompt、chosen、rejected；"
                                      f"这条记录的字段：{describe_keys(record)}）/ preference record lacks "
                                      f"{', '.join(missing)}{hint}", missing[0])
    messages = _prompt_entries(record, location)
    answers = []
    for key in ("chosen", "rejected"):
        answer = _string(record, key, location)
        if not answer.strip():
            raise DialogueError(location, "回答是空的 / the answer is empty", key)
        _check_encodable(answer, location, key)
        answers.append(answer)
    if answers[0] == answers[1]:
        raise DialogueError(location, "chosen 与 rejected 完全相同，这一对没有偏好可学"
                                      " / chosen and rejected are identical: nothing to prefer", "rejected")
    return [{"role": role, "content": content} for role, content, _ in messages], answers[0], answers[1]


def _prompt_entries(record: dict, location: str) -> list[tuple[str, str, str]]:
    """prompt（字符串或消息数组）+ 顶层 system -> (角色, 正文, 字段名) 的列表，检查它以 user 结尾。"""
    prompt = record["prompt"]
    if isinstance(prompt, str):
        entries = [("user", prompt, "prompt")]
    elif isinstance(prompt, list):
        entries = _list_entries(record, "prompt", location)
    else:
        raise DialogueError(location, f"值是 {_type_name(prompt)}，需要字符串或消息数组"
                                      f" / value is {_type_name(prompt)}, expected a string or an array of messages",
                            "prompt")
    entries = _add_top_level_system(record, entries, location)
    if not entries or entries[-1][0] != "user":
        field = entries[-1][2] if entries else "prompt"
        raise DialogueError(location, "prompt 必须以 user 消息结尾：接下来轮到助手，chosen / rejected 才是它的回答"
                                      " / the prompt must end with a user message", field)
    _check_conversation(entries + [_PLACEHOLDER_ANSWER], location)
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
