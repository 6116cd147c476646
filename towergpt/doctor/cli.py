"""`towergpt doctor RUN [--json]`：诊断一个运行目录，打印发现与结论。

退出码：
    0  健康（没有 problem；可能有 note）
    1  发现了至少一个 problem
    2  读不了这个运行（目录、config.yaml、metrics.jsonl 缺了或坏了）：TowerGPTError，由 towergpt.cli 打印成一行
"""

from __future__ import annotations

import sys

from towergpt.doctor.checks import diagnose
from towergpt.doctor.report import is_healthy, to_json, to_text
from towergpt.doctor.run_reader import read_run


def main(args) -> None:
    """args 来自 cli/insight.py：args.run（运行目录）、args.json（是否输出 JSON）。"""
    history = read_run(args.run)
    findings = diagnose(history)
    print(to_json(args.run, history, findings) if args.json else to_text(args.run, history, findings))
    if not is_healthy(findings):
        sys.exit(1)
