"""`--api-key`：要求 /v1/ 下的每个请求带上 `Authorization: Bearer <密钥>`。

写成一个 ASGI 中间件（而不是路由里的检查），这样没带密钥的请求在读请求体之前就被拒绝（401），
既省事，也不会因为请求体有问题而先回一个 400、泄露“这里有个服务在认真解析你的请求”。
网页本身（/、/static/）和 /health 不需要密钥：网页里有一个填密钥的输入框，由它带上密钥去调用 /v1/。

比较密钥用 hmac.compare_digest：耗时与“前几个字符对不对”无关，无法靠计时一位一位猜出密钥。
"""

from __future__ import annotations

import hmac

from towergpt.server.errors import error_response

PROTECTED_PREFIX = "/v1/"


class BearerAuth:
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
