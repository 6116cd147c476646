"""一条正在生成的序列：生成线程每轮调用一次 `step()`，它就往前走一小步（通常 1 个 token）。

采样完全复用 generate.py：`stream_generate` 本身就是一个“每 next() 一次产出 1 个 token”的生成器，
自带这条序列自己的 KV 缓存和随机数发生器；`stream_text` 把 token 变成文字（处理被字节回退拆开的汉字）。
所以同一个请求无论是单独跑还是和 15 个请求轮流跑，算出来的 token 完全相同——测试正是这样核对的。

结果通过 `emit` 回调一条条送出（生成线程 → 网络那边的队列）：
    TextDelta(text)                           新生成的一段文字
    Finished(finish_reason, prompt_tokens, completion_tokens)   正常结束；finish_reason 是 "stop" 或 "length"
    Failed(message)                           生成时出了意外（服务器的 bug，而不是用户的错）
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from towergpt.generate import stream_generate, stream_text
from towergpt.server.stop_strings import StopStrings


@dataclass
class GenerationRequest:
    """生成所需的一切，已经检查过取值范围（见 schemas.py / prompts.py）。"""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()              # 生成到这些 token 就停（聊天：<|im_end|> 和 </s>）
    stop_strings: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class TextDelta:
    text: str


@dataclass
class Finished:
    finish_reason: str           # "stop"：遇到结束 token 或停止字符串；"length"：达到 max_tokens 或上下文上限
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    message: str


Event = TextDelta | Finished | Failed


class Sequence:
    """一条序列的生成状态。只在生成线程里调用 step() / close()；cancelled 可以从任何线程设置。"""

    def __init__(self, model, tokenizer, request: GenerationRequest, emit: Callable[[Event], None]):
        self.request = request
        self.emit = emit
        self.cancelled = False
        self.completion_tokens = 0
        self.last_token: int | None = None
        self._stop_strings = StopStrings(request.stop_strings)
        device = model.embed.weight.device
        idx = torch.tensor([request.prompt_ids], dtype=torch.long, device=device)     # (1, T)
        # 两个生成器都是“惰性”的：此刻什么都没算，第一次 step() 时才预填充提示词
        self._tokens = stream_generate(
            model, idx, request.max_tokens, request.temperature, request.top_k, request.top_p,
            request.repetition_penalty, eos_id=request.stop_ids, seed=request.seed,
            vocab_limit=tokenizer.vocab_size,
        )
        self._pieces = stream_text(tokenizer, self._counted(self._tokens), stop_ids=set(request.stop_ids))

    def step(self) -> bool:
        """往前走一步并送出结果；返回 True 表示这条序列结束了（槽位可以让给别人）。"""
        try:
            piece = next(self._pieces)
        except StopIteration:
            tail = self._stop_strings.flush()
            if tail:
                self.emit(TextDelta(tail))
            self._finish("stop" if self.last_token in self.request.stop_ids else "length")
            return True
        text, stopped = self._stop_strings.feed(piece)
        if text:
            self.emit(TextDelta(text))
        if stopped:
            self.close()
            self._finish("stop")
            return True
        return False

    def close(self) -> None:
        """提前结束（停止字符串、客户端断开）：关掉生成器，释放这条序列的 KV 缓存。"""
        self._pieces.close()
        self._tokens.close()

    def _finish(self, reason: str) -> None:
        self.emit(Finished(reason, len(self.request.prompt_ids), self.completion_tokens))

    def _counted(self, tokens: Iterator[int]) -> Iterator[int]:
        """数一数生成了多少个 token（usage 要用），记下最后一个（判断是不是因结束 token 而停）。"""
        for token in tokens:
            self.completion_tokens += 1
            self.last_token = token
            yield token
