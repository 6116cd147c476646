"""只属于某一种训练的检查：SFT 的损失掩码、DPO 的损失与奖励。它们读目标函数自己报的指标。

    1. check_sft_mask          mask_fraction（train/sft.py 报的）几乎为 0 或几乎为 1
    2. check_dpo_stuck         DPO 损失停在 ln 2、奖励差 ≈ 0：策略还等于参考模型
    3. check_dpo_rewards_fall  chosen 和 rejected 的隐式奖励一起往下掉
"""

from __future__ import annotations

import math

from towergpt.doctor.checks_loss import MIN_ROWS_TO_JUDGE, MIN_STEPS_TO_JUDGE
from towergpt.doctor.findings import NOTE, PROBLEM, Finding, rounded, step_range
from towergpt.doctor.history import RunHistory
from towergpt.doctor.series import LEVEL_ROWS, level, points, steps_of

# SFT 的 mask_fraction = 目标 token / 非 pad 的输入 token。
# 低于 1%：一百个 token 里不到一个在学。可能是数据本来如此（长评论后跟一两个字的标签），也可能是回答被截掉、
# 只剩 <|im_end|> 在学；无法分辨，所以只是 note。
MASK_FRACTION_LOW = 0.01
# 高于 98%：连用户的话、模板都在学，掩码没起作用。对话模板本身（<|im_start|>user\n … <|im_end|>\n
# <|im_start|>assistant\n）每段至少占七八个 token、全都不学，回答要长到几百个 token 才可能超过 98%。
MASK_FRACTION_HIGH = 0.98

# DPO：z = 0 时损失恰好是 ln 2 = 0.693（策略 = 参考模型，第 1 步就是这样）；损失 ≈ ln 2 − z/2，
# 所以“离 ln 2 不到 0.02”与“平均奖励差 |z| 不到 0.04”说的是同一件事：策略几乎没离开参考模型。
DPO_STUCK_LOSS_TOLERANCE = 0.02
DPO_STUCK_MARGIN = 0.04
# 对数概率差（= 奖励差 / β）小于 0.4 nat：按常用的 β = 0.1 算，奖励差正好是上面的 0.04——策略真的没动。
DPO_STUCK_LOGP_GAP = 0.4
# chosen 回答的对数概率（= 奖励 / β）比参考模型低了 5 nat 以上（概率只剩约 1/150），rejected 也在掉：
# 模型靠“两个都压低、rejected 压得更多”拉开差距，好的回答自己也变得不太会说了。
DPO_CHOSEN_LOGP_DROP_NATS = 5.0


# ---------------------------------------------------------------------------
# 1. SFT 的损失掩码
# ---------------------------------------------------------------------------

def check_sft_mask(history: RunHistory) -> Finding | None:
    """所有训练行 mask_fraction 的中位数太低（note）或太高（problem）。"""
    series = points(history.train, "mask_fraction")
    if history.kind != "sft" or not series:
        return None
    fraction = level(series)
    evidence = {"mask_fraction": rounded(fraction), "rows": len(series), "steps": [series[0][0], series[-1][0]],
                "low": MASK_FRACTION_LOW, "high": MASK_FRACTION_HIGH}
    if fraction > MASK_FRACTION_HIGH:
        return Finding(
            "sft_mask_all", PROBLEM,
            f"损失掩码几乎盖住了一切：{100 * fraction:.1f}% 的输入 token 都有标签——连用户的话和对话模板都在学，"
            f"模型会学着模仿用户",
            f"the loss mask covers almost everything: {100 * fraction:.1f}% of the input tokens carry a label, "
            f"user turns and template included, so the model learns to imitate the user",
            evidence,
            "用 `towergpt data prepare --format sft` 重新准备数据（它只给助手的话打标签）；自己写的数据集检查 "
            "loss_mask / re-prepare with `towergpt data prepare --format sft` (only assistant replies get labels), "
            "or check the loss mask of your own dataset")
    if fraction < MASK_FRACTION_LOW:
        return Finding(
            "sft_mask_tiny", NOTE,
            f"损失掩码几乎什么也没盖住：只有 {100 * fraction:.2f}% 的输入 token 有标签，每批真正在学的 token 很少",
            f"the loss mask covers almost nothing: only {100 * fraction:.2f}% of the input tokens carry a label, "
            f"so each batch teaches very few tokens",
            evidence,
            "如果回答本来就很短（分类标签）这没问题，可以加大批次；否则检查回答是否为空或被截掉（meta.json 的 "
            "truncated_conversations、skipped.txt）/ fine for one-word answers (use bigger batches); otherwise "
            "check for empty or truncated replies (meta.json, skipped.txt)")
    return None


# ---------------------------------------------------------------------------
# 2. DPO 卡在 ln 2
# ---------------------------------------------------------------------------

def _dpo_recent(history: RunHistory, key: str) -> tuple[list[int], float] | None:
    """DPO 训练行里 key 最近 5 行的 (步, 中位数)；行数或步数还不够判断时返回 None。"""
    series = points(history.train, key)
    warmup = history.setting("optim", "warmup_steps", 0)
    if history.kind != "dpo" or len(series) < MIN_ROWS_TO_JUDGE or series[-1][0] < max(warmup, MIN_STEPS_TO_JUDGE):
        return None
    recent = series[-LEVEL_ROWS:]
    return steps_of(recent), level(recent)


def check_dpo_stuck(history: RunHistory) -> Finding | None:
    """最近 5 行：平均奖励差 |margin| < 0.04，而且（没有 SFT 项时）损失离 ln 2 不到 0.02。

    两种原因，看对数概率差 margin / β 分辨：它也很小，策略真的没离开参考模型（学习率太小、数据两边一样）；
    它不小，策略其实在动，只是 β 小到损失看不见（奖励差 = β × 对数概率差）。
    """
    margin, loss = _dpo_recent(history, "rewards/margin"), _dpo_recent(history, "loss")
    if margin is None or loss is None or abs(margin[1]) >= DPO_STUCK_MARGIN:
        return None
    sft_weight = history.setting("dpo", "sft_weight", 0.0)
    if not sft_weight and abs(loss[1] - math.log(2)) >= DPO_STUCK_LOSS_TOLERANCE:
        return None   # 加了 SFT 项时损失不再以 ln 2 为起点，只看奖励差
    accuracy = _dpo_recent(history, "rewards/accuracy")
    beta, lr = history.setting("dpo", "beta", 0.1), history.setting("optim", "lr")
    gap = margin[1] / beta
    evidence = {"steps": margin[0], "loss": rounded(loss[1]), "margin": rounded(margin[1]),
                "logp_gap_nats": rounded(gap), "accuracy": rounded(accuracy[1]) if accuracy else None,
                "beta": beta, "lr_peak": lr, "margin_tolerance": DPO_STUCK_MARGIN}
    where_zh = f"第 {step_range(margin[0])} 步损失 {loss[1]:.4f}（ln 2 = 0.6931），平均奖励差只有 {margin[1]:.4f}"
    where_en = f"loss {loss[1]:.4f} (ln 2 = 0.6931) and a mean reward margin of {margin[1]:.4f} at steps " \
               f"{step_range(margin[0])}"
    if abs(gap) >= DPO_STUCK_LOGP_GAP:
        return Finding(
            "dpo_stuck", PROBLEM,
            f"DPO 损失停在 ln 2 附近：{where_zh}；策略其实在动（对数概率差 {gap:.1f} nat），"
            f"但 β = {beta:g} 太小，损失几乎看不见这个差别，参考模型也几乎拉不住它",
            f"the DPO loss sits near ln 2: {where_en}; the policy does move (log-prob gap {gap:.1f} nats) but "
            f"beta = {beta:g} is so small that the loss barely sees it",
            evidence, f"把 dpo.beta 调到 0.1 左右（现在 {beta:g}）/ raise dpo.beta to about 0.1 (now {beta:g})")
    return Finding(
        "dpo_stuck", PROBLEM,
        f"DPO 没有在学：{where_zh}，对数概率差 {gap:.2f} nat——策略模型几乎还等于参考模型",
        f"DPO is not learning: {where_en}, log-prob gap {gap:.2f} nats: the policy still equals the reference",
        evidence,
        f"提高 optim.lr（现在 {lr:g}）；检查数据里 chosen 和 rejected 是否其实一样；β（dpo.beta = {beta:g}）"
        f"太小时也会这样 / raise optim.lr; check that chosen and rejected actually differ; a tiny dpo.beta does this too")


# ---------------------------------------------------------------------------
# 3. chosen 和 rejected 的奖励一起下降
# ---------------------------------------------------------------------------

def check_dpo_rewards_fall(history: RunHistory) -> Finding | None:
    """最近 5 行 rewards/chosen 与 rewards/rejected 都是负的，而且 chosen 的对数概率已降了 5 nat 以上。"""
    chosen, rejected = _dpo_recent(history, "rewards/chosen"), _dpo_recent(history, "rewards/rejected")
    beta = history.setting("dpo", "beta", 0.0)
    if chosen is None or rejected is None or not beta or rejected[1] >= 0:
        return None
    chosen_drop = -chosen[1] / beta          # 奖励 = β·(log π − log π_ref)，除以 β 就是对数概率降了多少
    if chosen_drop < DPO_CHOSEN_LOGP_DROP_NATS:
        return None
    return Finding(
        "dpo_rewards_falling", PROBLEM,
        f"chosen 和 rejected 的奖励一起在降：第 {step_range(chosen[0])} 步 rewards/chosen = {chosen[1]:.3f}、"
        f"rewards/rejected = {rejected[1]:.3f}；好回答的对数概率比参考模型低了 {chosen_drop:.1f} nat",
        f"chosen and rejected rewards are both falling: rewards/chosen = {chosen[1]:.3f}, rewards/rejected = "
        f"{rejected[1]:.3f} at steps {step_range(chosen[0])}; the good answers lost {chosen_drop:.1f} nats of "
        f"log-probability against the reference",
        {"steps": chosen[0], "rewards_chosen": rounded(chosen[1]), "rewards_rejected": rounded(rejected[1]),
         "chosen_logp_drop_nats": rounded(chosen_drop), "beta": beta,
         "sft_weight": history.setting("dpo", "sft_weight", 0.0), "threshold_nats": DPO_CHOSEN_LOGP_DROP_NATS},
        "加上 SFT 项让好回答保持高概率：dpo.sft_weight=0.1~1（见 docs/dpo.md）；或降低 optim.lr、提高 dpo.beta"
        " / add the SFT term so chosen answers keep their probability (dpo.sft_weight 0.1-1, see docs/dpo.md), "
        "or lower optim.lr / raise dpo.beta")
