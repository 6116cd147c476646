"""强化学习（GRPO，train/grpo.py）的检查：它的损失不说明什么，要看奖励和“信号”。

GRPO 的损失值恒在 0 附近（优势在每组内减过均值，每批样本只更新一次，见 train/grpo.py），
所以“损失不降”“损失恰好为 0”这类检查对它没有意义（history.py 只对交叉熵种类做）。要看的是：

    1. check_rl_no_signal        几乎每组回答都得一样的分：优势全为 0，什么也学不到
    2. check_rl_reward_flat      奖励一直不涨（note：强化学习的奖励本来就抖，涨得慢不一定是病）
    3. check_rl_truncated        回答几乎都写满了 max_new_tokens：被截断的回答很难得分
"""

from __future__ import annotations

from towergpt.doctor.findings import NOTE, PROBLEM, Finding, rounded
from towergpt.doctor.history import RunHistory
from towergpt.doctor.series import level, points

# 看“最近的水平”用最后多少行：强化学习的指标比损失抖得多，取 10 行的中位数
RECENT_ROWS = 10
# 最近 10 行里，中位数超过 90% 的组“全组同分”：绝大多数提示词不产生任何梯度
NO_SIGNAL_HIGH = 0.9
# 奖励至少要涨 0.02（多数奖励在 0 到 1 之间）；已经接近满分（≥ 0.98）时不算“不涨”
REWARD_MIN_GAIN = 0.02
REWARD_NEAR_MAX = 0.98
# 回答平均长度达到 max_new_tokens 的 95%：几乎每个回答都是被截断的
TRUNCATED_FRACTION = 0.95


def check_rl_no_signal(history: RunHistory) -> Finding | None:
    series = points(history.train, "reward/no_signal")
    if history.kind != "grpo" or len(series) < RECENT_ROWS:
        return None
    recent = level(series[-RECENT_ROWS:])
    if recent < NO_SIGNAL_HIGH:
        return None
    return Finding(
        "rl_no_signal", PROBLEM,
        f"最近 {RECENT_ROWS} 行里，{100 * recent:.0f}% 的组所有回答得分相同：优势全是 0，这些提示词对模型毫无作用"
        f"（模型已经太确定，或任务对它太难 / 太容易）",
        f"in the last {RECENT_ROWS} rows {100 * recent:.0f}% of the groups gave every answer the same score: "
        f"zero advantages, no learning signal",
        {"no_signal": rounded(recent), "steps": [series[-RECENT_ROWS][0], series[-1][0]],
         "group_size": history.setting("grpo", "group_size"), "temperature": history.setting("grpo", "temperature")},
        "调高 grpo.temperature（例如 1.5）或 grpo.group_size，让同组的回答有好有坏；或换更难 / 更易的提示词 / "
        "raise grpo.temperature or grpo.group_size so that answers in a group differ")


def check_rl_reward_flat(history: RunHistory) -> Finding | None:
    series = points(history.train, "reward/mean")
    if history.kind != "grpo" or len(series) < 2 * RECENT_ROWS:
        return None
    first, last = level(series[:RECENT_ROWS]), level(series[-RECENT_ROWS:])
    if last >= first + REWARD_MIN_GAIN or last >= REWARD_NEAR_MAX:
        return None
    return Finding(
        "rl_reward_flat", NOTE,
        f"奖励没有涨：开头 {RECENT_ROWS} 行的中位数 {first:.3f}，最近 {RECENT_ROWS} 行 {last:.3f}",
        f"the reward is not rising: median {first:.3f} in the first {RECENT_ROWS} rows, {last:.3f} in the last",
        {"first": rounded(first), "last": rounded(last), "steps": [series[0][0], series[-1][0]],
         "lr": history.setting("optim", "lr")},
        "先看 rl_no_signal 和 reward/no_signal；信号足够时试着把 optim.lr 调大一点，或者多训练一会儿 / "
        "check reward/no_signal first; with enough signal try a larger optim.lr or train longer")


def check_rl_truncated(history: RunHistory) -> Finding | None:
    series = points(history.train, "completion_length")
    limit = history.setting("grpo", "max_new_tokens")
    if history.kind != "grpo" or len(series) < RECENT_ROWS or not limit:
        return None
    recent = level(series[-RECENT_ROWS:])
    if recent < TRUNCATED_FRACTION * limit:
        return None
    return Finding(
        "rl_truncated", NOTE,
        f"回答平均 {recent:.1f} 个 token，几乎都写满了 grpo.max_new_tokens={limit}：多数回答是被截断的",
        f"answers average {recent:.1f} tokens, nearly all of grpo.max_new_tokens={limit}: most are cut off",
        {"completion_length": rounded(recent), "max_new_tokens": limit},
        "调大 grpo.max_new_tokens，或在奖励里加上 format（奖励自己说完的回答）/ raise grpo.max_new_tokens, "
        "or add the format reward")
