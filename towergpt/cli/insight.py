"""看懂模型和训练的两个命令的参数：`towergpt inspect`（模型内部）和 `towergpt doctor`（训练健康吗）。

只用标准库；实现在 towergpt/inspect/ 和 towergpt/doctor/，运行时才 import。
"""

from __future__ import annotations

import argparse

INSPECT_TOP_K = 5


def add_insight_commands(commands) -> None:
    """towergpt inspect / doctor。"""
    _inspect(commands.add_parser("inspect", help="看模型内部：token、下一词预测、注意力、logit lens / look inside"))
    _doctor(commands.add_parser("doctor", help="诊断一次训练是否健康（退出码 0 健康 / 1 有问题）/ is training healthy?"))


def _inspect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    parser.add_argument("--text", required=True,
                        help="要看的文本；加 --chat 时是用户说的一句话 / the text (with --chat: the user's message)")
    parser.add_argument("--top-k", type=int, default=INSPECT_TOP_K,
                        help=f"每个位置列出概率最高的几个候选，默认 {INSPECT_TOP_K} / candidates per position")
    parser.add_argument("--chat", action="store_true",
                        help="按对话模板渲染（对话模型用）：模板 token 会被标出 / render as a chat turn")
    parser.add_argument("--system", default=None, help="--chat 时的系统提示词 / system prompt (with --chat)")
    parser.add_argument("--reply", default=None,
                        help="--chat 时助手的回答（不给则停在“轮到助手”处）/ the assistant's reply (with --chat)")
    parser.add_argument("--layer", type=int, default=None,
                        help="终端视图里注意力摘要只显示这一层（1 起），默认全部 / summarise attention of one layer")
    parser.add_argument("--json", action="store_true", help="打印完整的 JSON 对象（格式见 docs/inspect.md）")
    parser.add_argument("--device", default="cpu", help="cpu / cuda / mps / auto，默认 cpu")
    parser.set_defaults(handler="towergpt.inspect.cli:main")


def _doctor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help="运行目录（含 config.yaml 和 metrics.jsonl）/ run directory")
    parser.add_argument("--json", action="store_true", help="以 JSON 输出全部发现 / print the findings as JSON")
    parser.set_defaults(handler="towergpt.doctor.cli:main")
