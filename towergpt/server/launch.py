"""`towergpt serve --ckpt DIR`：OpenAI 兼容的 HTTP 服务，外加一个网页聊天页面。

    towergpt serve --ckpt runs/quickstart/sft
    # 浏览器打开 http://127.0.0.1:8000/ 聊天；
    # 或者用 openai 客户端：OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="任意")

默认只监听本机（127.0.0.1）：同一网络里的其他人访问不到。要让别人访问，给 --host 0.0.0.0，
并且一定同时设置 --api-key（或环境变量 TOWERGPT_API_KEY），否则任何人都能用你的机器算东西。

这个文件只管“启动”：载入检查点、搭好应用、交给 uvicorn；服务本身的各个部分见本目录的 __init__.py。
fastapi / uvicorn 是可选依赖（pip install "towergpt[serve]"），所以 server.app 和 uvicorn 等检查过
它们装好了才 import，缺了就说一句怎么装。
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import sys

from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.generate import compile_for_decoding
from towergpt.server.settings import ServerSettings

API_KEY_ENV = "TOWERGPT_API_KEY"     # --api-key 的默认值从这个环境变量取（见 cli/tools.py）


def main(args: argparse.Namespace) -> None:
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise TowerGPTError(f"缺少 {missing[0]}：请先 pip install \"towergpt[serve]\" / "
                            f"missing {missing[0]}: pip install \"towergpt[serve]\"")
    if not 0 < args.port < 65536:
        raise TowerGPTError(f"--port 必须在 1..65535 之间，收到 {args.port} / port out of range")

    import uvicorn

    from towergpt.server.app import create_app

    settings = ServerSettings(
        model_name=args.model_name or default_model_name(resolve_checkpoint(args.ckpt)),
        api_key=args.api_key or None, max_active=args.max_active, max_waiting=args.max_waiting,
        max_tokens_limit=args.max_tokens, max_body_bytes=args.max_body_bytes, loopback_only=is_loopback(args.host),
    )
    settings.check()
    model, tokenizer = load(args.ckpt, pick_device(args.device))
    if args.compile:
        model = compile_for_decoding(model)
    app = create_app(model, tokenizer, settings)

    if not is_loopback(args.host) and settings.api_key is None:
        print(f"警告 / warning: 监听 {args.host} 却没有设置 --api-key：同一网络里的任何人都能使用这个服务 / "
              f"listening on {args.host} without an API key: anyone on the network can use it", file=sys.stderr)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"模型 / model: {settings.model_name}（上下文 {model.config.max_seq_len} token）\n"
          f"网页聊天 / web chat: http://{shown_host}:{args.port}/\n"
          f"OpenAI base_url: http://{shown_host}:{args.port}/v1", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


def default_model_name(checkpoint_dir) -> str:
    """.../runs/quickstart/sft/checkpoints/step_00000593 → "sft"（运行目录名比步数好记）。"""
    if checkpoint_dir.parent.name == "checkpoints":
        return checkpoint_dir.parent.parent.name or "towergpt"
    return checkpoint_dir.name or "towergpt"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
