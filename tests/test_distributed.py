"""torchrun + gloo（CPU）上的分布式训练：2 个进程与 1 个进程（同样的全局批次）损失轨迹一致；
2 个进程被 SIGTERM 打断后续训，与不中断逐位相同；各进程配置不一致时清楚地报错。"""

import json
import os
import signal
import subprocess
import sys


from conftest import write_pretrain_config
from test_pretrain_cli import losses, wait_for_step


def write_config(path, data_dir, out_dir, micro_batch_size, **train):
    settings = dict(max_steps=12, micro_batch_size=micro_batch_size, grad_accum=2, eval_every=0, save_every=6,
                    seed=11)
    return write_pretrain_config(path, data_dir, out_dir, dict(d_model=64, max_seq_len=32, dropout=0.0),
                                 dict(lr=3e-3, min_lr=3e-4, warmup_steps=3), eval_batches=2, **{**settings, **train})


def torchrun(*args, processes=2):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "towergpt", *map(str, args)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(process, timeout=300):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def single(*args):
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "towergpt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, news_data_dir):
    one = single("pretrain", "--config", write_config(tmp_path / "one.yaml", news_data_dir, tmp_path / "one", 8))
    assert one.returncode == 0, one.stderr[-3000:]
    code, _, stderr = finish(torchrun("pretrain", "--config",
                                      write_config(tmp_path / "two.yaml", news_data_dir, tmp_path / "two", 4)))
    assert code == 0, stderr[-3000:]
    reference, distributed = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(distributed) == list(range(1, 13))
    for step in reference:
        assert abs(reference[step] - distributed[step]) < 1e-5, (step, reference[step], distributed[step])
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["tokens"] == 4 * 2 * 32 * 2  # 微批次 × 累积 × 序列长度 × 进程数
    assert (tmp_path / "two" / "checkpoints" / "step_00000012" / "model.safetensors").is_file()

    # FSDP2：参数分片到两个进程，数学上与 DDP 相同；检查点是完整权重，单进程也能直接载入
    fsdp_config = write_config(tmp_path / "fsdp.yaml", news_data_dir, tmp_path / "fsdp", 4, distributed="fsdp")
    code, _, stderr = finish(torchrun("pretrain", "--config", fsdp_config))
    assert code == 0, stderr[-3000:]
    sharded = losses(tmp_path / "fsdp")
    for step in reference:
        assert abs(reference[step] - sharded[step]) < 1e-5, (step, reference[step], sharded[step])
    generated = single("generate", "--ckpt", tmp_path / "fsdp", "--prompt", "中国", "--max-new-tokens", "3")
    assert generated.returncode == 0, generated.stderr[-2000:]


def test_interrupted_two_process_run_resumes_exactly(tmp_path, news_data_dir):
    reference_config = write_config(tmp_path / "ref.yaml", news_data_dir, tmp_path / "ref", 4, max_steps=40,
                                    save_every=0)
    code, _, stderr = finish(torchrun("pretrain", "--config", reference_config))
    assert code == 0, stderr[-3000:]
    reference = losses(tmp_path / "ref")

    run_dir = tmp_path / "cut"
    config = write_config(tmp_path / "cut.yaml", news_data_dir, run_dir, 4, max_steps=40, save_every=0)
    process = torchrun("pretrain", "--config", config)
    wait_for_step(run_dir, 3, process)
    process.send_signal(signal.SIGTERM)
    finish(process)
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert 3 <= stopped_at < 40 and max(losses(run_dir)) == stopped_at

    code, _, stderr = finish(torchrun("pretrain", "--config", config, "--resume"))
    assert code == 0, stderr[-3000:]
    assert losses(run_dir) == reference

    wrong = single("pretrain", "--config", config, "--resume", "--set", "train.max_steps=41")
    assert wrong.returncode == 2 and "进程数" in wrong.stderr and "Traceback" not in wrong.stderr


def test_ranks_that_disagree_get_a_clear_error(tmp_path, news_data_dir):
    script = tmp_path / "disagree.py"
    script.write_text(
        "import os, sys\n"
        "from towergpt.cli import main\n"
        "rank = os.environ['RANK']\n"
        "main(['pretrain', '--config', sys.argv[1], '--set', f'train.seed={10 + int(rank)}'])\n",
        encoding="utf-8",
    )
    config = write_config(tmp_path / "c.yaml", news_data_dir, tmp_path / "run", 4)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             str(script), str(config)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "不一致" in result.stderr
    assert "Traceback" not in "\n".join(line for line in result.stderr.splitlines() if "错误" in line)
