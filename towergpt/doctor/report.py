"""把诊断写出来：给人看的终端文字，给程序读的 JSON（格式见 docs/doctor.md）。

两种输出内容相同：运行的种类、几个关键的数（summary）、每条发现（说明、证据、建议）、最后一行结论。
"""

from __future__ import annotations

import json
from pathlib import Path

from towergpt.doctor.checks_loss import loss_points
from towergpt.doctor.findings import Finding, rounded
from towergpt.doctor.history import RunHistory
from towergpt.doctor.series import LEVEL_ROWS, level, points

KIND_NAMES = {"pretrain": "预训练", "sft": "对话微调", "dpo": "偏好微调", "grpo": "强化学习", "unknown": "不认识的目标"}
KIND_SOURCES = {"run.json": "记录在 run.json", "metrics": "由指标名推断", "config": "由配置推断"}
MARKS = {"problem": "✗ 问题 / problem", "note": "· 提示 / note"}


def is_healthy(findings: list[Finding]) -> bool:
    """没有 problem 就是健康（note 不算）。"""
    return not any(finding.is_problem for finding in findings)


def verdict(findings: list[Finding]) -> str:
    problems = sum(finding.is_problem for finding in findings)
    notes = len(findings) - problems
    if problems:
        return f"有问题：{problems} 个问题、{notes} 条提示 / unhealthy: {problems} problem(s), {notes} note(s)"
    if notes:
        return f"健康（{notes} 条提示）/ healthy ({notes} note(s))"
    return "健康：没有发现问题 / healthy: no problems found"


def summary(history: RunHistory) -> dict:
    """几个关键的数：行数、步数范围、损失的开头与最近、最好的验证损失、吞吐的中位数。"""
    losses = loss_points(history)
    evals = points(history.evals, "val_loss")
    speed = points(history.train, "tok_per_s")
    best = min(evals, key=lambda point: point[1]) if evals else None
    steps = [row["step"] for row in history.train]
    return {
        "training_rows": len(history.train), "eval_rows": len(history.evals),
        "steps": [steps[0], steps[-1]] if steps else [],
        "first_loss": rounded(losses[0][1]) if losses else None,
        "recent_loss": rounded(level(losses[-LEVEL_ROWS:])) if losses else None,
        "best_val_loss": rounded(best[1]) if best else None, "best_val_step": best[0] if best else None,
        "tok_per_s": rounded(level(speed)) if speed else None,
    }


def to_json(run_dir: str | Path, history: RunHistory, findings: list[Finding]) -> str:
    """整个报告是一个 JSON 对象（缩进两格：程序照样读，人也看得清）。"""
    report = {
        "run": str(run_dir), "kind": history.kind, "kind_source": history.kind_source,
        "healthy": is_healthy(findings), "verdict": verdict(findings),
        "problems": sum(finding.is_problem for finding in findings),
        "notes": sum(not finding.is_problem for finding in findings),
        "summary": summary(history), "findings": [finding.to_dict() for finding in findings],
    }
    return json.dumps(report, ensure_ascii=False, indent=2)


def to_text(run_dir: str | Path, history: RunHistory, findings: list[Finding]) -> str:
    lines = [f"训练医生 / doctor: {run_dir}", _kind_line(history), _summary_line(summary(history)), ""]
    for finding in findings:
        lines += _finding_lines(finding) + [""]
    lines.append(f"结论 / verdict: {verdict(findings)}")
    return "\n".join(lines)


def _kind_line(history: RunHistory) -> str:
    name = KIND_NAMES.get(history.kind, history.kind)
    source = KIND_SOURCES.get(history.kind_source, history.kind_source)
    return f"种类 / kind: {name} {history.kind}（{source}）"


def _summary_line(numbers: dict) -> str:
    if not numbers["steps"]:
        return "还没有训练行 / no training rows yet"
    parts = [f"训练行 / rows: {numbers['training_rows']}（第 {numbers['steps'][0]}–{numbers['steps'][1]} 步）",
             f"评估 / evals: {numbers['eval_rows']}"]
    if numbers["first_loss"] is not None:
        parts.append(f"损失 / loss: {numbers['first_loss']:g} → {numbers['recent_loss']:g}")
    if numbers["best_val_loss"] is not None:
        parts.append(f"最好的 val_loss: {numbers['best_val_loss']:g}（第 {numbers['best_val_step']} 步）")
    if numbers["tok_per_s"] is not None:
        parts.append(f"tok/s: {numbers['tok_per_s']:,.0f}")
    return " · ".join(parts)


def _finding_lines(finding: Finding) -> list[str]:
    evidence = ", ".join(f"{key}={_plain(value)}" for key, value in finding.evidence.items())
    return [f"{MARKS.get(finding.severity, finding.severity)} [{finding.id}]",
            f"  {finding.message_zh}",
            f"  {finding.message_en}",
            f"  证据 / evidence: {evidence}",
            f"  建议 / suggestion: {finding.suggestion}"]


def _plain(value) -> str:
    """证据的值写成紧凑的 JSON（列表、dict 也一眼能读）。"""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, separators=(",", ":"))
