"""对话模板：把一段多轮对话变成 token id，并标出哪些位置要算损失。

训练、聊天、HTTP 服务、导出都用这**同一个**模板（常见错误：训练和聊天各拼各的格式，差一个换行，模型在聊天时就看到了从没见过的输入）。
格式沿用 ChatML：

    <s><|im_start|>system\\n你是一个助手。<|im_end|>\\n
       <|im_start|>user\\n这条评论是正面还是负面？…<|im_end|>\\n
       <|im_start|>assistant\\n正面<|im_end|>\\n

- `<s>`、`<|im_start|>`、`<|im_end|>` 是分词器里的**控制 token**，只能在 id 层面拼接进来。
  消息正文按普通文本编码：用户就算输入字符串 "<|im_start|>"，得到的也只是普通字符的 token，
  无法伪造一轮对话（见 tokenizer/core.py 的说明）。
- 损失只算在助手说的话上：助手正文的 token 和它的 `<|im_end|>`（模型要学会“说完了就停”）。
  system、user 的内容、角色名、换行、padding 全部屏蔽——模型不需要学会“模仿用户说话”。
- 生成时在末尾接上 `<|im_start|>assistant\\n`（“轮到助手了”），模型生成到 `<|im_end|>` 为止。

消息的统一内部格式：{"role": "system" | "user" | "assistant", "content": str}。
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass
class RenderedChat:
    """ids：整段对话的 token id；loss_mask：与 ids 等长，1 表示这个 token 是要学会“说出来”的。"""

    ids: list[int]
    loss_mask: list[int]


def generation_prompt_ids(tokenizer) -> list[int]:
    """“轮到助手说话了”：<|im_start|>assistant\\n。"""
    return [tokenizer.im_start_id] + tokenizer.encode("assistant\n")


def render_message(tokenizer, role: str, content: str | list[int]) -> RenderedChat:
    """一条消息的 id 和损失掩码：<|im_start|> role\n 正文 <|im_end|> \n，只有助手的正文和 <|im_end|> 是 1。

    content 可以是文本，也可以是已经编码好的 id（聊天时助手的回答直接用它生成出来的 id，
    这样历史与 KV 缓存里的内容逐 token 一致，不会因为“解码再编码”切分不同而对不上）。
    """
    head = [tokenizer.im_start_id] + tokenizer.encode(f"{role}\n")
    body = tokenizer.encode(content) if isinstance(content, str) else list(content)
    tail = tokenizer.encode("\n")
    ids = head + body + [tokenizer.im_end_id] + tail
    learn = 1 if role == "assistant" else 0
    mask = [0] * len(head) + [learn] * (len(body) + 1) + [0] * len(tail)
    return RenderedChat(ids, mask)


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> RenderedChat:
    """整段对话：<s> + 每条消息（+ 生成提示）。"""
    ids, mask = [tokenizer.bos_id], [0]
    for message in messages:
        part = render_message(tokenizer, message["role"], message["content"])
        ids += part.ids
        mask += part.loss_mask
    if add_generation_prompt:
        prompt = generation_prompt_ids(tokenizer)
        ids += prompt
        mask += [0] * len(prompt)
    return RenderedChat(ids, mask)


def fit_to_context(tokenizer, messages: list[dict], max_tokens: int) -> tuple[list[dict], int] | None:
    """对话太长时，保留 system，从最早的一轮开始整轮丢弃（一问一答一起丢），绝不截断一条消息的中间。

    返回 (留下的消息, 丢掉的消息条数)；如果只剩 system + 最后一轮仍然放不下，返回 None。
    """
    system = [m for m in messages[:1] if m["role"] == "system"]
    turns = messages[len(system):]
    dropped = 0
    while turns:
        kept = system + turns
        if len(render_chat(tokenizer, kept).ids) <= max_tokens:
            return kept, dropped
        # 去掉最早的“用户 + 助手”一轮（开头若是孤立的助手消息，也一并去掉）
        cut = 1
        while cut < len(turns) and turns[cut]["role"] != "user":
            cut += 1
        if cut >= len(turns):
            return None
        turns = turns[cut:]
        dropped += cut
    return None
