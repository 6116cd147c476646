"""`towergpt inspect --ckpt RUN --text "今天天气很好" [--top-k 5] [--chat] [--json]`。"""

from __future__ import annotations

import json

from towergpt.checkpoint import load
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.inspect.report import inspect_tokens
from towergpt.inspect.terminal import render
from towergpt.inspect.tokens import chat_tokens, text_tokens

MAX_TOP_K = 50


def check_request(text: str, top_k: int, n_tokens: int | None = None, max_seq_len: int | None = None) -> None:
    """命令行和网页共用的输入检查；出错时抛出一行能看懂的 TowerGPTError。"""
    if not text.strip():
        raise TowerGPTError("要检视的文字（--text）是空的 / the text to inspect (--text) is empty")
    if not 1 <= top_k <= MAX_TOP_K:
        raise TowerGPTError(f"top-k（--top-k）应在 1 到 {MAX_TOP_K} 之间，收到 {top_k} / top-k must be 1..{MAX_TOP_K}")
    if n_tokens is not None and n_tokens > max_seq_len:
        raise TowerGPTError(f"这段文字有 {n_tokens} 个 token，超过模型的上下文 max_seq_len={max_seq_len}；请缩短 / "
                            f"{n_tokens} tokens exceed the model's context of {max_seq_len}")


def messages_for(text: str, system: str | None = None, reply: str | None = None) -> list[dict]:
    """--chat：用户说 text（可选的系统提示在前、助手的回答在后）。"""
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": text})
    if reply is not None:
        messages.append({"role": "assistant", "content": reply})
    return messages


def run_inspect(model, tokenizer, text: str, top_k: int, chat: bool = False, system: str | None = None,
                reply: str | None = None) -> dict:
    """检查输入、检视，返回 report.py 的 dict（命令行和 /v1/inspect 都走这里）。"""
    check_request(text, top_k)
    if chat:
        messages = messages_for(text, system, reply)
        # 给了回答就看“模型怎样读完这段回答”；没给就停在“轮到助手了”，看它打算说什么
        tokens, source = chat_tokens(tokenizer, messages, add_generation_prompt=reply is None), messages
    else:
        tokens, source = text_tokens(tokenizer, text), text
    check_request(text, top_k, len(tokens), model.config.max_seq_len)
    return inspect_tokens(model, tokenizer, tokens, top_k, "chat" if chat else "text", source)


def main(args) -> None:
    if (args.system or args.reply is not None) and not args.chat:
        raise TowerGPTError("--system / --reply 只在 --chat 时有意义 / --system and --reply need --chat")
    check_request(args.text, args.top_k)
    model, tokenizer = load(args.ckpt, pick_device(args.device))
    model.eval()
    report = run_inspect(model, tokenizer, args.text, args.top_k, args.chat, args.system, args.reply)
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        if args.layer is not None and not 1 <= args.layer <= model.config.n_layer:
            raise TowerGPTError(f"--layer 应在 1 到 {model.config.n_layer} 之间 / --layer must be 1..{model.config.n_layer}")
        print(render(report, args.layer))
