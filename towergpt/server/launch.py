"""`towergpt serve --ckpt DIR`：OpenAI 兼容的 HTTP 服务，外加一个网页聊天页面。

    towergpt serve --ckpt runs/quickstart/sft
    # 浏览器打开 http://127.0.0.1:8000/ 聊天；
    # 或者用 openai 客户端：OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="任意")

默认只监听本机（127.0.0.1）：同一网络里的其他人访问不到。要让别人访问，给 --host 0.0.0.0，
并且一定同时设置 --api-key（或环境变量 TOWERGPT_API_KEY），否则任何人都能用你的机器算东西。

这个文件只管“启动”：载入检查点、搭好应用、交给 uvicorn；服务本身的各个部分见本目录的 __init__.py。
本模块顶层只 import 标准库，`towergpt --help` 才快；fastapi / uvicorn 是可选依赖：
    pip install "towergpt[serve]"
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

API_KEY_ENV = "TOWERGPT_API_KEY"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    parser.add_argument("--host", default="127.0.0.1",
                        help="监听地址，默认只有本机能访问；0.0.0.0 = 所有网卡（请同时设 --api-key）/ bind address")
    parser.add_argument("--port", type=int, default=8000, help="端口 / port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"要求请求带 Authorization: Bearer <密钥>；默认取环境变量 {API_KEY_ENV} / "
                             f"require this bearer token (default: ${API_KEY_ENV})")
    parser.add_argument("--model-name", default=None,
                        help="API 里的模型名，默认取检查点所在运行目录的名字 / model id in the API")
    parser.add_argument("--device", default="auto", help="cpu / cuda / mps / auto")
    parser.add_argument("--compile", action="store_true",
                        help="用 torch.compile 加速逐 token 生成（启动后第一个请求要等编译，约半分钟）"
                             " / compile the model for decoding")
    parser.add_argument("--max-active", type=int, default=8,
                        help="同时生成的序列数（轮流各生成 1 个 token）/ sequences generated concurrently")
    parser.add_argument("--max-waiting", type=int, default=32,
                        help="槽位满时最多排队的请求数，再多回 503 / queued requests before 503")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="单个请求 max_tokens 的上限 / upper bound of a request's max_tokens")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000,
                        help="请求体上限（字节），超过回 413 / request body limit in bytes")


def main(args: argparse.Namespace) -> None:
    from towergpt.errors import TowerGPTError

    try:
        import uvicorn  # noqa: F401
        import fastapi  # noqa: F401
    except ImportError as error:
        raise TowerGPTError(f"缺少 {error.name}：请先 pip install \"towergpt[serve]\" / "
                            f"missing {error.name}: pip install \"towergpt[serve]\"") from None
    if not 0 < args.port < 65536:
        raise TowerGPTError(f"--port 必须在 1..65535 之间，收到 {args.port} / port out of range")

    from towergpt.checkpoint import load, resolve_checkpoint
    from towergpt.device import pick_device
    from towergpt.server.app import create_app
    from towergpt.server.settings import ServerSettings

    settings = ServerSettings(
        model_name=args.model_name or default_model_name(resolve_checkpoint(args.ckpt)),
        api_key=args.api_key or None, max_active=args.max_active, max_waiting=args.max_waiting,
        max_tokens_limit=args.max_tokens, max_body_bytes=args.max_body_bytes, loopback_only=is_loopback(args.host),
    )
    settings.check()
    model, tokenizer = load(args.ckpt, pick_device(args.device))
    if args.compile:
        from towergpt.generate import compile_for_decoding

        model = compile_for_decoding(model)
    app = create_app(model, tokenizer, settings)

    if not is_loopback(args.host) and settings.api_key is None:
        print(f"警告 / warning: 监听 {args.host} 却没有设置 --api-key：同一网络里的任何人都能使用这个服务 / "
              f"listening on {args.host} without an API key: anyone on the network can use it", file=sys.stderr)
    shown_host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"模型 / model: {settings.model_name}（上下文 {model.config.max_seq_len} token）\n"
          f"网页聊天 / web chat: http://{shown_host}:{args.port}/\n"
          f"OpenAI base_url: http://{shown_host}:{args.port}/v1", file=sys.stderr)

    import uvicorn

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
