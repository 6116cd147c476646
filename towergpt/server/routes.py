"""各个 URL 做什么。

    POST /v1/chat/completions   聊天（流式 / 非流式）
    POST /v1/completions        续写（流式 / 非流式）
    GET  /v1/models             有哪个模型（以及它的上下文长度 max_model_len）
    GET  /health                服务是否活着、槽位和队列的占用（不需要密钥）
    GET  /                      网页聊天（towergpt/web/ 下的静态文件）
    （检视器的 POST /v1/inspect 与 GET /inspect 在 inspect_routes.py）

客户端中途离开时，一定要尽快告诉引擎“不用算了”：
    - 流式：Starlette 发现连接断开会取消正在产出 chunk 的协程，我们在 finally 里 cancel；
    - 非流式：一边等结果，一边等“断开”消息，谁先来算谁的。
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import Request
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from towergpt.server.errors import APIError, error_body
from towergpt.server.prompts import chat_generation, completion_generation
from towergpt.server.responses import (
    ResponseIds, chat_chunk, chat_completion, chat_usage_chunk, completion, completion_chunk,
    completion_usage_chunk, sse, usage,
)
from towergpt.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingRequest
from towergpt.server.sequence import Failed, Finished, TextDelta
from towergpt.server.submission import Submission

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# 网页只许加载本站的脚本和样式：即使模型输出了奇怪的东西，也不会执行外来代码
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def register_routes(app, engine, tokenizer, settings, max_seq_len: int) -> None:
    def check_model(body: SamplingRequest) -> None:
        if body.model != settings.model_name:
            raise APIError(404, f"没有模型 {body.model!r}，本服务只有 {settings.model_name!r} / the model "
                                f"{body.model!r} does not exist; this server serves {settings.model_name!r}",
                           "model", "model_not_found")

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body)
        submission = Submission(engine, chat_generation(body, tokenizer, settings, max_seq_len))
        ids = ResponseIds("chatcmpl", settings.model_name)
        if body.stream:
            return StreamingResponse(_chat_stream(submission, ids, body.include_usage()),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, finished = await _collect(submission, request)
        return chat_completion(ids, text, finished.finish_reason,
                               usage(finished.prompt_tokens, finished.completion_tokens))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body)
        submission = Submission(engine, completion_generation(body, tokenizer, settings, max_seq_len))
        ids = ResponseIds("cmpl", settings.model_name)
        if body.stream:
            return StreamingResponse(_completion_stream(submission, ids, body.include_usage()),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        text, finished = await _collect(submission, request)
        return completion(ids, text, finished.finish_reason,
                          usage(finished.prompt_tokens, finished.completion_tokens))

    def model_card() -> dict:
        # max_model_len 不是 OpenAI 的字段（vLLM 也这样给）：网页据此设定 max_tokens 的默认值
        return {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "towergpt",
                "max_model_len": max_seq_len}

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id}")
    async def retrieve_model(model_id: str):
        if model_id != settings.model_name:
            raise APIError(404, f"没有模型 {model_id!r} / the model {model_id!r} does not exist", "model",
                           "model_not_found")
        return model_card()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": settings.model_name, **engine.stats()}

    @app.get("/")
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")


async def _collect(submission: Submission, request: Request) -> tuple[str, Finished]:
    """非流式：收齐全部文字；客户端先断开的话就取消生成。"""
    parts: list[str] = []

    async def consume() -> Finished:
        async for event in submission.events():
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finished):
                return event
            else:
                raise APIError(500, event.message)
        raise APIError(500, "生成意外中止 / generation ended unexpectedly")

    consumer = asyncio.ensure_future(consume())
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({consumer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if consumer in done:
            return "".join(parts), consumer.result()
        raise APIError(400, "客户端已断开 / client disconnected")      # 这个回答已经没人收了
    finally:
        watcher.cancel()
        consumer.cancel()
        submission.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _chat_stream(submission: Submission, ids: ResponseIds, include_usage: bool):
    try:
        yield sse(chat_chunk(ids, {"role": "assistant", "content": ""}))
        async for event in submission.events():
            if isinstance(event, TextDelta):
                yield sse(chat_chunk(ids, {"content": event.text}))
            elif isinstance(event, Finished):
                yield sse(chat_chunk(ids, {}, event.finish_reason))
                if include_usage:
                    yield sse(chat_usage_chunk(ids, usage(event.prompt_tokens, event.completion_tokens)))
                yield sse("[DONE]")
            elif isinstance(event, Failed):
                yield sse(error_body(500, event.message))
    finally:
        submission.cancel()          # 正常结束时什么也不做；客户端断开时立即释放槽位


async def _completion_stream(submission: Submission, ids: ResponseIds, include_usage: bool):
    try:
        async for event in submission.events():
            if isinstance(event, TextDelta):
                yield sse(completion_chunk(ids, event.text))
            elif isinstance(event, Finished):
                yield sse(completion_chunk(ids, "", event.finish_reason))
                if include_usage:
                    yield sse(completion_usage_chunk(ids, usage(event.prompt_tokens, event.completion_tokens)))
                yield sse("[DONE]")
            elif isinstance(event, Failed):
                yield sse(error_body(500, event.message))
    finally:
        submission.cancel()
