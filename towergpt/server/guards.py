"""守门的三个 ASGI 中间件：请求到达路由之前，依次检查（app.py 里装上）：

    LoopbackHostCheck  只监听本机时，Host 头必须是本机地址（防 DNS 重绑定）
    BearerAuth         设了 --api-key 时，/v1/ 下的请求必须带对密钥
    BodySizeLimit      请求体超过上限直接 413，连 JSON 都不解析

写成中间件而不是路由里的检查：不合格的请求在读请求体之前就被拒绝，既省事又安全。
"""

from __future__ import annotations

import hmac

from towergpt.server.errors import error_response

# 本机地址的几种写法（Host 头里可能带端口，见下面去端口的那一行）
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


class LoopbackHostCheck:
    """只监听本机时，只接受 Host 头是 localhost / 127.0.0.1 / [::1] 的请求。

    为什么？“DNS 重绑定”攻击：你访问的某个恶意网站把它自己的域名临时解析到 127.0.0.1，
    它页面里的脚本就能以“同源”的身份访问你本机上的服务、读到回答。但这种请求的 Host 头
    仍然是那个恶意域名——检查 Host 头就能把它挡在门外。监听其他地址时（--host 0.0.0.0），
    各种域名、IP 都可能是合法的，这项检查不启用（那时应当设置 --api-key）。
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host     # 去掉端口，保留 [::1]
        if name in LOOPBACK_NAMES:
            return await self.app(scope, receive, send)
        response = error_response(400, f"Host 头 {host!r} 不是本机地址 / invalid host header {host!r}",
                                  code="invalid_host")
        await response(scope, receive, send)


PROTECTED_PREFIX = "/v1/"


class BearerAuth:
    """`--api-key`：要求 /v1/ 下的每个请求带上 `Authorization: Bearer <密钥>`。

    写成一个 ASGI 中间件（而不是路由里的检查），这样没带密钥的请求在读请求体之前就被拒绝（401），
    既省事，也不会因为请求体有问题而先回一个 400、泄露“这里有个服务在认真解析你的请求”。
    网页本身（/、/static/）和 /health 不需要密钥：网页里有一个填密钥的输入框，由它带上密钥去调用 /v1/。

    比较密钥用 hmac.compare_digest：耗时与“前几个字符对不对”无关，无法靠计时一位一位猜出密钥。
    """

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if self.expected is None or scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIX):
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        message = ("缺少 API 密钥：请在请求头里加上 Authorization: Bearer <密钥> / missing API key"
                   if not given else "API 密钥不正确 / incorrect API key")
        response = error_response(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodySizeLimit:
    """请求体大小上限：超过 max_bytes 就回 413，不把它读进内存、更不去解析。

    没有上限的话，一个人发来 10 GB 的“JSON”就能把服务的内存撑爆。两种情况都要挡住：
        - 请求头里声明了 Content-Length：一看就知道，直接拒绝；
        - 分块传输（没有 Content-Length）：边读边数，超过就停。
    读完的请求体再原样“回放”给后面的应用；之后对 receive() 的调用照常转给服务器
    （流式回答靠它得知客户端已经断开）。
    """

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
