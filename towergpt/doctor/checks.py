"""全部检查的清单：diagnose(history) 依次跑一遍，返回所有发现（problem 在前，同级按清单顺序）。

离线的 `towergpt doctor` 与训练中的 LiveDoctor 都调用 diagnose：同一批函数、同一套阈值。
加一个新检查：写一个 check_xxx(history) -> Finding | None，放进 CHECKS，在 docs/doctor.md 里写上它。
"""

from __future__ import annotations

from towergpt.doctor.checks_loss import (MIN_ROWS_TO_JUDGE, check_divergence, check_initial_loss,
                                         check_loss_not_falling, check_no_targets, check_non_finite,
                                         check_overfitting, loss_points)
from towergpt.doctor.checks_objective import check_dpo_rewards_fall, check_dpo_stuck, check_sft_mask
from towergpt.doctor.checks_rl import check_rl_no_signal, check_rl_reward_flat, check_rl_truncated
from towergpt.doctor.checks_stability import (check_grad_norm_spikes, check_loss_spikes, check_throughput,
                                              check_warmup)
from towergpt.doctor.findings import NOTE, Finding
from towergpt.doctor.history import RunHistory

CHECKS = (
    check_initial_loss, check_no_targets, check_non_finite, check_loss_not_falling, check_divergence,
    check_loss_spikes, check_grad_norm_spikes, check_warmup, check_overfitting, check_throughput,
    check_sft_mask, check_dpo_stuck, check_dpo_rewards_fall, check_rl_no_signal, check_rl_reward_flat,
    check_rl_truncated,
)


def diagnose(history: RunHistory, live: bool = False) -> list[Finding]:
    """跑全部检查。live=True（训练中）时不报“行数太少”：训练刚开始时本来就少。"""
    findings = [finding for check in CHECKS if (finding := check(history)) is not None]
    if not live and (note := too_short(history)) is not None:
        findings.append(note)
    return sorted(findings, key=lambda finding: not finding.is_problem)


def too_short(history: RunHistory) -> Finding | None:
    """有限的训练行不到 MIN_ROWS_TO_JUDGE 行：看趋势的检查（不降、发散、突增……）都没法做。"""
    # GRPO 的损失可以恰好是 0（全部组都没有信号时优势全为 0），那些行照样是有内容的训练行
    rows = len(history.train) if history.kind == "grpo" else len(loss_points(history))
    if rows >= MIN_ROWS_TO_JUDGE:
        return None
    return Finding(
        "too_short", NOTE,
        f"只有 {rows} 个有限的训练行，看趋势的检查至少要 {MIN_ROWS_TO_JUDGE} 行：这次能说的不多",
        f"only {rows} finite training rows; the trend checks need at least {MIN_ROWS_TO_JUDGE}, so little can be said",
        {"rows": rows, "min_rows": MIN_ROWS_TO_JUDGE, "log_every": history.setting("train", "log_every")},
        "多训练一会儿，或把 train.log_every 调小（每多少步写一行）/ train longer, or lower train.log_every")
