"""边训边诊断：训练循环每写一行指标（训练行和评估行）就喂给 LiveDoctor，新出现的发现打印一行。

    doctor = LiveDoctor.for_run(run_dir, config.to_dict(), data_kind)   # 开训时，只在主进程
    for finding in doctor.feed(row):                                     # 每写一行之后
        tqdm.write(warning_line(finding))

规则：**每种发现（id）一次运行只提醒一次**。问题往往会持续很多步（损失一直不降、吞吐一直很低），
每步都喊一遍只会淹没进度条；想看完整的证据和建议，随时运行 `towergpt doctor RUN`。
续训时先读入 metrics.jsonl 里已有的行：那些行里已有的发现算“已经提醒过”，不再重复。

用的是离线医生的同一个 diagnose（checks.py），只是喂给它的行有上限，让每次检查的开销不随训练变长：
最早的 LIVE_HEAD_ROWS 个训练行（第 1 步的初始损失、“开头的水平”要用）+ 最近的 LIVE_TAIL_ROWS 个训练行
+ 全部评估行（评估行很少）。五百来行跑一遍全部检查只要几毫秒，而且只在写日志的那些步才跑。

诊断绝不能打断训练：检查本身若抛出异常，只打印一行说明，之后本次运行不再做实时诊断。
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Iterable

from towergpt.doctor.checks import diagnose
from towergpt.doctor.findings import NOTE, Finding
from towergpt.doctor.history import RunHistory, is_eval_row, is_training_row
from towergpt.doctor.run_kind import detect_run_kind, record_run_kind
from towergpt.doctor.run_reader import METRICS_FILE, read_metrics

# 开头留 20 行：初始损失只看第 1 步，“开头的水平”看前 5 行，突增检查要前面 5~10 行作“平时”。
LIVE_HEAD_ROWS = 20
# 最近留 500 行（每 10 步一行时是 5000 步）：足够看出发散、不降、吞吐下降的趋势，
# 全部检查跑一遍只要几毫秒（慢的 2 核 CPU 上约 4 毫秒），而且只在写日志的步才跑。
LIVE_TAIL_ROWS = 500

ICONS = {"problem": "⚠", "note": "ℹ"}


class LiveDoctor:
    """攒着到目前为止的指标行；feed(row) 返回这一行之后**新出现**的发现。"""

    def __init__(self, config: dict, kind: str = "", history_rows: Iterable[dict] = ()):
        """config：解析后的完整配置（RunConfig.to_dict()）；kind：数据的种类（空串 = 不知道，按指标猜）；
        history_rows：续训前 metrics.jsonl 里已有的行，其中已有的发现不再提醒。"""
        self.config = config
        self.kind = kind
        self.head: list[dict] = []
        self.tail: deque[dict] = deque(maxlen=LIVE_TAIL_ROWS)
        self.evals: list[dict] = []
        self.reported: set[str] = set()
        self.disabled = False
        history_rows = list(history_rows)
        for row in history_rows:
            self._remember(row)
        if history_rows:
            self.reported = {finding.id for finding in diagnose(self.history(), live=True)}

    @classmethod
    def for_run(cls, run_dir: str | Path, config: dict, kind: str) -> "LiveDoctor":
        """开训时调用：把种类记进 RUN/run.json（给离线医生看），读入续训前已有的行，返回 LiveDoctor。"""
        record_run_kind(run_dir, kind)
        path = Path(run_dir) / METRICS_FILE
        rows = read_metrics(path, strict=False) if path.is_file() else []
        return cls(config, kind, rows)

    def history(self) -> RunHistory:
        train = self.head + list(self.tail)
        kind, source = detect_run_kind(self.kind, self.config, train)
        return RunHistory(self.config, kind, train, list(self.evals), source)

    def feed(self, row: dict) -> list[Finding]:
        """记下一行（与 metrics.jsonl 里的样子相同：NaN/inf 变成 None），返回新出现的发现。"""
        if self.disabled:
            return []
        self._remember({key: _json_value(value) for key, value in row.items()})
        try:
            findings = diagnose(self.history(), live=True)
        except Exception as error:   # noqa: BLE001 —— 诊断出错不能让训练停下
            self.disabled = True
            return [_doctor_failed(error)]
        new = [finding for finding in findings if finding.id not in self.reported]
        self.reported |= {finding.id for finding in new}
        return new

    def _remember(self, row: dict) -> None:
        if is_eval_row(row):
            self.evals.append(row)
        elif is_training_row(row):
            (self.head if len(self.head) < LIVE_HEAD_ROWS else self.tail).append(row)


def warning_line(finding: Finding, run_dir: str | Path = "") -> str:
    """一条发现写成一行：图标、id、中文说明 / 英文说明，以及去哪里看证据和建议。"""
    where = f" {run_dir}" if run_dir else ""
    return (f"{ICONS.get(finding.severity, '·')} 训练医生 / doctor [{finding.id}] {finding.message_zh} / "
            f"{finding.message_en}（证据与建议 / details: towergpt doctor{where}）")


def _json_value(value):
    """与 metrics.jsonl 写法一致：非有限的浮点数记为 None（JSON 的 null）。"""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _doctor_failed(error: Exception) -> Finding:
    return Finding(
        "doctor_failed", NOTE,
        f"实时诊断出错，本次训练不再实时诊断（训练照常进行）：{error!r}",
        f"the live doctor failed and is switched off for this run (training goes on): {error!r}",
        {"error": repr(error)}, "训练结束后运行 towergpt doctor RUN / run `towergpt doctor RUN` afterwards")
