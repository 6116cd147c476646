"""端到端：`towergpt pretrain` 被 SIGKILL 后续训与不中断逐位相同；SIGTERM 先保存再退出；
`towergpt generate` 能用运行目录。"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import run_cli, write_pretrain_config


def write_config(path, data_dir, out_dir, **train):
    settings = dict(max_steps=60, micro_batch_size=4, grad_accum=2, eval_every=20, save_every=5, seed=7)
    return write_pretrain_config(path, data_dir, out_dir, dict(d_model=128, max_seq_len=64, dropout=0.1),
                                 dict(lr=2e-3, min_lr=2e-4, warmup_steps=5), eval_batches=4, **{**settings, **train})


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows if "loss" in row}


def start_training(config_path, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "towergpt", "pretrain", "--config", str(config_path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_step(run_dir, step, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) >= step:
                        return
                except json.JSONDecodeError:
                    pass
        if process.poll() is not None:
            raise AssertionError(f"training ended early: {process.stderr.read()[-2000:]}")
        time.sleep(0.01)
    raise AssertionError("training too slow")


def test_sigkill_then_resume_matches_an_uninterrupted_run_bitwise(tmp_path, news_data_dir):
    reference_run = tmp_path / "reference"
    done = run_cli("pretrain", "--config", write_config(tmp_path / "a.yaml", news_data_dir, reference_run))
    assert done.returncode == 0, done.stderr[-2000:]
    reference = losses(reference_run)
    assert sorted(reference) == list(range(1, 61))

    killed_run = tmp_path / "killed"
    config = write_config(tmp_path / "b.yaml", news_data_dir, killed_run)
    process = start_training(config)
    wait_for_step(killed_run, 13, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    interrupted_at = max(losses(killed_run))
    assert interrupted_at < 60

    resumed = run_cli("pretrain", "--config", config, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "续训" in resumed.stdout
    got = losses(killed_run)
    assert got == reference, "resumed run diverged from the uninterrupted one"
    assert reference[60] < reference[1] - 0.5   # 确实在学（60 步约降 1.0）


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, news_data_dir):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", news_data_dir, run_dir, max_steps=100_000, save_every=0,
                          eval_every=0)
    process = start_training(config)
    wait_for_step(run_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-2000:]
    assert "SIGTERM" in stdout
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    step = int(latest.split("_")[1])
    assert step >= 3 and step == max(losses(run_dir))
    for name in ("model.safetensors", "config.json", "tokenizer.model", "trainer_state.pt"):
        assert (run_dir / "checkpoints" / latest / name).is_file()

    generated = run_cli("generate", "--ckpt", run_dir, "--prompt", "中国", "--max-new-tokens", "10",
                        "--temperature", "0")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith("中国")


def test_bad_config_is_one_clear_line(tmp_path, news_data_dir):
    config = write_config(tmp_path / "d.yaml", news_data_dir, tmp_path / "run")
    result = run_cli("pretrain", "--config", config, "--set", "train.max_step=3")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("错误") and "max_steps" in result.stderr
    missing = run_cli("pretrain", "--config", config, "--set", f"data.path={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr


@pytest.mark.parametrize("ckpt", ["run", "checkpoint"])
def test_generate_accepts_run_dir_or_checkpoint_dir(tmp_path, news_data_dir, ckpt):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "e.yaml", news_data_dir, run_dir, max_steps=3, save_every=3)
    assert run_cli("pretrain", "--config", config).returncode == 0
    target = run_dir if ckpt == "run" else run_dir / "checkpoints" / "step_00000003"
    result = run_cli("generate", "--ckpt", target, "--prompt", "经济", "--max-new-tokens", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("经济")
