"""网络这边（asyncio 事件循环）与生成线程之间的桥。

生成线程通过 emit 回调送出结果；回调在**生成线程**里被调用，不能直接碰事件循环里的对象，
所以用 loop.call_soon_threadsafe 把“放进队列”这件事交给事件循环自己去做。
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from towergpt.server.engine import Engine, EngineBusy
from towergpt.server.errors import APIError
from towergpt.server.sequence import Event, Failed, Finished, GenerationRequest


class Submission:
    """一个交给引擎的请求：events() 逐个取回结果，cancel() 放弃它（释放槽位）。"""

    def __init__(self, engine: Engine, request: GenerationRequest):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.engine = engine

        def emit(event: Event) -> None:
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:          # 事件循环已经关闭（服务正在退出）：没人收了
                pass

        try:
            self.sequence = engine.submit(request, emit)
        except EngineBusy:
            raise APIError(503, "服务器正忙：生成槽位和等候队列都满了，请稍后重试 / server busy: all generation "
                                "slots and the waiting queue are full, retry later",
                           code="server_busy", headers={"Retry-After": "1"}) from None

    async def events(self) -> AsyncIterator[Event]:
        """逐个产出事件，直到 Finished 或 Failed。"""
        while True:
            event = await self.queue.get()
            yield event
            if isinstance(event, (Finished, Failed)):
                return

    def cancel(self) -> None:
        self.engine.cancel(self.sequence)
