"""时间预算：按分钟而不是按步数训练（train.max_minutes）。

为什么要按时间？
    “训练 8 分钟”在不同的机器上是完全不同的步数：快的机器 900 步，慢的 400 步，
    同一台机器被别的程序占用时还会忽快忽慢。如果先测几步的耗时、换算成步数再按步数训练，
    测得偏慢就会提前结束、浪费剩下的时间，测得偏快就会超时。
    所以预算模式下，学习率曲线直接跟着“已用时间 / 预算”走：用掉一半时间，余弦曲线就走到一半，
    到时就保存并停止。机器快慢只影响走了多少步，曲线总能完整走完、准时结束。

记账（BudgetClock）：
    已用时间 = 训练循环里的一切：训练步、评估、保存检查点都算（它们都花用户的时间）。
    模型搭建、读数据这些循环开始前的准备不算。已用时间随检查点保存，续训时接着算，
    所以中断再续训，曲线从中断处继续，而不是从头再来。

什么时候停（should_finish）：
    每做完一步就问：“再做一步，加上收尾（最后一次评估 + 保存），会不会超出预算？”会，就把这一步当作最后一步。
    收尾要多久用上一次实测的评估、保存耗时；还没测过时按训练步估计（评估只做前向，约一步的 1/3 一批）。
    所以哪怕机器突然变慢，最多也只超出一步的时间。

和 max_steps 一起用：两者都设时，谁先用完听谁的；学习率曲线取两者中进度更靠后的那个。
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class BudgetState:
    """随检查点保存的记账数据（秒）：续训后要原样恢复，曲线和停止时刻才与不中断时一致。"""

    used_s: float = 0.0          # 预算已用掉的时间
    warmup_end_s: float = 0.0    # 预热结束时的已用时间：余弦衰减从这里开始按时间走
    step_s: float = 0.0          # 最近一步的耗时
    eval_s: float = -1.0         # 最近一次评估的耗时（-1 = 还没测过）
    save_s: float = 0.0          # 最近一次保存检查点的耗时


class BudgetClock:
    """量训练循环花掉的时间；clock 默认是 time.perf_counter，测试可以换成一个假时钟。"""

    def __init__(self, state: BudgetState, clock=time.perf_counter):
        self.state = state
        self.clock = clock
        self._mark = clock()

    def tick(self) -> float:
        """把上次 tick 以来的时间记入已用时间，返回这段时间（秒）。"""
        now = self.clock()
        spent, self._mark = now - self._mark, now
        self.state.used_s += spent
        return spent


def decay_progress(state: BudgetState, budget_s: float) -> float:
    """预热之后，余弦衰减按时间走了多少（0 到 1）。"""
    span = max(budget_s - state.warmup_end_s, 1e-9)
    return min(1.0, max(0.0, (state.used_s - state.warmup_end_s) / span))


def finish_seconds(state: BudgetState, eval_batches: int, grad_accum: int) -> float:
    """收尾（最后一次评估 + 保存）预计要多少秒：有实测用实测，没有就按训练步估计。

    评估一批只做前向（约一次前向 + 反向的 1/3），一步训练有 grad_accum 批。
    """
    if state.eval_s >= 0:
        evaluation = state.eval_s
    else:
        evaluation = max(eval_batches, 1) * state.step_s / max(grad_accum, 1) / 3
    return evaluation + state.save_s


def should_finish(state: BudgetState, budget_s: float, eval_batches: int, grad_accum: int) -> bool:
    """刚做完一步：再做一步加上收尾就会超出预算吗？会，这一步就是最后一步。"""
    expected = state.used_s + state.step_s + finish_seconds(state, eval_batches, grad_accum)
    return expected > budget_s
