"""README 的第一条命令：`towergpt quickstart` 端到端（极短的训练时间），产出齐全、摘要字段齐全。"""

import json

from conftest import run_cli


def test_quickstart_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "qs"
    result = run_cli("quickstart", "--out", out, "--minutes", "0.05", "--sft-minutes", "0.05", "--rl-minutes", "0.05",
                     "--device", "cpu", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for key in ("val_loss", "val_bpc", "tokens_seen", "params", "minutes", "sentiment_accuracy",
                "majority_baseline", "samples", "examples", "looping_samples", "pretrain_minutes", "sft_minutes"):
        assert key in summary, key
    # 按时间预算训练（0.05 分钟 = 3 秒）：至少做一步、评估并保存一次，不会多跑（准时的细节见 test_time_budget.py）
    assert summary["steps"] >= 1 and summary["sft_steps"] >= 1
    assert summary["pretrain_minutes"] < 0.2 and summary["sft_minutes"] < 0.2
    # 可选的强化学习阶段（--rl-minutes）：也按时间预算，之后再答一遍留出评论；增益就是两次准确率之差
    # （GRPO 的第一步要为每种新形状准备内核，冷启动时一步可能就要十几秒，所以上限放宽到 0.5 分钟）
    assert summary["rl_steps"] >= 1 and summary["rl_minutes"] < 0.5
    assert summary["rl_gain"] == round(summary["rl_accuracy"] - summary["sentiment_accuracy"], 4)
    assert "[9/9]" in result.stdout
    assert summary["looping_samples"] == sum(len(row["loops"]) for row in summary["samples"])
    assert summary["heldout_reviews"] == 1000 and summary["majority_baseline"] == 0.5
    # 摘要里的成绩就是 SFT 检查点在留出评论上的表现：重新载入它、在同样的 1000 条上重新作答，
    # 准确率和示例对话都与摘要相同（同样的分批、同样的运算，结果逐位一致）
    from towergpt.checkpoint import load
    from towergpt.demo.sentiment import evaluate

    model, tokenizer = load(out / "sft")
    again = evaluate(model, tokenizer, out / "corpus" / "sentiment_heldout.jsonl")
    assert again["heldout_reviews"] == 1000
    assert again["sentiment_accuracy"] == summary["sentiment_accuracy"]
    assert again["examples"] == summary["examples"]
    assert "准确率" in result.stdout and "【贪心 greedy】" in result.stdout
    for path in ("pretrain/checkpoints/latest", "sft/checkpoints/latest", "rl/checkpoints/latest",
                 "tokenizer/tokenizer.model", "data/meta.json", "sft_data/meta.json"):
        assert (out / path).exists(), path
    # 重跑同一个目录：quickstart 自己的输出会被清空重来；别人的目录则拒绝
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    refused = run_cli("quickstart", "--out", foreign, "--minutes", "0.05")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert (foreign / "notes.txt").read_text() == "keep me"
