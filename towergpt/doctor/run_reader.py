"""读一个运行目录：config.yaml（解析后的完整配置）与 metrics.jsonl（训练行和评估行）。

出错时说清楚是哪个文件、哪一行：目录不存在、文件缺了、某行不是 JSON、某行没有 step。
唯一放过的是**最后一行写了一半**（文件不以换行结尾）：训练正在写它，或者进程恰好在写的时候被杀；
这时跳过它，其余照常诊断（所以边训边跑 `towergpt doctor` 是安全的）。

文件名与写的一方相同（train/loop.py 写 config.yaml，train/metrics.py 写 metrics.jsonl）。
这里不 import 那两个模块：它们会带进 torch 和 TensorBoard，医生只读文本，用不着（plot.py 也是这样做的）。
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from towergpt.doctor.history import RunHistory
from towergpt.doctor.run_kind import detect_run_kind, recorded_run_kind
from towergpt.errors import TowerGPTError, where

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


def read_run(run_dir: str | Path) -> RunHistory:
    """读整个运行目录，返回 RunHistory（种类已经判断好）。"""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise TowerGPTError(f"{run_dir}: 运行目录不存在 / run directory does not exist")
    if not run_dir.is_dir():
        raise TowerGPTError(f"{run_dir}: 不是目录，请给运行目录（含 {CONFIG_FILE} 和 {METRICS_FILE}）"
                            f" / not a directory: give the run directory")
    config = read_config(run_dir / CONFIG_FILE)
    rows = read_metrics(run_dir / METRICS_FILE)
    kind, source = detect_run_kind(recorded_run_kind(run_dir), config, rows)
    return RunHistory.from_rows(config, kind, rows, source)


def read_config(path: Path) -> dict:
    """config.yaml → 嵌套的 dict（不构造 RunConfig：那会 import 模型和 torch，而且旧配置少几个键也该能读）。"""
    if not path.is_file():
        raise TowerGPTError(f"{path}: 找不到配置文件，这不像是一个训练运行目录"
                            f" / missing: this does not look like a training run directory")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        place = where(path, mark.line + 1) if mark else str(path)
        raise TowerGPTError(f"{place}: 不是合法的 YAML / invalid YAML: {getattr(error, 'problem', error)}") from None
    except UnicodeDecodeError:
        raise TowerGPTError(f"{path}: 不是 UTF-8 文本 / not UTF-8 text") from None
    if not isinstance(config, dict):
        raise TowerGPTError(f"{path}: 顶层应是映射（model: / train: ...）/ top level must be a mapping")
    return config


def read_metrics(path: Path, strict: bool = True) -> list[dict]:
    """metrics.jsonl 的每一行（dict）。strict=False 时坏行一律跳过（训练中的 LiveDoctor 用：诊断绝不能打断训练）。"""
    if not path.is_file():
        raise TowerGPTError(f"{path}: 找不到指标文件：训练还没开始写指标，或这不是运行目录"
                            f" / missing: training has not logged anything yet, or this is not a run directory")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise TowerGPTError(f"{path}: 不是 UTF-8 文本 / not UTF-8 text") from None
    lines = text.split("\n")
    partial_last = not text.endswith("\n")   # 最后一行还没写完（或被杀时写了一半）
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_row(path, number, line, strict and not (partial_last and number == len(lines)))
        if row is not None:
            rows.append(row)
    return rows


def _parse_row(path: Path, number: int, line: str, strict: bool) -> dict | None:
    """一行 → dict；坏行在 strict 时报出文件和行号，否则返回 None。"""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        if not strict:
            return None
        raise TowerGPTError(f"{where(path, number)}: 不是合法的 JSON（{error.msg}）/ corrupt line: "
                            f"not valid JSON; delete or fix this line") from None
    if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
        if not strict:
            return None
        raise TowerGPTError(f"{where(path, number)}: 每行应是带整数 step 的 JSON 对象"
                            f" / each line must be a JSON object with an integer 'step'")
    return row
