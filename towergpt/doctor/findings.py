"""一条“发现”（Finding）：医生看到了什么、凭什么这么说、该怎么办。

严重程度只有两种，决定 `towergpt doctor` 的退出码：
    problem  需要你改点什么（学习率、预热、数据……），否则这次训练白跑或越跑越差：退出码 1
    note     值得知道，但不说明训练出了错（例如吞吐下降、掩码很小但可能是数据本来如此）：不影响退出码
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PROBLEM = "problem"
NOTE = "note"

# 同一种不稳定（损失突增、梯度范数突增）出现一两次，往往自己就恢复了：先记为 note；
# 到第 3 次说明不是偶然，记为 problem。
REPEATS_FOR_PROBLEM = 3


@dataclass(frozen=True)
class Finding:
    """一条发现。id 是稳定的英文名（JSON、测试、文档都用它），说明是给人看的。

    evidence:   支撑这条结论的数：步数、数值、阈值，键是英文，值是数、字符串或它们的列表
    suggestion: 一条具体的建议，中文在前、英文在后（" / " 隔开）
    """

    id: str
    severity: str
    message_zh: str
    message_en: str
    evidence: dict
    suggestion: str

    @property
    def is_problem(self) -> bool:
        return self.severity == PROBLEM

    def to_dict(self) -> dict:
        return asdict(self)


def severity_for_repeats(count: int) -> str:
    """突增类发现的严重程度：出现 REPEATS_FOR_PROBLEM 次及以上是 problem，否则是 note。"""
    return PROBLEM if count >= REPEATS_FOR_PROBLEM else NOTE


def rounded(value: float, digits: int = 4) -> float:
    """证据里的数保留 4 位有效数字：9.016276359558105 → 9.016，足够看、JSON 也干净。"""
    if not isinstance(value, float) or value == 0.0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


def step_range(steps: list[int]) -> str:
    """[1, 10, 20] → "1–20"（说明文字里用）。"""
    return f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}–{steps[-1]}"
