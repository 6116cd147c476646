"""稳定与速度：损失和梯度范数有没有突然跳起来、预热够不够长、每秒处理的 token 有没有掉下去。

    1. check_loss_spikes       一行的损失比它前面 10 行的中位数高 1 nat 以上
    2. check_grad_norm_spikes  一行的梯度范数是它前面 10 行中位数的 10 倍以上
    3. check_warmup            不稳定（突增、NaN）恰好出现在学习率刚升到峰值的时候
    4. check_throughput        最近连续几行的 tok/s 不到前半程的一半

突增出现一两次往往会自己恢复（记为 note），第 3 次起记为 problem（findings.severity_for_repeats）；
没恢复的由 checks_loss.check_divergence 报告。
"""

from __future__ import annotations

import math

from towergpt.doctor.checks_loss import MAX_LISTED_STEPS, loss_points, non_finite_steps
from towergpt.doctor.findings import NOTE, PROBLEM, Finding, rounded, severity_for_repeats
from towergpt.doctor.history import RunHistory
from towergpt.doctor.series import level, points, steps_of, with_baselines

# “平时”= 前面最多 10 行的中位数；至少有 5 行才开始比（刚开始没有平时可比）。
SPIKE_WINDOW_ROWS = 10
SPIKE_MIN_HISTORY_ROWS = 5
# 损失突增：比平时高 1 nat（正确 token 的概率一下子掉到 1/e）。批次之间的正常抖动只有零点几 nat。
LOSS_SPIKE_NATS = 1.0
# 梯度范数突增：平时的 10 倍。正常训练中梯度范数一步之间变化不过两三倍；
# 而且只看超过 1.0 的（默认的裁剪阈值 optim.grad_clip=1.0，低于它的梯度原样使用，再跳也伤不到参数）。
GRAD_SPIKE_FACTOR = 10.0
GRAD_SPIKE_MIN_NORM = 1.0

# 预热的“危险窗口”：从预热过半（学习率已到峰值的一半）到预热结束后再走 max(预热步数, 10) 步。
# 不稳定恰好出现在这里（而且那一步的学习率 ≥ 峰值的一半），说明学习率升得太快。
WARMUP_AFTER_MIN_STEPS = 10
WARMUP_HIGH_LR_FRACTION = 0.5

# 吞吐下降：最近至少 3 行连续低于前半程中位数的一半。一半是“明显的问题”（别的进程抢 CPU/GPU、
# 过热降频、换页、数据读取卡住），小于它的起伏在共享机器上很常见。第 1 步含预热开销（编译、分配内存），不计。
THROUGHPUT_DROP_FRACTION = 0.5
THROUGHPUT_MIN_SLOW_ROWS = 3
THROUGHPUT_MIN_ROWS = 10


# ---------------------------------------------------------------------------
# 1. 损失突增
# ---------------------------------------------------------------------------

def loss_spikes(history: RunHistory, steps: tuple[int, int] | None = None) -> list[dict]:
    """[{step, loss, baseline}]：损失比前面 10 行的中位数高出 LOSS_SPIKE_NATS 以上的行（可只看 steps 范围内的）。"""
    found = with_baselines(loss_points(history), SPIKE_WINDOW_ROWS, SPIKE_MIN_HISTORY_ROWS, steps)
    return [{"step": step, "loss": rounded(value), "baseline": rounded(baseline)}
            for step, value, baseline in found if value > baseline + LOSS_SPIKE_NATS]


def check_loss_spikes(history: RunHistory) -> Finding | None:
    spikes = loss_spikes(history)
    if not spikes:
        return None
    first = spikes[0]
    return Finding(
        "loss_spikes", severity_for_repeats(len(spikes)),
        f"损失突增 {len(spikes)} 次：第一次在第 {first['step']} 步，{first['loss']:.4g}（前面 10 行的中位数 "
        f"{first['baseline']:.4g}）",
        f"loss spikes: {len(spikes)}; the first at step {first['step']}: {first['loss']:.4g} against a median of "
        f"{first['baseline']:.4g} over the rows before",
        {"count": len(spikes), "spikes": spikes[:MAX_LISTED_STEPS], "threshold_nats": LOSS_SPIKE_NATS},
        "偶尔一次且很快恢复可以不管；反复出现就降低 optim.lr、加长 optim.warmup_steps，并保持 optim.grad_clip=1.0"
        " / one spike that recovers is fine; repeated spikes: lower optim.lr, lengthen the warmup, keep grad_clip=1.0")


# ---------------------------------------------------------------------------
# 2. 梯度范数突增
# ---------------------------------------------------------------------------

def grad_norm_spikes(history: RunHistory, steps: tuple[int, int] | None = None) -> list[dict]:
    """[{step, grad_norm, baseline}]：梯度范数（裁剪前）超过前面 10 行中位数 GRAD_SPIKE_FACTOR 倍的行。"""
    found = with_baselines(points(history.train, "grad_norm"), SPIKE_WINDOW_ROWS, SPIKE_MIN_HISTORY_ROWS, steps)
    return [{"step": step, "grad_norm": rounded(value), "baseline": rounded(baseline)}
            for step, value, baseline in found
            if value > GRAD_SPIKE_MIN_NORM and value > GRAD_SPIKE_FACTOR * baseline]


def check_grad_norm_spikes(history: RunHistory) -> Finding | None:
    spikes = grad_norm_spikes(history)
    if not spikes:
        return None
    first = spikes[0]
    return Finding(
        "grad_norm_spikes", severity_for_repeats(len(spikes)),
        f"梯度范数突增 {len(spikes)} 次：第一次在第 {first['step']} 步，{first['grad_norm']:.3g}（平时约 "
        f"{first['baseline']:.3g}，超过 {GRAD_SPIKE_FACTOR:g} 倍）",
        f"gradient-norm spikes: {len(spikes)}; the first at step {first['step']}: {first['grad_norm']:.3g}, more than "
        f"{GRAD_SPIKE_FACTOR:g}x the usual {first['baseline']:.3g}",
        {"count": len(spikes), "spikes": spikes[:MAX_LISTED_STEPS], "factor": GRAD_SPIKE_FACTOR,
         "grad_clip": history.setting("optim", "grad_clip")},
        "确认 optim.grad_clip > 0（默认 1.0，会把这一步的更新限住）；反复出现就降低 optim.lr 或加长预热"
        " / make sure optim.grad_clip > 0 (1.0 by default) so such a step is clipped; if repeated, lower the "
        "learning rate or lengthen the warmup")


# ---------------------------------------------------------------------------
# 3. 预热太短
# ---------------------------------------------------------------------------

def warmup_window(warmup_steps: int) -> tuple[int, int]:
    """学习率“刚到峰值”的那几步：[预热过半, 预热结束 + max(预热步数, 10)]。"""
    return math.ceil(warmup_steps / 2), warmup_steps + max(warmup_steps, WARMUP_AFTER_MIN_STEPS)


def check_warmup(history: RunHistory) -> Finding | None:
    """规则：损失突增、梯度范数突增或 NaN 出现在预热的危险窗口里，而且那一步的学习率 ≥ 峰值的一半。

    预热的目的就是让参数先在小步长下“找到方向”，再用大步长；学习率一到峰值就不稳，说明升得太快
    （或峰值本身太高）。窗口之后才出现的不稳定与预热无关，只由突增、NaN 各自的检查报告。
    """
    warmup, peak = history.setting("optim", "warmup_steps", 0), history.setting("optim", "lr")
    if not peak:
        return None
    start, end = warmup_window(warmup)
    if not history.train or history.train[0]["step"] > end:
        return None
    lr_at = {row["step"]: row.get("lr") for row in history.train if row["step"] <= end}
    events = ([(spike["step"], "loss_spike") for spike in loss_spikes(history, (start, end))]
              + [(spike["step"], "grad_norm_spike") for spike in grad_norm_spikes(history, (start, end))]
              + [(step, "non_finite") for step in non_finite_steps(history) if start <= step <= end])
    hits = sorted((step, kind) for step, kind in events if (lr_at.get(step) or 0) >= WARMUP_HIGH_LR_FRACTION * peak)
    if not hits:
        return None
    listed = [{"step": step, "event": kind, "lr": rounded(lr_at[step])} for step, kind in hits[:MAX_LISTED_STEPS]]
    names = "、".join(sorted({kind for _, kind in hits}))
    return Finding(
        "warmup_too_short", PROBLEM,
        f"预热可能太短：学习率刚升到峰值 {peak:g} 附近（预热 {warmup} 步，第 {start}–{end} 步）就出现了 {len(hits)} 次"
        f"不稳定（{names}），第一次在第 {hits[0][0]} 步",
        f"warmup looks too short for the peak lr {peak:g}: instabilities ({names}) x{len(hits)} right as the lr "
        f"reached its peak (warmup {warmup} steps, window steps {start}-{end}), the first at step {hits[0][0]}",
        {"warmup_steps": warmup, "peak_lr": peak, "window": [start, end], "events": listed},
        f"把 optim.warmup_steps 加大到 {max(2 * warmup, 20)} 以上（常见是总步数的 1%–5%），或降低 optim.lr"
        f" / raise optim.warmup_steps to {max(2 * warmup, 20)} or more (1-5% of the run is common), or lower optim.lr")


# ---------------------------------------------------------------------------
# 4. 吞吐下降
# ---------------------------------------------------------------------------

def check_throughput(history: RunHistory) -> Finding | None:
    """最近连续 ≥ 3 行的 tok/s 都低于前半程中位数的一半。只影响用时，不影响学到的东西：记为 note。"""
    series = [point for point in points(history.train, "tok_per_s") if point[0] != 1]
    if len(series) < THROUGHPUT_MIN_ROWS:
        return None
    baseline_rows = series[:len(series) // 2]
    baseline = level(baseline_rows)
    slow = []
    for point in reversed(series):            # 从最后一行往回数，连续变慢的有几行
        if point[1] >= THROUGHPUT_DROP_FRACTION * baseline:
            break
        slow.insert(0, point)
    if len(slow) < THROUGHPUT_MIN_SLOW_ROWS or slow[0][0] <= baseline_rows[-1][0]:
        return None
    now = level(slow)
    return Finding(
        "throughput_drop", NOTE,
        f"吞吐下降：从第 {slow[0][0]} 步起每秒 {now:,.0f} token，前半程（第 {baseline_rows[0][0]}–"
        f"{baseline_rows[-1][0]} 步）是 {baseline:,.0f}，只剩 {100 * now / baseline:.0f}%",
        f"throughput dropped: {now:,.0f} tokens/s since step {slow[0][0]}, against {baseline:,.0f} at steps "
        f"{baseline_rows[0][0]}-{baseline_rows[-1][0]} ({100 * now / baseline:.0f}%)",
        {"baseline_steps": [baseline_rows[0][0], baseline_rows[-1][0]], "baseline_tok_per_s": rounded(baseline),
         "since_step": slow[0][0], "slow_steps": steps_of(slow)[:MAX_LISTED_STEPS], "recent_tok_per_s": rounded(now),
         "fraction": rounded(now / baseline)},
        "看看是否有别的进程在抢 CPU/GPU（top、nvidia-smi）、机器是否过热降频、内存是否在换页、数据盘是否变慢"
        " / check for other processes (top, nvidia-smi), thermal throttling, swapping or a slow data disk")
