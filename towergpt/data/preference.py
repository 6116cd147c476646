"""偏好数据（DPO）的渲染：一个提示 + 两个回答 -> 两条训练序列和它们的损失掩码。

一条偏好记录 {"prompt", "chosen", "rejected"}，或 MiniMind 的两段对话 {"chosen": [...], "rejected": [...]}
（解析见 data/prompt_records.py 的 parse_preference：两种形状都先变成“提示的消息 + 两个回答字符串”）
变成**同一个提示**后面接**两种回答**的两条序列，用的是与 SFT、聊天完全相同的对话模板：

    chosen   = <s> <|im_start|>user\\n 问题 <|im_end|>\\n <|im_start|>assistant\\n 好的回答 <|im_end|>\\n
    rejected = <s> <|im_start|>user\\n 问题 <|im_end|>\\n <|im_start|>assistant\\n 差的回答 <|im_end|>\\n
    掩码        0 ...............................0  0 .................0  1 ... 1     1     0

掩码只在**最后这条**助手回答的正文和它的 <|im_end|> 上是 1。与 SFT 不同，提示里如果有更早的
助手发言（多轮对话），它们在这里也是 0：DPO 比较的是两种回答的对数概率，求和只能在两种回答
不同的那一段上进行，公共的提示对两者一样，算进去只会添噪声。

太长怎么办（序列至多 max_tokens = max_seq_len + 1 个 token，两条都要放得下）：
    1. 先从最早的一轮开始整轮丢掉提示里的旧对话（system 保留，同 chat_template.fit_to_context）；
    2. 只剩 system + 最后一条 user 还放不下，就把**回答**从末尾截短（提示保持完整：
       不知道问题的回答没有意义）；截短的回答失去了结尾的 <|im_end|>，但开头仍然可以比较；
    3. 连每个回答留 1 个 token 的地方都没有，这一对就跳过（prepare 把它记进 skipped.txt）。
每一步都计数写进 meta.json，不悄悄丢数据。
"""

from __future__ import annotations

from dataclasses import dataclass

from towergpt.chat_template import RenderedChat, fit_to_context, generation_prompt_ids, render_chat, render_message


@dataclass
class RenderedPair:
    """一对渲染好的序列。dropped_messages：提示里丢掉了几条旧消息；truncated：回答是否被截短了。"""

    chosen: RenderedChat
    rejected: RenderedChat
    dropped_messages: int = 0
    truncated: bool = False


def render_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str, max_tokens: int) -> RenderedPair | None:
    """把提示和两个回答渲染成两条序列，每条至多 max_tokens 个 token；实在放不下返回 None。"""
    answers = [render_message(tokenizer, "assistant", chosen), render_message(tokenizer, "assistant", rejected)]
    longest = max(len(answer.ids) for answer in answers)
    rendered_prompt = render_chat(tokenizer, prompt)
    dropped, truncated = 0, False
    if len(rendered_prompt.ids) + longest > max_tokens:
        # 第 1 步：整轮丢掉提示里最早的对话，直到“提示 + 较长的回答”放得下
        fitted = fit_to_context(tokenizer, prompt, max_tokens - longest)
        if fitted is not None:
            kept, dropped = fitted
        else:
            # 第 2 步：提示只留 system + 最后一条 user，回答截短到剩下的长度
            kept = _minimal_prompt(prompt)
            dropped = len(prompt) - len(kept)
        rendered_prompt = render_chat(tokenizer, kept)
        room = max_tokens - len(rendered_prompt.ids)
        if room < len(generation_prompt_ids(tokenizer)) + 1:
            return None  # 第 3 步：连“<|im_start|>assistant\n + 1 个回答 token”都放不下
        truncated = longest > room
        answers = [_cut(answer, room) for answer in answers]
    chosen_seq, rejected_seq = (_join(rendered_prompt, answer) for answer in answers)
    return RenderedPair(chosen_seq, rejected_seq, dropped, truncated)


def minimal_prompt_tokens(tokenizer, prompt: list[dict]) -> int:
    """只留 system 和最后一条 user 时提示有多少 token（报“太长而跳过”时告诉用户）。"""
    return len(render_chat(tokenizer, _minimal_prompt(prompt)).ids)


def _minimal_prompt(prompt: list[dict]) -> list[dict]:
    """system（如果有）+ 最后一条 user 消息：提示能缩到的最短。"""
    system = prompt[:1] if prompt[0]["role"] == "system" else []
    return system + prompt[-1:]


def _cut(answer: RenderedChat, length: int) -> RenderedChat:
    """回答只留前 length 个 token（掩码同步截短）。"""
    return RenderedChat(answer.ids[:length], answer.loss_mask[:length])


def _join(prompt: RenderedChat, answer: RenderedChat) -> RenderedChat:
    """提示 + 回答；提示里的掩码全部清零（更早的助手发言也不算，见模块开头）。"""
    return RenderedChat(prompt.ids + answer.ids, [0] * len(prompt.ids) + answer.loss_mask)
