"""请求体的形状和取值范围（pydantic 模型）。不合法的请求在这里就被拦下，回 400。

字段名与 OpenAI 的 API 一致；另有两个常见的扩展字段 top_k、repetition_penalty（vLLM 等也支持）。
不认识的字段直接忽略（各家客户端会带上 user、metadata 之类的字段）；
但**认识而做不到**的（n>1、logprobs、tools ……）明确报错，而不是悄悄给出不符合预期的结果。

类型按 JSON 的本来面目严格检查（strict=True）：pydantic 默认会“宽容地”把 true 当成整数 1、
把 "0.5" 当成数字 0.5，于是 `"max_tokens": true` 被悄悄当成 1。严格模式下它们都回 400；
整数仍可以用在要小数的地方（temperature: 1 照常可用），JSON 里本来就没有别的写法。
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from towergpt.inspect.cli import MAX_TOP_K
from towergpt.server.errors import APIError

MAX_STOP_STRINGS = 4          # 与 OpenAI 相同
MAX_STOP_LENGTH = 100


STRICT_IGNORING_EXTRA = ConfigDict(strict=True, extra="ignore")


class TextPart(BaseModel):
    """消息内容也可以是若干段 {"type": "text", "text": ...}（OpenAI 的多段格式）；本模型只认文字。"""

    model_config = STRICT_IGNORING_EXTRA

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = STRICT_IGNORING_EXTRA

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    model_config = STRICT_IGNORING_EXTRA

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """聊天与续写共有的字段。"""

    model_config = STRICT_IGNORING_EXTRA

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)   # 新版 OpenAI 的名字，优先于 max_tokens
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    # 下面这些做不到，只接受“等于默认值”
    n: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None
    logprobs: bool | int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise APIError(400, f"stop 最多 {MAX_STOP_STRINGS} 个 / at most {MAX_STOP_STRINGS} stop strings", "stop")
        if any(len(stop) > MAX_STOP_LENGTH for stop in stops):
            raise APIError(400, f"每个 stop 最长 {MAX_STOP_LENGTH} 个字符 / stop strings are limited to "
                                f"{MAX_STOP_LENGTH} characters", "stop")
        return tuple(stop for stop in stops if stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def reject_unsupported(self) -> None:
        """“认识但做不到”的参数取了非默认值：400，并说明哪个参数。"""
        unsupported = {
            "n": self.n not in (None, 1),
            "frequency_penalty": self.frequency_penalty not in (None, 0),
            "presence_penalty": self.presence_penalty not in (None, 0),
            "logit_bias": bool(self.logit_bias),
            "logprobs": self.logprobs not in (None, False, 0),
        }
        for name, given in unsupported.items():
            if given:
                hint = "（可以用 repetition_penalty 抑制重复）" if name.endswith("_penalty") else ""
                raise APIError(400, f"不支持参数 {name}{hint} / parameter {name} is not supported", name,
                               "unsupported_parameter")


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    tools: list | None = None

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.tools:
            raise APIError(400, "不支持工具调用 / tools are not supported", "tools", "unsupported_parameter")


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int]
    echo: bool | None = False
    suffix: str | None = None

    def reject_unsupported(self) -> None:
        super().reject_unsupported()
        if self.echo:
            raise APIError(400, "不支持 echo / echo is not supported", "echo", "unsupported_parameter")
        if self.suffix:
            raise APIError(400, "不支持 suffix / suffix is not supported", "suffix", "unsupported_parameter")


class InspectRequest(BaseModel):
    """POST /v1/inspect（检视器网页用，不是 OpenAI 的接口）：看模型怎样读这段文字。

    chat 为真时按对话模板渲染：用户说 text，system 是可选的系统提示词；给了 reply 就看“模型怎样读完
    这段回答”，没给就停在“轮到助手了”。system / reply 只在 chat 时有意义，不是 chat 时给了就报错
    （与 `towergpt inspect` 的 --system / --reply 相同）：悄悄忽略的话，用户会以为它们起了作用。
    """

    model_config = STRICT_IGNORING_EXTRA

    text: str
    top_k: int = Field(5, ge=1, le=MAX_TOP_K)
    chat: bool = False
    system: str | None = None
    reply: str | None = None

    def reject_unpaired(self) -> None:
        for name in ("system", "reply"):
            if getattr(self, name) is not None and not self.chat:
                raise APIError(400, f"{name} 只在 chat 为 true 时有意义 / {name} needs chat: true", name)
