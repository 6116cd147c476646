"""课程的“保真”工具：取出每章的代码块并按顺序运行、核对指向源码的链接、重写链接里的行号。

课程的每一章是一个 Markdown 文件（docs/course/NN-*.md），约定（写课的人看这里，tests/test_course.py 检查）：

- 代码块：```python 和 ```bash 的块都会被运行，```text 的块是输出或示意，不运行。
  一章里的块按出现的顺序在**同一个** Python 进程里跑（像笔记本：后面的块能用前面定义的变量），
  bash 块在同一个工作目录里用 `bash -euo pipefail` 跑。各章按文件名顺序在**同一个**工作目录里跑，
  所以后面的章可以用前面章里训练好的模型（例如第 4 章写出的 course/pretrain）。
- 慢块：紧挨在块前一行写 `<!-- slow -->` 的块默认跳过，只在跑全部时运行
  （`python -m pytest -m slow tests/test_course.py`）。没标 slow 的块不许依赖标了 slow 的块的结果。
- 源码链接：写成 [`towergpt/model.py` · `apply_rope`](../../towergpt/model.py#L123)，链接文字里 “·” 后面是
  函数或类名（方法写 `Class.method`）。测试核对第 123 行就是它的 def / class；代码改了行号就跑
  `python docs/course/course_tools.py fix-links` 按名字重写行号。
- 图：`![说明](images/xxx.png)`，每张图由 docs/course/figures/ 里某个模块的 FIGURES 生成，
  `python docs/course/make_figures.py` 重新生成全部（测试核对每张引用的图都能由它生成）。

    python docs/course/course_tools.py run [--all] [--chapter 03] [--workdir DIR]   # 跑课程的代码块
    python docs/course/course_tools.py check-links                                   # 只核对链接
    python docs/course/course_tools.py fix-links                                     # 按名字更新链接的行号
    python docs/course/course_tools.py fill-outputs [--chapter 03] [--workdir DIR]    # 跑一遍，把输出填进占位块

- 输出块：代码块后面紧跟的 ```text 块是它的输出。写新的一节时先只写一行 `（运行输出，待填）`，
  再跑 fill-outputs 填上真实的输出（测试不许课程里留着占位块）。输出里有秒数等会变的数，正文要说明。
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

COURSE = Path(__file__).resolve().parent
REPO = COURSE.parent.parent

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
SOURCE_LINK = re.compile(r"\[`(?P<file>towergpt/[\w/]+\.py)` · `(?P<name>[\w.]+)`\]\(\.\./\.\./(?P<path>towergpt/[\w/]+\.py)#L(?P<line>\d+)\)")
PLACEHOLDER = "（运行输出，待填）"
IMAGE_LINK = re.compile(r"!\[[^\]]*\]\((images/[\w.-]+\.png)\)")
RUNNABLE = ("python", "bash")      # 这两种代码块会被运行；```text 是输出或示意


@dataclass
class Block:
    chapter: str
    index: int          # 本章的第几个块（从 1 数）
    line: int           # 块在文件里开始的行号
    language: str       # python / bash
    source: str
    slow: bool


def line_at(text: str, offset: int) -> int:
    """text 里第 offset 个字符在第几行（从 1 数）。"""
    return text.count("\n", 0, offset) + 1


def where(path: Path, line: int) -> str:
    """一个块的名字，出错信息和每块的用时、输出都用它认块：docs/course/03-block.md:40。"""
    return f"docs/course/{path.name}:{line}"


def chapters() -> list[Path]:
    """课程各章，按文件名（NN-名字.md）排序。"""
    return sorted(COURSE.glob("[0-9][0-9]-*.md"))


def blocks(path: Path) -> list[Block]:
    """一章里要运行的代码块（python / bash），带行号和是否标了 slow。"""
    text = path.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        language = match.group(1)
        if language not in RUNNABLE:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        found.append(Block(path.stem, len(found) + 1, line_at(text, match.start()), language,
                           match.group(2), before.strip() == "<!-- slow -->"))
    return found


# ---- 运行 -----------------------------------------------------------------------------------

DRIVER = r'''
import json, subprocess, sys, time, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for block in blocks:
    print(f"\n===== {block['where']} ({block['language']}) =====", flush=True)
    started = time.perf_counter()
    if block["language"] == "python":
        exec(compile(block["source"], block["where"], "exec"), namespace)
    else:
        subprocess.run(["bash", "-euo", "pipefail", "-c", block["source"]], check=True)
    sys.stdout.flush()
    print(f"===== {block['where']}: {time.perf_counter() - started:.1f} s =====", flush=True)
'''


def run_chapter(path: Path, workdir: Path, include_slow: bool, timeout_s: float = 900) -> subprocess.CompletedProcess:
    """在 workdir 里按顺序跑一章的代码块（一个进程），返回 CompletedProcess（stdout 里有每块的用时）。"""
    selected = [b for b in blocks(path) if include_slow or not b.slow]
    payload = [{"where": where(path, b.line), "language": b.language, "source": b.source}
               for b in selected]
    return subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(payload), text=True, cwd=workdir,
                          capture_output=True, timeout=timeout_s)


def block_seconds(stdout: str) -> dict[str, float]:
    """从 run_chapter 的输出里读出每块的用时：{"docs/course/03-block.md:40": 2.5, ...}。"""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^===== (\S+): ([\d.]+) s =====$", stdout, re.M)}


def block_outputs(stdout: str) -> dict[str, str]:
    """从 run_chapter 的输出里取出每块打印的内容：{"docs/course/03-block.md:40": "...", ...}。"""
    pattern = re.compile(r"^===== (\S+) \((?:python|bash)\) =====\n(.*?)^===== \1: [\d.]+ s =====$", re.S | re.M)
    return {m.group(1): m.group(2).strip("\n") for m in pattern.finditer(stdout)}


def placeholder_blocks(path: Path) -> list[int]:
    """一章里还是占位（PLACEHOLDER）的输出块所在的行号。"""
    text = path.read_text(encoding="utf-8")
    return [line_at(text, m.start()) for m in FENCE.finditer(text)
            if m.group(1) == "text" and m.group(2).strip() == PLACEHOLDER]


def fill_outputs(path: Path, stdout: str) -> int:
    """把紧跟在代码块后面的占位输出块换成这次运行真实打印的内容，返回填了几块。"""
    text = path.read_text(encoding="utf-8")
    outputs = block_outputs(stdout)
    matches = list(FENCE.finditer(text))
    pieces, last, filled = [], 0, 0
    for code, output in zip(matches, matches[1:]):
        if output.group(1) != "text" or output.group(2).strip() != PLACEHOLDER or code.group(1) not in RUNNABLE:
            continue
        if text[code.end():output.start()].strip():
            continue                                   # 中间隔着正文：不是这块代码的输出
        name = where(path, line_at(text, code.start()))
        if name not in outputs:
            continue                                   # 这次没跑（慢块）或者没打印
        start = output.start(2)
        pieces += [text[last:start], outputs[name] + "\n"]
        last = output.end(2)
        filled += 1
    path.write_text("".join(pieces) + text[last:], encoding="utf-8")
    return filled


# ---- 链接 -----------------------------------------------------------------------------------

def defines(line: str, name: str) -> bool:
    """这一行是否定义了 name（方法 Class.method 只看最后一段）。"""
    short = name.rsplit(".", 1)[-1]
    return re.match(rf"\s*(async\s+def|def|class)\s+{re.escape(short)}\b", line) is not None


def definition_line(path: Path, name: str) -> int | None:
    """name 在文件里的定义行（从 1 数）。Class.method 先找到类，再在类里找方法。"""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = 0
    if "." in name:
        owner = name.split(".")[0]
        start = next((i for i, line in enumerate(lines) if defines(line, owner)), None)
        if start is None:
            return None
    return next((i + 1 for i in range(start, len(lines)) if defines(lines[i], name)), None)


def link_problems(path: Path) -> list[str]:
    """一章里所有源码链接的问题：文件不存在、名字不存在、行号不对、文字与路径不一致。"""
    problems = []
    text = path.read_text(encoding="utf-8")
    for match in SOURCE_LINK.finditer(text):
        place = f"{path.name}:{line_at(text, match.start())}"
        file, name, line = match.group("path"), match.group("name"), int(match.group("line"))
        if match.group("file") != file:
            problems.append(f"{place}: 链接文字 {match.group('file')} 与路径 {file} 不一致")
            continue
        source = REPO / file
        if not source.is_file():
            problems.append(f"{place}: 没有文件 {file}")
            continue
        actual = definition_line(source, name)
        if actual is None:
            problems.append(f"{place}: {file} 里没有 {name}")
        elif actual != line:
            problems.append(f"{place}: {file} 里 {name} 在第 {actual} 行，链接写的是 {line}（跑 fix-links）")
    return problems


def fix_links(path: Path) -> int:
    """按名字把链接里的行号改成当前的定义行，返回改了几处。"""
    text = path.read_text(encoding="utf-8")
    changed = 0

    def update(match: re.Match) -> str:
        nonlocal changed
        actual = definition_line(REPO / match.group("path"), match.group("name"))
        if actual is None or actual == int(match.group("line")):
            return match.group(0)
        changed += 1
        return match.group(0)[:match.start("line") - match.start()] + str(actual) + ")"

    path.write_text(SOURCE_LINK.sub(update, text), encoding="utf-8")
    return changed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--all", action="store_true", help="连标了 slow 的块一起跑")
    run.add_argument("--chapter", help="只跑文件名以它开头的章，例如 03")
    run.add_argument("--workdir", help="工作目录（默认新建一个临时目录）")
    fill = sub.add_parser("fill-outputs")
    fill.add_argument("--all", action="store_true", help="连标了 slow 的块一起跑（慢块后面的占位才会被填）")
    fill.add_argument("--chapter", help="只填文件名以它开头的章（--workdir 里要有前面各章跑出的东西）")
    fill.add_argument("--workdir", help="工作目录（默认新建一个临时目录）")
    sub.add_parser("check-links")
    sub.add_parser("fix-links")
    args = parser.parse_args(argv)

    if args.command == "check-links":
        problems = [p for path in chapters() for p in link_problems(path)]
        print("\n".join(problems) or "链接都对 / all links are true")
        return 1 if problems else 0
    if args.command == "fix-links":
        print(f"改了 {sum(fix_links(path) for path in chapters())} 处 / links updated")
        return 0
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="towergpt-course-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for path in chapters():
        if args.chapter and not path.name.startswith(args.chapter):
            continue
        started = time.perf_counter()
        result = run_chapter(path, workdir, args.all)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.returncode:
            print(f"{path.name} 失败 / failed", file=sys.stderr)
            return 1
        print(f"{path.name}: {time.perf_counter() - started:.0f} s（工作目录 / workdir {workdir}）")
        if args.command == "fill-outputs":
            print(f"{path.name}: 填了 {fill_outputs(path, result.stdout)} 个输出块 / outputs filled")
    return 0


if __name__ == "__main__":
    sys.exit(main())
