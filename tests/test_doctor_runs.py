"""`towergpt doctor` 诊断真实的小训练（都走真正的命令行，每次几秒）：

    学习率 10     发散 → problem，退出码 1；训练时的实时提醒每种只出现一次
    学习率 1e-9   学不动 → problem，退出码 1
    正常          2 层、d_model 64 的小模型 30 步从 7.63 降到 6.7 左右 → 健康，退出码 0

合成指标上逐条检验每个发现的测试在 test_doctor.py。
"""

import json
import re

import pytest

from conftest import run_cli, write_pretrain_config


def train(tmp_path, data_dir, name, lr):
    """30 步的小预训练（每步一行日志、每 10 步评估）；返回 (运行目录, 训练命令的结果)。"""
    out = tmp_path / name
    config = write_pretrain_config(tmp_path / f"{name}.yaml", data_dir, out, dict(d_model=64, max_seq_len=64),
                                   dict(lr=lr, min_lr=min(lr, 3e-4), warmup_steps=5), eval_batches=2,
                                   max_steps=30, micro_batch_size=8, eval_every=10, save_every=0, seed=1)
    result = run_cli("pretrain", "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    return out, result


def doctor(run_dir):
    result = run_cli("doctor", run_dir, "--json")
    assert result.stderr == "", result.stderr
    return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def diverged(tmp_path_factory, news_data_dir):
    return train(tmp_path_factory.mktemp("doctor"), news_data_dir, "lr10", 10.0)


def test_learning_rate_10_diverges_and_the_doctor_says_so(diverged):
    run_dir, _ = diverged
    code, report = doctor(run_dir)
    ids = {finding["id"]: finding for finding in report["findings"]}
    assert code == 1 and report["healthy"] is False and report["kind"] == "pretrain"
    assert report["kind_source"] == "run.json"             # 训练时从数据的 meta.json 记下的
    assert ids["divergence"]["severity"] == "problem"
    assert ids["divergence"]["evidence"]["best_step"] == 1     # 第一次更新就炸了：最好的就是初始损失
    assert "warmup_too_short" in ids


def test_live_warnings_appear_once_each_not_every_step(diverged):
    _, result = diverged
    warnings = re.findall(r"训练医生 / doctor \[(\w+)\]", result.stdout)
    assert warnings.count("divergence") == 1
    assert len(warnings) == len(set(warnings)), warnings    # 每种只说一次
    line = next(line for line in result.stdout.splitlines() if "[divergence]" in line)
    assert "towergpt doctor" in line and " / " in line       # 中文 / 英文，并指向完整的诊断


def test_a_tiny_learning_rate_does_not_learn(tmp_path, news_data_dir):
    run_dir, result = train(tmp_path, news_data_dir, "tiny_lr", 1e-9)
    code, report = doctor(run_dir)
    assert code == 1
    finding = next(finding for finding in report["findings"] if finding["id"] == "loss_not_falling")
    assert finding["evidence"]["lr_peak"] == 1e-9 and finding["evidence"]["drop_fraction"] < 0.03
    assert "[loss_not_falling]" in result.stdout


def test_a_normal_run_is_healthy(tmp_path, news_data_dir):
    run_dir, result = train(tmp_path, news_data_dir, "normal", 3e-3)
    code, report = doctor(run_dir)
    assert code == 0 and report["healthy"] is True, report["findings"]
    assert report["summary"]["recent_loss"] < report["summary"]["first_loss"] - 0.5
    assert "训练医生" not in result.stdout                 # 健康的训练没有实时提醒
    text = run_cli("doctor", run_dir)
    assert text.returncode == 0 and "结论 / verdict: 健康" in text.stdout


def test_a_bad_run_directory_exits_2_and_names_the_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {vocab_size: 64}\n")
    result = run_cli("doctor", tmp_path / "run")
    assert result.returncode == 2 and "metrics.jsonl" in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
