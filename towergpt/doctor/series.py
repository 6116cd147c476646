"""几个数列小工具：从指标行里取出 (步, 值)，算中位数和“前面几行”的基线。

为什么到处用中位数而不用平均？训练损失一批一批地抖，偶尔一批特别难或特别容易；
中位数不理会少数几个离群值，平均会被一个 NaN 或一次突增整个带偏。
"""

from __future__ import annotations

import math
from typing import Iterator

# “一段时间的水平”取多少行的中位数：5 行里有 2 行离群也不影响结果，而且几行日志之内就能反应过来。
LEVEL_ROWS = 5

Point = tuple[int, float]   # (步, 值)


def is_number(value) -> bool:
    """有限的数（JSON 里的 null 读出来是 None；bool 也是 int 的子类，要排除）。"""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def points(rows: list[dict], key: str) -> list[Point]:
    """rows 里 key 是有限数的那些行，按出现顺序给出 (步, 值)。"""
    return [(row["step"], float(row[key])) for row in rows if is_number(row.get(key))]


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def level(series: list[Point]) -> float:
    """一段数列的“水平”：值的中位数。"""
    return median([value for _, value in series])


def steps_of(series: list[Point]) -> list[int]:
    return [step for step, _ in series]


def rolling_levels(series: list[Point], rows: int = LEVEL_ROWS) -> list[Point]:
    """每连续 rows 个点的中位数，记在这一段最后一个点的步上：平滑过的曲线。

    开头不足 rows 个点时用已有的点（第 1 个点自己就是一段）。第 1 行是初始损失，不是“碰巧容易的一批”；
    训练几步就炸掉时，前 5 行的中位数已经是炸过的数，只有这样才看得到炸之前的水平。
    """
    values = [value for _, value in series]   # 先取出值：下面每个点都要切片，省掉反复拆元组
    return [(series[end - 1][0], median(values[max(0, end - rows):end])) for end in range(1, len(series) + 1)]


def with_baselines(series: list[Point], window: int, min_history: int,
                   steps: tuple[int, int] | None = None) -> Iterator[tuple[int, float, float]]:
    """逐个点给出 (步, 值, 基线)，基线 = 它前面最多 window 个点的中位数。

    前面不足 min_history 个点时不给（刚开始没有“平时”可比）。用来找突增：值远高于它自己的“平时”。
    steps = (起, 止) 时只给这个步数范围里的点（基线照样用它前面的点），只关心一段时，不必算遍全程。
    """
    values = [value for _, value in series]
    for index in range(min_history, len(series)):
        step = series[index][0]
        if steps is None or steps[0] <= step <= steps[1]:
            yield step, values[index], median(values[max(0, index - window):index])
