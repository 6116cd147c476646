"""只监听本机时，只接受 Host 头是 localhost / 127.0.0.1 / [::1] 的请求。

为什么？“DNS 重绑定”攻击：你访问的某个恶意网站把它自己的域名临时解析到 127.0.0.1，
它页面里的脚本就能以“同源”的身份访问你本机上的服务、读到回答。但这种请求的 Host 头
仍然是那个恶意域名——检查 Host 头就能把它挡在门外。监听其他地址时（--host 0.0.0.0），
各种域名、IP 都可能是合法的，这项检查不启用（那时应当设置 --api-key）。
"""

from __future__ import annotations

from towergpt.server.errors import error_response

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


class LoopbackHostCheck:
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
