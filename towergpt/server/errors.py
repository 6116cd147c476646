"""所有错误都用 OpenAI 的错误格式回答，客户端库（openai、各种聊天前端）才能正确识别：

    {"error": {"message": "...", "type": "invalid_request_error", "param": "max_tokens", "code": "invalid_value"}}

用户的错（参数不对、没带密钥、路径不存在……）回 4xx，说清楚是哪个参数、为什么；
服务器自己的 bug 回 500，但只给一句话——traceback 只写进服务器日志，绝不发给客户端
（traceback 里有文件路径、代码细节，既帮不了用户，也不该暴露出去）。
"""

from __future__ import annotations

import logging
import re

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("towergpt.serve")

# HTTP 状态码 → OpenAI 的错误类型
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


class APIError(Exception):
    """一个要以 OpenAI 错误格式回给客户端的错误。"""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers


# 没有更具体的 code 时，按状态码给一个：客户端（和写重试逻辑的人）靠 code 分辨错误，不该看到 null
DEFAULT_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
    503: "server_busy",
}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code or DEFAULT_CODES.get(status, "error")}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict | None = None):
    return JSONResponse(error_body(status, message, param, code), status_code=status, headers=headers)


def install_error_handlers(app) -> None:
    """让 FastAPI 的每一种错误都以 OpenAI 格式返回。"""
    @app.exception_handler(APIError)
    async def api_error(request, error: APIError):
        return error_response(error.status, error.message, error.param, error.code, error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, error: RequestValidationError):
        # pydantic 给出的是一串错误；第一条通常就说明了问题。loc 形如 ("body", "messages", 0, "role")
        first = error.errors()[0]
        param = _param_name(first.get("loc", ()))
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "请求体不是合法的 JSON / request body is not valid JSON", None
        elif param:
            message = f"参数 {param} 不合法 / invalid parameter {param}: {message}"
        return error_response(400, message, param, "invalid_value")

    @app.exception_handler(HTTPException)
    async def http_error(request, error: HTTPException):
        messages = {404: f"找不到 / not found: {request.url.path}",
                    405: f"不支持 {request.method} 方法 / method not allowed: {request.method} {request.url.path}"}
        message = messages.get(error.status_code, str(error.detail))
        return error_response(error.status_code, message, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, error: Exception):
        log.error("处理 %s 时出错 / error while handling %s", request.url.path, request.url.path, exc_info=error)
        return error_response(500, "服务器内部错误，详见服务器日志 / internal server error, see the server log")


# pydantic 对“几种类型之一”（如 str | list[str]）的字段，会在位置里插入它试过的那个类型的名字：
# ("body", "stop", "str")。类型名不是参数名，要去掉。我们的字段名都是小写蛇形，类型名则不是
# 内置类型名就是带方括号或大写开头的名字。
_TYPE_TAG = re.compile(r"^(str|int|float|bool|none|.*\[.*\]|[A-Z]\w*)$")


def _param_name(loc) -> str | None:
    """("body", "messages", 0, "role") → "messages[0].role"；("body", "stop", "str") → "stop"。"""
    parts = [part for part in loc if part != "body" and not (isinstance(part, str) and _TYPE_TAG.match(part))]
    name = ""
    for part in parts:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or None
