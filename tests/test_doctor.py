"""`towergpt doctor`：每条发现都在合成的指标上检验（id、证据、严重程度），健康的运行什么也不报。

合成的运行目录 = config.yaml + metrics.jsonl（+ 可选的 run.json），全由确定的公式生成，不训练任何模型。
真实的小训练（学习率 10 / 1e-9 / 正常）、实时提醒、命令行的退出码见 test_doctor_runs.py。
"""

import json
import math

import pytest
import yaml

from towergpt.cli import main as cli_main
from towergpt.doctor.checks import diagnose
from towergpt.doctor.live import LIVE_HEAD_ROWS, LIVE_TAIL_ROWS, LiveDoctor
from towergpt.doctor.run_reader import read_run

VOCAB = 2048          # ln 2048 = 7.625
WARMUP, PEAK_LR = 10, 3e-3


def make_config(**sections):
    config = {"model": {"vocab_size": VOCAB, "d_model": 64},
              "train": {"log_every": 1, "max_steps": 60, "dtype": "float32"},
              "optim": {"lr": PEAK_LR, "warmup_steps": WARMUP, "grad_clip": 1.0},
              "dpo": {"beta": 0.1, "sft_weight": 0.0}, "init_from": ""}
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values} if isinstance(values, dict) else values
    return config


def training_rows(steps=60, start=7.6, end=4.0):
    """一条健康的曲线：从 ≈ ln V 指数下降到 end，带一点确定的小抖动；学习率线性预热后保持。"""
    rows = []
    for step in range(1, steps + 1):
        progress = (step - 1) / (steps - 1)
        loss = end + (start - end) * math.exp(-4 * progress) + 0.05 * math.sin(1.7 * step)
        rows.append({"step": step, "tokens": 512 * step, "loss": loss, "lr": PEAK_LR * min(1.0, step / WARMUP),
                     "grad_norm": 0.8 + 0.1 * math.sin(step), "tok_per_s": 10_000 + 300 * math.sin(0.7 * step),
                     "elapsed_s": 0.05 * step, "step_s": 0.05})
    return rows


def eval_rows(train, every=10, offset=0.1):
    return [{"step": row["step"], "val_loss": row["loss"] + offset} for row in train if row["step"] % every == 0]


def merged(train, evals):
    """按 train/loop.py 的顺序排：同一步的评估行在训练行之后。"""
    return sorted(train + evals, key=lambda row: (row["step"], "val_loss" in row))


def set_values(rows, key, values: dict):
    for row in rows:
        if row["step"] in values:
            row[key] = values[row["step"]]
    return rows


def write_run(directory, rows, config=None, kind=None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(yaml.safe_dump(config or make_config()), encoding="utf-8")
    (directory / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    if kind:
        (directory / "run.json").write_text(json.dumps({"kind": kind}), encoding="utf-8")
    return directory


def findings_of(directory) -> dict:
    return {finding.id: finding for finding in diagnose(read_run(directory))}


def doctor_exit(*args) -> int:
    try:
        cli_main(["doctor", *map(str, args)])
    except SystemExit as exit:
        return exit.code
    return 0


# ---- 健康的运行 ----------------------------------------------------------------------------------

def test_a_healthy_run_has_no_findings_and_exits_0(tmp_path, capsys):
    train = training_rows()
    run = write_run(tmp_path / "run", merged(train, eval_rows(train)), kind="pretrain")
    assert findings_of(run) == {}
    assert doctor_exit(run) == 0
    out = capsys.readouterr().out
    assert "健康" in out and "healthy" in out and "预训练 pretrain（记录在 run.json）" in out


# ---- 损失本身 ------------------------------------------------------------------------------------

def test_initial_loss_far_from_ln_vocab_only_for_pretraining(tmp_path):
    high = write_run(tmp_path / "high", set_values(training_rows(), "loss", {1: 11.0}))
    finding = findings_of(high)["initial_loss"]
    assert finding.severity == "problem" and "高" in finding.message_zh
    assert finding.evidence["ln_vocab"] == pytest.approx(math.log(VOCAB), abs=1e-3)
    assert finding.evidence["difference"] == pytest.approx(11.0 - math.log(VOCAB), abs=1e-3)
    low = write_run(tmp_path / "low", set_values(training_rows(), "loss", {1: 3.0}))
    assert "低" in findings_of(low)["initial_loss"].message_zh
    # SFT / DPO 从训练过的模型出发：初始损失不必是 ln V
    sft = write_run(tmp_path / "sft", set_values(training_rows(), "loss", {1: 11.0}), kind="sft")
    assert "initial_loss" not in findings_of(sft)


def test_zero_loss_means_no_target_tokens(tmp_path):
    rows = training_rows()
    for row in rows[20:25]:
        row.update(loss=0.0, grad_norm=None, skipped=True)
    found = findings_of(write_run(tmp_path / "run", rows))
    assert found["no_targets"].evidence["steps"] == [21, 22, 23, 24, 25]
    assert "non_finite" not in found   # 同一个症状只报一个原因


def test_null_losses_and_skipped_steps_are_non_finite(tmp_path):
    rows = training_rows()
    rows[30].update(loss=None, grad_norm=None, skipped=True)
    rows[33].update(skipped=True, grad_norm=None)
    finding = findings_of(write_run(tmp_path / "run", rows))["non_finite"]
    assert finding.severity == "problem"
    assert finding.evidence["steps"] == [31, 34] and finding.evidence["first_step"] == 31


def test_a_flat_loss_is_not_falling_but_only_after_warmup(tmp_path):
    flat = training_rows(start=7.6, end=7.6)
    finding = findings_of(write_run(tmp_path / "flat", flat))["loss_not_falling"]
    assert finding.evidence["early_steps"] == [1, 2, 3, 4, 5]
    assert finding.evidence["recent_steps"] == [56, 57, 58, 59, 60]
    assert finding.evidence["drop_fraction"] < 0.03
    tiny_lr = write_run(tmp_path / "tiny", flat, make_config(optim={"lr": 1e-9}))
    assert "1e-09" in findings_of(tiny_lr)["loss_not_falling"].message_zh
    # 预热 100 步、才到第 60 步：学习率还小，不下结论
    warming = write_run(tmp_path / "warming", flat, make_config(optim={"warmup_steps": 100}))
    assert "loss_not_falling" not in findings_of(warming)


def test_divergence_names_the_best_step(tmp_path):
    rows = training_rows(steps=60)
    for row in rows[30:]:                       # 第 31 步起损失一路回升
        row["loss"] = 4.5 + 0.15 * (row["step"] - 30)
    finding = findings_of(write_run(tmp_path / "run", rows))["divergence"]
    assert 28 <= finding.evidence["best_step"] <= 32
    assert finding.evidence["rise"] > 1.0 and finding.evidence["recent_steps"] == [56, 57, 58, 59, 60]


def test_overfitting_reports_the_turn_step(tmp_path):
    train = training_rows(steps=60)
    val = {10: 6.0, 20: 5.0, 30: 4.6, 40: 4.8, 50: 5.0, 60: 5.2}     # 最低在第 30 步，之后回升
    evals = [{"step": step, "val_loss": value} for step, value in val.items()]
    finding = findings_of(write_run(tmp_path / "run", merged(train, evals)))["overfitting"]
    assert finding.evidence["turn_step"] == 30 and finding.evidence["last_step"] == 60
    assert finding.evidence["train_loss_recent"] < finding.evidence["train_loss_at_turn"]
    # 最低点之后只评估了一次：还不算
    early = [row for row in evals if row["step"] <= 40]
    assert "overfitting" not in findings_of(write_run(tmp_path / "early", merged(train[:40], early)))


# ---- 稳定与速度 -----------------------------------------------------------------------------------

def test_one_loss_spike_is_a_note_three_are_a_problem(tmp_path):
    one = findings_of(write_run(tmp_path / "one", set_values(training_rows(), "loss", {40: 9.0})))["loss_spikes"]
    assert one.severity == "note" and one.evidence["spikes"][0]["step"] == 40
    three = set_values(training_rows(), "loss", {35: 9.0, 42: 9.0, 50: 9.0})
    found = findings_of(write_run(tmp_path / "three", three))
    assert found["loss_spikes"].severity == "problem" and found["loss_spikes"].evidence["count"] == 3
    assert "warmup_too_short" not in found     # 远在预热之后：与预热无关


def test_grad_norm_spikes(tmp_path):
    finding = findings_of(write_run(tmp_path / "run", set_values(training_rows(), "grad_norm", {45: 25.0})))
    spike = finding["grad_norm_spikes"]
    assert spike.severity == "note" and spike.evidence["spikes"][0]["step"] == 45
    assert spike.evidence["spikes"][0]["baseline"] == pytest.approx(0.8, abs=0.15)


def test_instability_right_after_warmup_means_warmup_too_short(tmp_path):
    rows = set_values(training_rows(), "grad_norm", {9: 30.0, 12: 30.0})
    finding = findings_of(write_run(tmp_path / "run", rows))["warmup_too_short"]
    assert finding.evidence["window"] == [5, 20]
    assert [event["step"] for event in finding.evidence["events"]] == [9, 12]
    assert all(event["lr"] >= 0.5 * PEAK_LR for event in finding.evidence["events"])
    # 同样的突增，但学习率一直很小（这一行的 lr 不到峰值的一半）：不怪预热
    low_lr = set_values(set_values(training_rows(), "grad_norm", {9: 30.0}), "lr", {9: 1e-4})
    assert "warmup_too_short" not in findings_of(write_run(tmp_path / "low", low_lr))


def test_throughput_drop_is_a_note_with_the_step_it_started(tmp_path):
    rows = training_rows()
    for row in rows[44:]:
        row["tok_per_s"] = 3_000.0
    run = write_run(tmp_path / "run", rows)
    finding = findings_of(run)["throughput_drop"]
    assert finding.severity == "note" and finding.evidence["since_step"] == 45
    assert finding.evidence["fraction"] == pytest.approx(0.3, abs=0.02)
    assert doctor_exit(run) == 0       # note 不影响退出码


# ---- SFT 与 DPO ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction, expected, severity", [(0.995, "sft_mask_all", "problem"),
                                                           (0.004, "sft_mask_tiny", "note"), (0.13, None, None)])
def test_sft_mask_fraction(tmp_path, fraction, expected, severity):
    rows = [{**row, "mask_fraction": fraction} for row in training_rows(start=3.0, end=1.0)]
    found = findings_of(write_run(tmp_path / "run", rows, make_config(init_from="runs/base")))
    assert read_run(tmp_path / "run").kind == "sft"      # 没有 run.json：由 mask_fraction 认出来
    masks = {key: value for key, value in found.items() if key.startswith("sft_mask")}
    assert list(masks) == ([expected] if expected else [])
    if expected:
        assert masks[expected].severity == severity
        assert masks[expected].evidence["mask_fraction"] == fraction


def dpo_rows(steps=40, margin=lambda step: 0.1 * step, chosen=lambda step: 0.03 * step):
    rows = []
    for step in range(1, steps + 1):
        z = margin(step)
        rows.append({"step": step, "loss": math.log(1 + math.exp(-z)), "lr": 1e-4, "grad_norm": 0.5,
                     "tok_per_s": 5000.0, "rewards/margin": z, "rewards/chosen": chosen(step),
                     "rewards/rejected": chosen(step) - z, "rewards/accuracy": 1.0 if z > 0 else 0.0})
    return rows


def test_dpo_healthy_then_stuck_at_ln2(tmp_path):
    assert findings_of(write_run(tmp_path / "ok", dpo_rows(), kind="dpo")) == {}
    stuck = dpo_rows(margin=lambda step: 0.001, chosen=lambda step: 0.0)
    finding = findings_of(write_run(tmp_path / "stuck", stuck, kind="dpo"))["dpo_stuck"]
    assert finding.evidence["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert finding.evidence["logp_gap_nats"] == pytest.approx(0.01) and "optim.lr" in finding.suggestion
    # 同样的奖励差，β 小 100 倍：策略其实在动（对数概率差 1 nat），该调的是 β
    tiny_beta = write_run(tmp_path / "beta", stuck, make_config(dpo={"beta": 0.001}), kind="dpo")
    assert findings_of(tiny_beta)["dpo_stuck"].suggestion.startswith("把 dpo.beta")


def test_dpo_chosen_and_rejected_rewards_both_falling(tmp_path):
    rows = dpo_rows(chosen=lambda step: -0.03 * step)     # chosen 一路往下，rejected 掉得更快
    finding = findings_of(write_run(tmp_path / "run", rows, kind="dpo"))["dpo_rewards_falling"]
    assert finding.evidence["rewards_chosen"] < 0 and finding.evidence["chosen_logp_drop_nats"] > 5
    assert "sft_weight" in finding.suggestion


def test_run_kind_comes_from_run_json_then_metrics_then_config(tmp_path):
    rows = training_rows()
    assert read_run(write_run(tmp_path / "a", rows, kind="sft")).kind_source == "run.json"
    assert read_run(write_run(tmp_path / "b", dpo_rows())).kind == "dpo"
    assert read_run(write_run(tmp_path / "c", rows, make_config(init_from="x"))).kind == "sft"
    assert read_run(write_run(tmp_path / "d", rows)).kind == "pretrain"


def test_an_objective_the_doctor_does_not_know_gets_only_the_generic_checks(tmp_path):
    """例如强化学习：损失在 0 附近、可以恰好是 0，也不必下降——那些只对交叉熵成立的结论都不下。"""
    rows = [{**row, "loss": 0.0 if row["step"] % 7 == 0 else 0.01 * math.sin(row["step"]), "reward/mean": 0.5}
            for row in training_rows()]
    run = write_run(tmp_path / "rl", rows, make_config(init_from="runs/sft"))
    assert read_run(run).kind == "unknown"
    assert findings_of(run) == {}
    rows[40]["loss"] = None                       # NaN 对谁都是问题
    assert "non_finite" in findings_of(write_run(tmp_path / "nan", rows, make_config(init_from="runs/sft")))


def grpo_rows(steps=40, no_signal=lambda step: 0.3, reward=lambda step: 0.6 + 0.008 * step, length=3.0):
    """GRPO 的训练行：损失恒在 0 附近，奖励、无信号比例、回答长度由参数决定。"""
    return [{**row, "loss": 1e-17, "reward/mean": reward(row["step"]), "reward/no_signal": no_signal(row["step"]),
             "reward/std": 0.3, "completion_length": length, "clip_fraction": 0.0}
            for row in training_rows(steps)]


def test_grpo_runs_are_judged_by_their_rewards_not_their_loss(tmp_path):
    config = make_config(init_from="runs/sft", grpo={"group_size": 8, "temperature": 1.0, "max_new_tokens": 8})
    healthy = write_run(tmp_path / "ok", grpo_rows(), config)
    assert read_run(healthy).kind == "grpo" and findings_of(healthy) == {}   # 损失恒为 ~0 也不算“不降”
    silent = findings_of(write_run(tmp_path / "silent", grpo_rows(no_signal=lambda s: 0.3 if s < 20 else 1.0),
                                   config))
    assert silent["rl_no_signal"].is_problem and silent["rl_no_signal"].evidence["no_signal"] == 1.0
    flat = findings_of(write_run(tmp_path / "flat", grpo_rows(reward=lambda s: 0.7), config))
    assert not flat["rl_reward_flat"].is_problem
    cut = findings_of(write_run(tmp_path / "cut", grpo_rows(length=8.0), config))
    assert cut["rl_truncated"].evidence["max_new_tokens"] == 8
    zero_loss = [{**row, "loss": 0.0} for row in grpo_rows()]     # 全部组无信号的步：损失恰好为 0，也是一行
    assert "too_short" not in findings_of(write_run(tmp_path / "zero", zero_loss, config))


# ---- 输出 ----------------------------------------------------------------------------------------

def test_json_output_is_one_object_with_the_documented_fields(tmp_path, capsys):
    rows = set_values(training_rows(), "loss", {1: 11.0})
    assert doctor_exit(write_run(tmp_path / "run", rows), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert {"run", "kind", "kind_source", "healthy", "verdict", "problems", "notes", "summary",
            "findings"} <= set(report)
    assert report["healthy"] is False and report["kind"] == "pretrain" and report["problems"] == 1
    finding = report["findings"][0]
    assert set(finding) == {"id", "severity", "message_zh", "message_en", "evidence", "suggestion"}
    assert finding["id"] == "initial_loss" and finding["evidence"]["step"] == 1


def test_a_short_run_gets_a_note_not_a_problem(tmp_path, capsys):
    assert doctor_exit(write_run(tmp_path / "run", training_rows(steps=4))) == 0
    assert "[too_short]" in capsys.readouterr().out


# ---- 读不了的运行目录：一行错误、退出码 2 -----------------------------------------------------------

def test_unreadable_runs_give_one_clear_line(tmp_path, capsys):
    assert doctor_exit(tmp_path / "nowhere") == 2
    assert "nowhere" in capsys.readouterr().err
    run = write_run(tmp_path / "run", training_rows())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = '{"step": 3, "loss": 7.'
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert doctor_exit(run) == 2
    error = capsys.readouterr().err
    assert "metrics.jsonl:3" in error and error.count("\n") == 1
    (run / "metrics.jsonl").unlink()
    assert doctor_exit(run) == 2 and "metrics.jsonl" in capsys.readouterr().err
    (run / "config.yaml").unlink()
    assert doctor_exit(run) == 2 and "config.yaml" in capsys.readouterr().err


def test_a_half_written_last_line_is_skipped(tmp_path):
    run = write_run(tmp_path / "run", training_rows())
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 61, "lo')          # 训练正在写这一行
    assert len(read_run(run).train) == 60


# ---- 实时诊断 ------------------------------------------------------------------------------------

def diverging_rows():
    rows = training_rows(steps=80)
    for row in rows[30:]:
        row["loss"] = 4.5 + 0.15 * (row["step"] - 30)
    return rows


def test_live_doctor_reports_each_finding_once():
    doctor = LiveDoctor(make_config(), "pretrain")
    reported = [finding.id for row in diverging_rows() for finding in doctor.feed(row)]
    assert reported.count("divergence") == 1
    assert len(reported) == len(set(reported))


def test_live_doctor_does_not_repeat_what_the_history_already_showed():
    rows = diverging_rows()
    resumed = LiveDoctor(make_config(), "pretrain", history_rows=rows[:70])
    assert "divergence" in resumed.reported
    assert [finding.id for row in rows[70:] for finding in resumed.feed(row)] == []


def test_live_doctor_keeps_a_bounded_history():
    """每次检查的开销不随训练变长：只留开头 LIVE_HEAD_ROWS 行和最近 LIVE_TAIL_ROWS 行（评估行全留）。"""
    doctor = LiveDoctor(make_config(), "pretrain")
    last = LIVE_HEAD_ROWS + LIVE_TAIL_ROWS + 100
    for step in range(1, last + 1):
        doctor.feed({"step": step, "loss": 7.0 - step / 1000, "lr": PEAK_LR, "grad_norm": 0.5, "tok_per_s": 1e4})
    history = doctor.history()
    assert len(history.train) == LIVE_HEAD_ROWS + LIVE_TAIL_ROWS
    assert history.train[0]["step"] == 1 and history.train[LIVE_HEAD_ROWS]["step"] == LIVE_HEAD_ROWS + 101
    assert history.train[-1]["step"] == last


def test_live_doctor_turns_nan_into_null_like_the_metrics_file():
    doctor = LiveDoctor(make_config(), "pretrain")
    for row in training_rows(steps=20):
        doctor.feed(row)
    new = doctor.feed({"step": 21, "loss": float("nan"), "lr": PEAK_LR, "grad_norm": float("inf"), "skipped": True})
    assert [finding.id for finding in new] == ["non_finite"]


# ---- SFT 的 mask_fraction 指标 --------------------------------------------------------------------

def test_sft_objective_reports_the_mask_fraction():
    import torch

    from conftest import tiny_gpt
    from towergpt.model import IGNORE_INDEX
    from towergpt.train.sft import make_sft_objective

    pad = 0
    inputs = torch.tensor([[5, 6, 7, 8, pad, pad], [5, 6, 7, 8, 9, 10]])
    targets = torch.full_like(inputs, IGNORE_INDEX)
    targets[0, 2:4] = 3              # 2 个目标 / 4 个真 token
    targets[1, 3:6] = 3              # 3 个目标 / 6 个真 token
    result = make_sft_objective(pad)(tiny_gpt(32), (inputs, targets), torch.device("cpu"))
    assert result.weight == 5 and result.tokens == 10
    assert float(result.metrics["mask_fraction"]) == pytest.approx(0.5)
