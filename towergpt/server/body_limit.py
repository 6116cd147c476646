"""请求体大小上限：超过 max_bytes 就回 413，不把它读进内存、更不去解析。

没有上限的话，一个人发来 10 GB 的“JSON”就能把服务的内存撑爆。两种情况都要挡住：
    - 请求头里声明了 Content-Length：一看就知道，直接拒绝；
    - 分块传输（没有 Content-Length）：边读边数，超过就停。
读完的请求体再原样“回放”给后面的应用；之后对 receive() 的调用照常转给服务器
（流式回答靠它得知客户端已经断开）。
"""

from __future__ import annotations

from towergpt.server.errors import error_response


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)

        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return                                   # 客户端没发完就走了：什么也不用做
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        response = error_response(413, f"请求体超过 {self.max_bytes} 字节 / request body larger than "
                                       f"{self.max_bytes} bytes", code="request_too_large")
        await response(scope, receive, send)
