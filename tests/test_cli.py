"""命令行的骨架：每个命令都找得到实现、`--help` 不加载 torch、参数默认值与实现一致、坏掉的命令大声报错。"""

import argparse
import importlib
import subprocess
import sys

import pytest

from towergpt.cli import build_parser, resolve_handler
from towergpt.cli import tools
from towergpt.errors import TowerGPTError


def leaf_parsers(parser: argparse.ArgumentParser, prefix=()):
    """(命令路径, 解析器)：例如 (("data", "prepare"), <parser>)。"""
    subcommands = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subcommands:
        yield prefix, parser
        return
    for name, child in subcommands[0].choices.items():
        yield from leaf_parsers(child, prefix + (name,))


def test_every_command_has_an_implementation_that_imports():
    """逐个 import 每个命令的实现：一个模块坏了，这里就失败，而不是那个命令悄悄消失。"""
    commands = dict(leaf_parsers(build_parser()))
    expected = {("tokenizer", "train"), ("data", "prepare"), ("data", "convert"), ("data", "merge"),
                ("data", "shuffle"), ("data", "clean"), ("data", "dedup"), ("quickstart",), ("pretrain",),
                ("sft",), ("dpo",), ("eval",), ("plot",), ("export",), ("import",), ("serve",), ("generate",),
                ("chat",)}
    assert expected <= set(commands)
    for path, parser in commands.items():
        handler = resolve_handler(parser.get_default("handler"))
        assert callable(handler), path


def test_help_does_not_import_torch():
    code = ("import sys; from towergpt.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'numpy', 'matplotlib', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_argument_defaults_match_the_implementations():
    """参数写在 cli/tools.py（只用标准库），取值与实现模块的常量必须一致。"""
    from towergpt import plot
    from towergpt.data import clean, convert, dedup, shuffle
    from towergpt.hf import export
    from towergpt.server import launch

    assert tools.PLOT_METRICS == tuple(plot.METRICS) and tools.PLOT_X_AXES == tuple(plot.X_AXES)
    assert tools.CLEAN_CHAR_CLASSES == tuple(sorted(clean.CHAR_CLASSES))
    assert tools.CONVERT_MAX_CHARS == convert.DEFAULT_MAX_CHARS
    assert tools.SHUFFLE_MEMORY_MB == shuffle.DEFAULT_MEMORY_MB
    assert (tools.DEDUP_THRESHOLD, tools.DEDUP_NUM_PERM, tools.DEDUP_NGRAM) == (
        dedup.DEFAULT_THRESHOLD, dedup.DEFAULT_NUM_PERM, dedup.DEFAULT_NGRAM)
    assert set(export.DTYPES) <= set(tools.EXPORT_DTYPES)
    assert tools.API_KEY_ENV == launch.API_KEY_ENV


def test_export_formats_and_dtypes_exist():
    """--format 的每一项都有实现；--dtype 的每个取值至少有一种格式认识，每种格式的精度都在 --dtype 里。"""
    pytest.importorskip("gguf")
    from towergpt.hf import export
    from towergpt.llamacpp import export_gguf

    known = set(export.DTYPES) | set(export.ALIASES) | set(export_gguf.DTYPES) | set(export_gguf.ALIASES)
    assert set(tools.EXPORT_DTYPES) <= known
    assert set(export.DTYPES) | set(export_gguf.DTYPES) <= set(tools.EXPORT_DTYPES)
    for handler in tools.EXPORT_FORMATS.values():
        module, function = handler.split(":")
        assert callable(getattr(importlib.import_module(module), function))


def test_a_missing_optional_package_is_one_line_and_a_broken_module_is_loud(tmp_path, monkeypatch):
    (tmp_path / "needs_missing_package.py").write_text("import no_such_package_for_towergpt\n\ndef main(args): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TowerGPTError, match="no_such_package_for_towergpt"):
        resolve_handler("needs_missing_package:main")
    with pytest.raises(ModuleNotFoundError):           # 我们自己的模块不见了：是 bug，要 traceback
        resolve_handler("towergpt.no_such_module:main")


def test_output_into_a_closed_pipe_ends_quietly():
    """`towergpt … | head -1`：head 读完一行就走了，我们再写就是 BrokenPipeError——不该变成一段 traceback。"""
    code = ("import sys; from towergpt.cli import main; from towergpt.cli import parser; "
            "import towergpt.cli as cli; "
            "cli.resolve_handler = lambda spec: (lambda args: [print('行 / line', i) for i in range(100000)]); "
            "main(['doctor', 'somewhere'])")
    result = subprocess.run(f'"{sys.executable}" -c "{code}" | head -1', shell=True, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "行 / line 0"
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
