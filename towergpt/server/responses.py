"""OpenAI 格式的回答：一次性的 JSON，或流式的 chunk。

流式用 server-sent events（SSE）：每个 chunk 是一行 `data: {json}`，后面跟一个空行；
最后一行是 `data: [DONE]`。聊天的 chunk 形如

    data: {"id": "chatcmpl-…", "object": "chat.completion.chunk", "created": 1700000000, "model": "towergpt",
           "choices": [{"index": 0, "delta": {"content": "你好"}, "logprobs": null, "finish_reason": null}]}

第一个 chunk 的 delta 是 {"role": "assistant", "content": ""}，最后一个的 delta 是 {}、带 finish_reason。
请求里 stream_options.include_usage 为真时，[DONE] 之前再多一个 choices 为空、带 usage 的 chunk。
"""

from __future__ import annotations

import json
import time
import uuid


class ResponseIds:
    """一个回答的 id、创建时间和模型名：同一个回答的所有 chunk 必须相同。"""

    def __init__(self, prefix: str, model: str):
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def header(self, object_name: str) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def sse(payload: dict | str) -> str:
    """一个 server-sent event。"""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


# ---- /v1/chat/completions ---------------------------------------------------------

def chat_completion(ids: ResponseIds, text: str, finish_reason: str, usage_counts: dict) -> dict:
    message = {"role": "assistant", "content": text, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {**ids.header("chat.completion"), "choices": [choice], "usage": usage_counts}


def chat_chunk(ids: ResponseIds, delta: dict, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {**ids.header("chat.completion.chunk"), "choices": [choice]}


def chat_usage_chunk(ids: ResponseIds, usage_counts: dict) -> dict:
    return {**ids.header("chat.completion.chunk"), "choices": [], "usage": usage_counts}


# ---- /v1/completions --------------------------------------------------------------

def completion(ids: ResponseIds, text: str, finish_reason: str, usage_counts: dict) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {**ids.header("text_completion"), "choices": [choice], "usage": usage_counts}


def completion_chunk(ids: ResponseIds, text: str, finish_reason: str | None = None) -> dict:
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
    return {**ids.header("text_completion"), "choices": [choice]}


def completion_usage_chunk(ids: ResponseIds, usage_counts: dict) -> dict:
    return {**ids.header("text_completion"), "choices": [], "usage": usage_counts}
