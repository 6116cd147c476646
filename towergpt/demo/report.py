"""quickstart 的成绩正常吗？把这次的 val_bpc 和准确率放在参考值旁边，说一句结论。

参考值来自 docs/training.md 的 quickstart 扫参：默认设置、2 核 CPU、机器上没有别的程序。
训练按时间预算（train/budget.py），所以机器慢，步数就少，成绩就差一些——这不是毛病。
因此同时比较训练速度（tokens/s）：速度和参考差不多而成绩差，才说明出了问题。
"""

from __future__ import annotations

# 默认设置在参考机器上的一次新用户运行（全新克隆、README 的第一条命令、机器上没有别的程序）
REFERENCE = {
    "measured": "2026-12-01",
    "machine": "2 核 CPU，bf16 / 2 CPU cores, bf16",
    "tok_per_s": 4176,
    "steps": 468,
    "val_bpc": 5.89,
    "sentiment_accuracy": 0.836,
}
TOLERANCE = {"val_bpc": 0.15, "sentiment_accuracy": 0.02}   # 同一台机器上重跑，成绩大致在这个范围里浮动
SLOW = 0.85   # 速度不到参考的 85% 算“机器比参考慢”


def assess(summary: dict, reference: dict = REFERENCE) -> list[str]:
    """返回几行中英文说明：这次的成绩、参考成绩、结论。"""
    lines = [
        f"本次 / this run:      val_bpc {summary['val_bpc']:.2f}，准确率 / accuracy {summary['sentiment_accuracy']:.3f}，"
        f"预训练 {summary['steps']} 步，{summary['tok_per_s']:,} tokens/s",
        f"参考 / reference:     val_bpc {reference['val_bpc']:.2f}，准确率 / accuracy "
        f"{reference['sentiment_accuracy']:.3f}，预训练 {reference['steps']} 步，{reference['tok_per_s']:,} tokens/s"
        f"（{reference['machine']}，{reference['measured']}）",
    ]
    bpc_ok = summary["val_bpc"] <= reference["val_bpc"] + TOLERANCE["val_bpc"]
    accuracy_ok = summary["sentiment_accuracy"] >= reference["sentiment_accuracy"] - TOLERANCE["sentiment_accuracy"]
    speed = summary["tok_per_s"] / reference["tok_per_s"]
    if bpc_ok and accuracy_ok:
        lines.append("结论：正常 / as expected")
    elif speed < SLOW:
        lines.append(f"结论：这台机器的训练速度是参考的 {speed:.0%}，同样的分钟数走的步数少，成绩差一些是正常的；"
                     f"想要参考成绩，可以按比例加大 --minutes / this machine trains at {speed:.0%} of the reference "
                     f"speed: fewer steps in the same minutes, so a lower score is expected")
    else:
        lines.append("结论：速度正常但成绩低于参考：训练时是否有别的程序在占用 CPU？可以用 tensorboard 看损失曲线，"
                     "或者换个时间重跑一次 / speed is normal but the score is below the reference: was something "
                     "else using the CPU? Look at the loss curve or run again")
    return lines
