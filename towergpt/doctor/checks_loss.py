"""看损失本身：起点对不对、有没有在学、有没有算坏、有没有越训越差。

每个检查函数的样子都一样：check_xxx(history) -> Finding | None（没有发现就返回 None）。
离线的 `towergpt doctor` 和训练中的 LiveDoctor 调用的是同一批函数。阈值都是本文件顶部的具名常量，
注释说明为什么取这个值；docs/doctor.md 有同样的说明和例子。

    1. check_initial_loss     预训练第 1 步的损失应当 ≈ ln V
    2. check_no_targets       损失恰好是 0：这一批一个目标 token 都没有
    3. check_non_finite       损失或梯度是 NaN/inf，这一步被跳过
    4. check_loss_not_falling 损失几乎没降
    5. check_divergence       损失从最低点回升了一大截
    6. check_overfitting      验证损失回升，训练损失还在降
"""

from __future__ import annotations

import math

from towergpt.doctor.findings import PROBLEM, Finding, rounded, step_range
from towergpt.doctor.history import RunHistory
from towergpt.doctor.series import LEVEL_ROWS, Point, is_number, level, points, rolling_levels, steps_of

# 随机初始化（矩阵 std 0.02）时 logits 的标准差约 0.02·√C（C=256 时 0.3，C=1024 时 0.6），
# 第 1 步的损失只比 ln V 高 σ²/2 ≈ 0.05 ~ 0.2 nat。差 1 nat 以上（正确答案的概率差了 e 倍），说明起点本身不对。
INITIAL_LOSS_TOLERANCE_NATS = 1.0

# 至少这么多个有限的训练行，才谈得上“趋势”：前 5 行与后 5 行不重叠。
MIN_ROWS_TO_JUDGE = 2 * LEVEL_ROWS
# 至少训练到这一步（且预热已结束）才判断“不降”：预热期间学习率还很小，损失本来就降得慢。
MIN_STEPS_TO_JUDGE = 20
# 损失“在降”：最近的水平比开头至少低 3%。从 ln V 出发的预训练几十步就能降 10% 以上；
# 学习率小到学不动时，前后只差批次之间的抖动（中位数之后远小于 3%）。
LOSS_MIN_DROP_FRACTION = 0.03
# 峰值学习率低于它时，在“不降”的说明里点名学习率：AdamW 训练小模型通常在 1e-4 ~ 3e-3。
VERY_LOW_LR = 1e-5

# 发散：平滑后的损失比它的最低点高出 1 nat（模型对正确 token 的把握只剩最好时的 1/e），而且是最近 5 行的中位数，
# 不是一两批的抖动。正常训练的损失在最低点附近只抖零点几 nat。
DIVERGENCE_RISE_NATS = 1.0

# 过拟合：验证损失比最低点高 3%，而且最低点之后至少又评估了 2 次。验证每次用同一批数据，噪声很小，
# 两次评估都高出 3% 是趋势而不是噪声。
OVERFIT_MIN_RISE_FRACTION = 0.03
OVERFIT_MIN_EVALS_AFTER = 2

# 损失不可能恰好是 0 的种类：交叉熵（预训练、SFT）和 DPO（−log σ(z) > 0）。
LOSS_NEVER_ZERO_KINDS = ("pretrain", "sft", "dpo")

# 证据里最多列出多少个步数（太多了没人看）。
MAX_LISTED_STEPS = 10


def loss_points(history: RunHistory) -> list[Point]:
    """有限的训练损失 (步, 值)；恰好为 0 的不算（那是“没有目标 token”，见 check_no_targets）。"""
    return [(step, value) for step, value in points(history.train, "loss") if value != 0.0]


def non_finite_steps(history: RunHistory) -> list[int]:
    """损失为 null（NaN/inf）或被跳过（"skipped"）的训练步；损失恰好为 0 的不算（另有原因）。"""
    return [row["step"] for row in history.train
            if (row.get("loss") is None or row.get("skipped")) and row.get("loss") != 0.0]


# ---------------------------------------------------------------------------
# 1. 初始损失
# ---------------------------------------------------------------------------

def check_initial_loss(history: RunHistory) -> Finding | None:
    """从零预训练时，第 1 步（还没有更新过参数）的损失应当 ≈ ln V：随机模型对 V 个词“一样没把握”。"""
    first = history.train[0] if history.train else None
    vocab = history.setting("model", "vocab_size", 0)
    if history.kind != "pretrain" or first is None or first["step"] != 1 or not is_number(first.get("loss")) \
            or not vocab:
        return None
    loss, expected = float(first["loss"]), math.log(vocab)
    gap = loss - expected
    if abs(gap) <= INITIAL_LOSS_TOLERANCE_NATS:
        return None
    evidence = {"step": 1, "loss": rounded(loss), "vocab_size": vocab, "ln_vocab": rounded(expected),
                "difference": rounded(gap), "tolerance": INITIAL_LOSS_TOLERANCE_NATS}
    if gap > 0:
        return Finding(
            "initial_loss", PROBLEM,
            f"第 1 步的损失 {loss:.3f} 比 ln(V) = ln {vocab} = {expected:.3f} 高 {gap:.2f} nat：随机初始化的模型"
            f"本应对每个词一样没把握，它却很“自信”地猜错——初始输出离均匀分布太远",
            f"step-1 loss {loss:.3f} is {gap:.2f} nats above ln(V) = {expected:.3f}: the untrained model is "
            f"confidently wrong instead of uniform",
            evidence,
            "检查初始化：矩阵应从 N(0, 0.02) 出发（model.py 的 _init_weights），别的代码有没有改动权重、"
            "model.vocab_size 是否与分词器一致 / check the init (std 0.02 matrices), code that touches the "
            "weights, and that model.vocab_size matches the tokenizer")
    return Finding(
        "initial_loss", PROBLEM,
        f"第 1 步的损失 {loss:.3f} 比 ln(V) = ln {vocab} = {expected:.3f} 低 {-gap:.2f} nat：一个随机模型"
        f"不可能猜得这么准——标签多半泄露了答案（例如目标没有向左错一位，y 就是 x：共享词向量时随机模型"
        f"一开始就给输入 token 高分），或者这并不是从随机初始化开始的",
        f"step-1 loss {loss:.3f} is {-gap:.2f} nats below ln(V) = {expected:.3f}: a random model cannot "
        f"guess that well: the targets probably leak the inputs (not shifted by one), or it did not start "
        f"from a random init",
        evidence,
        "检查数据：目标 y 应是输入 x 向左错一位（data/pretrain_dataset.py）；确认模型确实是随机初始化的"
        " / check that the targets are the inputs shifted by one, and that the model starts from random weights")


# ---------------------------------------------------------------------------
# 2. 没有目标 token
# ---------------------------------------------------------------------------

def check_no_targets(history: RunHistory) -> Finding | None:
    """损失恰好是 0.0：这一步所有微批次的权重（目标 token 数）都是 0，平均损失记成 0/1。

    真实的交叉熵或 DPO 损失是浮点数，永远不会恰好等于 0；恰好为 0 只能是“一个目标都没有”：
    所有标签都被掩掉了（IGNORE_INDEX），梯度是 NaN，这一步被跳过，什么也没学。
    别的目标函数（例如强化学习的策略梯度）损失可以正好是 0，所以只对认识的种类下这个结论。
    """
    steps = [row["step"] for row in history.train if row.get("loss") == 0.0]
    if not steps or history.kind not in LOSS_NEVER_ZERO_KINDS:
        return None
    return Finding(
        "no_targets", PROBLEM,
        f"{len(steps)} 个训练行的损失恰好是 0（第 {step_range(steps)} 步之间）：这些步里一个目标 token 都没有"
        f"（所有标签都被掩掉了），参数没有更新",
        f"{len(steps)} training rows have a loss of exactly 0: those steps had no target token at all "
        f"(every label masked), so nothing was learned",
        {"count": len(steps), "steps": steps[:MAX_LISTED_STEPS], "first_step": steps[0]},
        "SFT：检查数据里助手的回答是否为空、是否被截断掉了（看 meta.json 和 mask_fraction）；"
        "自己写的目标函数：检查标签是否全是 -100 / SFT: check for empty or truncated assistant replies; "
        "custom objectives: check that not every label is -100")


# ---------------------------------------------------------------------------
# 3. NaN / inf
# ---------------------------------------------------------------------------

def check_non_finite(history: RunHistory) -> Finding | None:
    """损失为 null（NaN/inf）或被跳过的步，以及验证损失为 null 的评估。一步也不该有。"""
    steps = non_finite_steps(history)
    eval_steps = [row["step"] for row in history.evals if row.get("val_loss") is None]
    if not steps and not eval_steps:
        return None
    first = min(steps + eval_steps)
    return Finding(
        "non_finite", PROBLEM,
        f"{len(steps)} 个训练步的损失或梯度是 NaN/inf、更新被跳过，{len(eval_steps)} 次评估的验证损失是 NaN/inf；"
        f"第一次出现在第 {first} 步",
        f"{len(steps)} training steps had a NaN/inf loss or gradient and were skipped, {len(eval_steps)} "
        f"evaluations had a NaN/inf val_loss; first at step {first}",
        {"count": len(steps), "steps": steps[:MAX_LISTED_STEPS], "eval_steps": eval_steps[:MAX_LISTED_STEPS],
         "first_step": first, "lr_peak": history.setting("optim", "lr"),
         "dtype": history.setting("train", "dtype")},
        f"降低 optim.lr（例如减半），保持 optim.grad_clip=1.0，float16 改用 bfloat16；要接着训，从第 {first} 步"
        f"之前的检查点开始 / lower optim.lr (e.g. halve it), keep optim.grad_clip=1.0, prefer bfloat16 over "
        f"float16; resume from a checkpoint before step {first}")


# ---------------------------------------------------------------------------
# 4. 损失不降
# ---------------------------------------------------------------------------

def check_loss_not_falling(history: RunHistory) -> Finding | None:
    """交叉熵损失最近 5 行的中位数比最初 5 行低不到 3%：模型没在学。

    只在预热结束、且至少到了第 MIN_STEPS_TO_JUDGE 步之后判断；损失不降反升一大截时归发散（check_divergence）。
    """
    series = loss_points(history)
    warmup = history.setting("optim", "warmup_steps", 0)
    if not history.is_cross_entropy or len(series) < MIN_ROWS_TO_JUDGE \
            or series[-1][0] < max(warmup, MIN_STEPS_TO_JUDGE):
        return None
    early, recent = series[:LEVEL_ROWS], series[-LEVEL_ROWS:]
    early_loss, recent_loss = level(early), level(recent)
    drop = early_loss - recent_loss
    if drop >= LOSS_MIN_DROP_FRACTION * early_loss or -drop > DIVERGENCE_RISE_NATS:
        return None
    lr = history.setting("optim", "lr")
    lr_zh = f"；峰值学习率 optim.lr = {lr:g} 非常小" if is_number(lr) and lr < VERY_LOW_LR else ""
    lr_en = f"; the peak learning rate optim.lr = {lr:g} is tiny" if lr_zh else ""
    return Finding(
        "loss_not_falling", PROBLEM,
        f"损失几乎没降：第 {step_range(steps_of(early))} 步的中位数 {early_loss:.3f}，第 {step_range(steps_of(recent))}"
        f" 步的中位数 {recent_loss:.3f}，只降了 {100 * drop / early_loss:.1f}%（至少应降 "
        f"{100 * LOSS_MIN_DROP_FRACTION:.0f}%）{lr_zh}",
        f"the loss is not falling: median {early_loss:.3f} at steps {step_range(steps_of(early))}, "
        f"{recent_loss:.3f} at steps {step_range(steps_of(recent))} ({100 * drop / early_loss:.1f}% lower, "
        f"expected at least {100 * LOSS_MIN_DROP_FRACTION:.0f}%){lr_en}",
        {"early_steps": steps_of(early), "early_loss": rounded(early_loss), "recent_steps": steps_of(recent),
         "recent_loss": rounded(recent_loss), "drop_fraction": rounded(drop / early_loss), "lr_peak": lr,
         "warmup_steps": warmup, "min_drop_fraction": LOSS_MIN_DROP_FRACTION},
        "提高 optim.lr（小模型用 AdamW 常取 1e-3 左右）；确认 optim.warmup_steps 没有长过整个训练；"
        "SFT 看 mask_fraction 是否接近 0（几乎没有 token 在学）/ raise optim.lr (about 1e-3 for small models "
        "with AdamW); make sure warmup is not longer than the run; for SFT check that mask_fraction is not ~0")


# ---------------------------------------------------------------------------
# 5. 发散
# ---------------------------------------------------------------------------

def check_divergence(history: RunHistory) -> Finding | None:
    """平滑后（每 5 行的中位数，开头不足 5 行时用已有的）的损失从最低点回升超过 DIVERGENCE_RISE_NATS：越训越差。"""
    series = loss_points(history)
    if len(series) <= LEVEL_ROWS:
        return None
    smoothed = rolling_levels(series)
    best_step, best = min(smoothed, key=lambda point: point[1])
    recent = series[-LEVEL_ROWS:]
    recent_loss = level(recent)
    rise = recent_loss - best
    if rise <= DIVERGENCE_RISE_NATS:
        return None
    restart_zh = "从头重新训练" if best_step == 1 else f"从第 {best_step} 步附近的检查点重新开始"
    restart_en = "restart from scratch" if best_step == 1 else f"restart from a checkpoint near step {best_step}"
    return Finding(
        "divergence", PROBLEM,
        f"损失发散了：平滑后最低是第 {best_step} 步的 {best:.4g}，最近 5 行（第 {step_range(steps_of(recent))} 步）"
        f"的中位数回升到 {recent_loss:.4g}，高了 {rise:.3g} nat",
        f"the loss diverged: its smoothed low was {best:.4g} at step {best_step}; the median of the last 5 rows "
        f"(steps {step_range(steps_of(recent))}) is back up at {recent_loss:.4g}, {rise:.3g} nats higher",
        {"best_step": best_step, "best_loss": rounded(best), "recent_steps": steps_of(recent),
         "recent_loss": rounded(recent_loss), "rise": rounded(rise), "lr_peak": history.setting("optim", "lr"),
         "threshold_nats": DIVERGENCE_RISE_NATS},
        f"降低 optim.lr（例如减半）、加长 optim.warmup_steps、保持 optim.grad_clip=1.0；{restart_zh}"
        f" / lower optim.lr (e.g. halve it), lengthen the warmup, keep grad_clip=1.0; {restart_en}")


# ---------------------------------------------------------------------------
# 6. 过拟合
# ---------------------------------------------------------------------------

def check_overfitting(history: RunHistory) -> Finding | None:
    """验证损失过了最低点之后回升（至少 3%、至少又评估了 2 次），而训练损失还在降：模型在背训练集。"""
    evals = points(history.evals, "val_loss")
    if len(evals) < 1 + OVERFIT_MIN_EVALS_AFTER:
        return None
    turn = min(range(len(evals)), key=lambda index: evals[index][1])
    turn_step, best = evals[turn]
    last_step, last = evals[-1]
    if len(evals) - 1 - turn < OVERFIT_MIN_EVALS_AFTER or last < best * (1 + OVERFIT_MIN_RISE_FRACTION):
        return None
    train = loss_points(history)
    before = [point for point in train if point[0] <= turn_step][-LEVEL_ROWS:]
    recent = train[-LEVEL_ROWS:]
    if not before or not recent or level(recent) >= level(before):
        return None   # 训练损失也没降：那不是过拟合（多半是发散，另有检查）
    train_then, train_now = level(before), level(recent)
    return Finding(
        "overfitting", PROBLEM,
        f"过拟合：验证损失在第 {turn_step} 步最低（{best:.4f}），到第 {last_step} 步回升到 {last:.4f}"
        f"（+{100 * (last / best - 1):.1f}%），同期训练损失从 {train_then:.4f} 降到 {train_now:.4f}",
        f"overfitting: val_loss was lowest at step {turn_step} ({best:.4f}) and rose to {last:.4f} by step "
        f"{last_step} (+{100 * (last / best - 1):.1f}%) while the training loss fell from {train_then:.4f} "
        f"to {train_now:.4f}",
        {"turn_step": turn_step, "best_val_loss": rounded(best), "last_step": last_step,
         "last_val_loss": rounded(last), "rise_fraction": rounded(last / best - 1),
         "train_loss_at_turn": rounded(train_then), "train_loss_recent": rounded(train_now)},
        f"用第 {turn_step} 步附近的检查点（train.keep_last 要够大才留得住）；训练少一些步、增加数据，"
        f"或加 model.dropout（如 0.1）、optim.weight_decay / use the checkpoint near step {turn_step} "
        f"(keep enough with train.keep_last); train fewer steps, add data, or raise dropout / weight decay")
