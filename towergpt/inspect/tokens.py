"""把一段文本（或一段对话）切成 token，并记下每个 token 是什么、来自原文的哪里。

检视器（inspect）给读者看的第一样东西就是这张表：

    index  id    piece     kind     原文位置
    0      1     <s>       control  —            序列开头的控制 token，不对应任何文字
    1      523   今天      text     [0, 2)
    2      1187  天气      text     [2, 4)
    3      87    <0xE9>    byte     [4, 5)       词表外的字拆成 UTF-8 字节：三个字节 piece 共用一个字

kind 有四种：
    text     普通 piece（“▁”是空格在 SentencePiece 里的写法，显示时换回空格）
    byte     字节回退（byte fallback）：词表里没有的字拆成 UTF-8 字节，一个汉字通常是 3 个
    control  控制 token：<s>、</s>、<|im_start|>、<|im_end|> 等，只在 id 层面出现，不对应文字
    unknown  <unk>（我们的分词器开了字节回退，正常不会出现）

原文位置 [start, end) 按**字符**数（Python 字符串的下标）。怎么算：分词器不做任何规范化、开头不加空格
（见 tokenizer/training.py），所以把每个 token 的字节按顺序接起来，恰好就是原文的 UTF-8 字节。
先累加出每个 token 的字节区间，再换算成字符区间；几个字节 piece 拼成一个字时，它们的字符区间相同。

对话（chat）模式：按 chat_template.py 的唯一模板渲染，每个 token 再标上它属于哪条消息（role），
以及它是不是**模板 token**（<s>、<|im_start|>、角色名、换行、<|im_end|>：模板加的，不是谁说的话）。
此时 start/end 是在那条消息正文里的位置；模板 token 没有原文位置（None）。
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from towergpt.chat_template import generation_prompt_ids, render_message

BYTE_PIECE = re.compile(r"^<0x([0-9A-F]{2})>$")
SPACE_MARKER = "\u2581"   # SentencePiece 用“▁”表示空格


@dataclass
class TokenInfo:
    """表里的一行。message / role / template 只在对话模式下有意义。"""

    index: int
    id: int
    piece: str                # 词表里的原样写法，例如 "▁the"、"<0xE9>"、"<|im_start|>"
    text: str                 # 它代表的文字：空格换回空格；字节 piece、控制 token 显示 piece 本身
    kind: str                 # text / byte / control / unknown
    start: int | None = None  # 原文里的字符区间 [start, end)；没有对应文字时为 None
    end: int | None = None
    message: int | None = None  # 对话模式：第几条消息（0 起）；生成提示属于下一条（还没说的）消息
    role: str | None = None
    template: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def classify(tokenizer, token_id: int) -> tuple[str, str, str]:
    """一个 id 的 (piece, text, kind)。"""
    piece = tokenizer.id_to_piece(token_id)
    if token_id == tokenizer.unk_id:
        return piece, piece, "unknown"
    if BYTE_PIECE.match(piece):
        return piece, piece, "byte"
    if token_id in special_ids(tokenizer):
        return piece, piece, "control"
    return piece, piece.replace(SPACE_MARKER, " "), "text"


def special_ids(tokenizer) -> set[int]:
    return {tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.im_start_id, tokenizer.im_end_id}


def token_bytes(kind: str, piece: str, text: str) -> int:
    """这个 token 在原文 UTF-8 里占几个字节：控制 token 0 个，字节 piece 1 个，普通 piece 按它的文字算。"""
    if kind == "byte":
        return 1
    if kind in ("control", "unknown"):
        return 0
    return len(text.encode("utf-8"))


def character_spans(text: str, byte_lengths: list[int]) -> list[tuple[int, int] | None]:
    """每个 token 的字符区间；字节数不为 0 的 token 才有区间。字节总数对不上原文时全部给 None（不猜）。"""
    encoded = text.encode("utf-8")
    if sum(byte_lengths) != len(encoded):
        return [None] * len(byte_lengths)
    char_of_byte = []                                      # 第 b 个字节属于第几个字符
    for char_index, char in enumerate(text):
        char_of_byte += [char_index] * len(char.encode("utf-8"))
    spans, byte_start = [], 0
    for length in byte_lengths:
        if length == 0:
            spans.append(None)
        else:
            spans.append((char_of_byte[byte_start], char_of_byte[byte_start + length - 1] + 1))
        byte_start += length
    return spans


def describe_ids(tokenizer, ids: list[int], source: str | None = None, first_index: int = 0) -> list[TokenInfo]:
    """一串 id → TokenInfo 列表；给了 source（这些 id 编码的原文）就算出字符区间。"""
    rows = []
    for offset, token_id in enumerate(ids):
        piece, text, kind = classify(tokenizer, token_id)
        rows.append(TokenInfo(first_index + offset, int(token_id), piece, text, kind))
    if source is not None:
        spans = character_spans(source, [token_bytes(r.kind, r.piece, r.text) for r in rows])
        for row, span in zip(rows, spans):
            row.start, row.end = span if span else (None, None)
    return rows


def text_tokens(tokenizer, text: str) -> list[TokenInfo]:
    """普通文本：<s> + 正文（与预训练数据每篇文档的开头相同，模型最熟悉这个样子）。"""
    return describe_ids(tokenizer, [tokenizer.bos_id]) + describe_ids(tokenizer, tokenizer.encode(text), text, 1)


def chat_tokens(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[TokenInfo]:
    """对话：与 chat_template.render_chat 逐 token 相同，外加每个 token 的消息、角色、是否模板 token。"""
    rows = describe_ids(tokenizer, [tokenizer.bos_id])
    rows[0].template = True
    for number, message in enumerate(messages):
        # 一条消息 = 头（<|im_start|>role\n）+ 正文 + 尾（<|im_end|>\n）；拼起来必须与模板给出的逐 token 相同
        head = [tokenizer.im_start_id] + tokenizer.encode(f"{message['role']}\n")
        body = tokenizer.encode(message["content"])
        tail = [tokenizer.im_end_id] + tokenizer.encode("\n")
        if head + body + tail != render_message(tokenizer, message["role"], message["content"]).ids:
            raise AssertionError("chat_template.render_message 的格式变了，tokens.py 要跟着改")
        pieces = (describe_ids(tokenizer, head, None, len(rows)),
                  describe_ids(tokenizer, body, message["content"], len(rows) + len(head)),
                  describe_ids(tokenizer, tail, None, len(rows) + len(head) + len(body)))
        for segment, is_template in zip(pieces, (True, False, True)):
            for row in segment:
                row.message, row.role, row.template = number, message["role"], is_template
            rows += segment
    if add_generation_prompt:
        prompt = describe_ids(tokenizer, generation_prompt_ids(tokenizer), None, len(rows))
        for row in prompt:
            row.message, row.role, row.template = len(messages), "assistant", True
        rows += prompt
    return rows
