"""quickstart 的成绩单：把这次的成绩放在参考值旁边，区分“机器慢”和“出了问题”。"""

from towergpt.demo.report import REFERENCE, TOLERANCE, assess

RUN = {"val_bpc": REFERENCE["val_bpc"], "sentiment_accuracy": REFERENCE["sentiment_accuracy"],
       "steps": REFERENCE["steps"], "tok_per_s": REFERENCE["tok_per_s"]}


def test_a_run_like_the_reference_is_called_normal():
    lines = assess(RUN)
    assert "正常" in lines[-1]
    assert f"{REFERENCE['val_bpc']:.2f}" in lines[1] and REFERENCE["measured"] in lines[1]


def test_a_slow_machine_explains_a_worse_score():
    slow = dict(RUN, val_bpc=REFERENCE["val_bpc"] + 0.5, tok_per_s=REFERENCE["tok_per_s"] // 2)
    verdict = assess(slow)[-1]
    assert "50%" in verdict and "--minutes" in verdict


def test_a_worse_score_at_normal_speed_is_flagged():
    worse = dict(RUN, sentiment_accuracy=REFERENCE["sentiment_accuracy"] - 2 * TOLERANCE["sentiment_accuracy"])
    verdict = assess(worse)[-1]
    assert "低于参考" in verdict and "正常 / as expected" not in verdict


def test_a_better_run_is_normal():
    better = dict(RUN, val_bpc=REFERENCE["val_bpc"] - 1, sentiment_accuracy=0.99, tok_per_s=REFERENCE["tok_per_s"] * 2)
    assert "正常" in assess(better)[-1]
