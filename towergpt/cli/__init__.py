"""命令行入口 `towergpt`：解析参数，找到这个命令的实现，把用户错误打印成一行。

四个文件，各管一件事：

    parser.py      核心命令（分词器、数据准备、训练、生成、聊天、quickstart）的全部参数
    tools.py       其余命令（eval、plot、export、import、serve、data 工具）的全部参数
    insight.py     看懂模型与训练的命令（inspect、doctor）的参数
    handlers.py    几个核心命令的“胶水”：把参数交给真正干活的函数

参数定义只用标准库（argparse），所以 `towergpt --help` 不必加载 torch，一眨眼就出来。
每个子命令在解析器里记下它的实现，写成 "模块:函数" 的字符串（例如 "towergpt.generate:generate_cli"）；
只有真正要运行的那个命令才被 import。于是实现模块可以在顶层正常 import torch，
而一个 import 失败的模块不会悄悄“少掉”一个命令：运行它时照常报错（测试会逐个 import 所有实现）。
"""

from __future__ import annotations

import importlib
import os
import sys

from towergpt.cli.parser import build_parser
from towergpt.errors import TowerGPTError


def resolve_handler(spec: str):
    """ "towergpt.generate:generate_cli" → 那个函数。缺少可选依赖时给出一行安装提示。"""
    module_name, function_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and not error.name.startswith("towergpt"):
            raise TowerGPTError(
                f"这个命令需要 Python 包 {error.name}，请先安装（可选依赖见 README，例如 pip install -e \".[serve]\"）"
                f" / this command needs the package {error.name}: install it (see the README's extras)"
            ) from None
        raise                      # 我们自己的模块找不到：这是 bug，照常抛出 traceback
    return getattr(module, function_name)


def main(argv: list[str] | None = None) -> None:
    """命令行主函数：用户错误打印一行并以状态码 2 退出，Ctrl-C 以 130 退出。"""
    args = build_parser().parse_args(argv)
    try:
        resolve_handler(args.handler)(args)
    except TowerGPTError as error:
        print(f"错误 / error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\n已中断 / interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # 输出接给了提前退出的程序（例如 `towergpt doctor RUN | head`）：不是错误，安静地结束。
        # 把标准输出换成 /dev/null，免得 Python 退出时冲刷缓冲区再报一次同样的错
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
