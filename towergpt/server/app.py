"""把各个部件组装成一个 FastAPI 应用。"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI

from towergpt.server.engine import Engine
from towergpt.server.errors import install_error_handlers
from towergpt.server.guards import BearerAuth, BodySizeLimit, LoopbackHostCheck
from towergpt.server.inspect_routes import register_inspect_routes
from towergpt.server.routes import register_routes
from towergpt.server.settings import ServerSettings


def create_app(model, tokenizer, settings: ServerSettings | None = None):
    """返回 ASGI 应用；app.state.engine 是生成引擎（随应用启动、关闭）。"""
    settings = settings or ServerSettings()
    settings.check()
    model.eval()
    engine = Engine(model, tokenizer, settings.max_active, settings.max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    # 不开 /docs：那个页面要从 CDN 加载脚本，而这里的一切都应该离线可用
    app = FastAPI(title="TowerGPT", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.settings = settings
    install_error_handlers(app)
    register_routes(app, engine, tokenizer, settings, model.config.max_seq_len)
    register_inspect_routes(app, model, tokenizer)      # 检视器：只读模型，不经过引擎
    # 中间件：后加的在外层。请求依次经过：Host 检查 → 密钥检查 → 请求体大小 → 路由
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(BearerAuth, api_key=settings.api_key)
    if settings.loopback_only:
        app.add_middleware(LoopbackHostCheck)
    return app
