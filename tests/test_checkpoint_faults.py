"""检查点出故障时：磁盘满、文件损坏、config.json 类型不对、trainer_state.pt 是恶意 pickle。

要求都一样：一行清楚的话（TowerGPTError，命令行退出码 2），说出是哪个目录 / 文件；
能补救的自己补救（续训退回最近的完好检查点、清掉死进程留下的临时目录），补救不了的不瞎猜。

大部分测试用 test_train_loop.py 里的合成数据小模型（几秒一个）；最后一个走真正的命令行。
"""

import errno
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from test_pretrain_cli import write_config
from test_train_loop import losses, make_config, make_trainer

import towergpt.checkpoint as checkpoint_module
from towergpt.checkpoint import load_model, read_model_config
from towergpt.cli import main
from towergpt.errors import TowerGPTError
from towergpt.train import checkpointing
from towergpt.train.checkpointing import latest_checkpoint

STEP4, STEP8 = "step_00000004", "step_00000008"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """跑完 8 步的运行（第 4、8 步各一个检查点），和它每一步的损失（续训后要逐位相同）。"""
    base = tmp_path_factory.mktemp("finished")
    make_trainer(make_config(base)).run()
    return base / "run", losses(base / "run")


@pytest.fixture
def run(finished, tmp_path):
    """finished 的一份拷贝（每个测试随便弄坏），配置用 make_config(tmp_path)。"""
    shutil.copytree(finished[0], tmp_path / "run")
    return tmp_path / "run"


def checkpoint(run_dir, name=STEP8):
    return run_dir / "checkpoints" / name


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path):
    path.write_bytes(b"")


def flip_4k(path):
    """把文件正中间的 4 KiB 按位取反：大小不变，safetensors 的文件头也完好。"""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(byte ^ 0xFF for byte in data[middle:middle + 4096])
    path.write_bytes(bytes(data))


def swap_bytes(path):
    """换成别的内容（像被另一个分词器的文件覆盖了）。"""
    path.write_bytes(b"not the tokenizer this checkpoint was saved with")


def resume(tmp_path, capsys):
    """续训到第 8 步，返回 (摘要, stdout, 包含“警告”的 stderr 行)。"""
    summary = make_trainer(make_config(tmp_path)).run(resume=True)
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "警告" in line]
    return summary, captured.out, warnings


def one_line(error) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------------------
# 5. 损坏的检查点：续训退回最近的完好检查点
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("file, damage", [
    ("model.safetensors", truncate), ("model.safetensors", empty), ("model.safetensors", flip_4k),
    ("trainer_state.pt", truncate), ("trainer_state.pt", empty), ("trainer_state.pt", flip_4k),
])
def test_resume_skips_a_damaged_latest_and_continues_bitwise(run, finished, tmp_path, capsys, file, damage):
    damage(checkpoint(run) / file)
    summary, out, warnings = resume(tmp_path, capsys)
    assert len(warnings) == 1 and STEP8 in warnings[0] and file in warnings[0], warnings
    assert STEP4 in out                       # “从 …/step_00000004 续训”
    assert summary["step"] == 8
    assert losses(run) == finished[1]         # 从第 4 步重训的 5..8 步与不中断时逐位相同
    checkpointing.load_checkpoint(checkpoint(run), make_trainer(make_config(tmp_path)).model)  # 新的第 8 步完好


@pytest.mark.parametrize("file, damage", [
    ("model.safetensors", truncate), ("model.safetensors", empty),
    ("trainer_state.pt", truncate), ("trainer_state.pt", empty),
])
def test_old_checkpoints_without_checksums_still_fall_back(run, finished, tmp_path, capsys, file, damage):
    """没有 checksums.json 的老检查点：截断、清空也能从 safetensors / torch.load 的报错里认出来。"""
    for name in (STEP4, STEP8):
        (checkpoint(run, name) / "checksums.json").unlink(missing_ok=True)
    damage(checkpoint(run) / file)
    summary, out, warnings = resume(tmp_path, capsys)
    assert len(warnings) == 1 and STEP8 in warnings[0], warnings
    assert summary["step"] == 8 and losses(run) == finished[1]


def test_every_checkpoint_damaged_is_one_line(run, tmp_path, capsys):
    truncate(checkpoint(run, STEP4) / "model.safetensors")
    empty(checkpoint(run, STEP8) / "trainer_state.pt")
    with pytest.raises(TowerGPTError, match="全都损坏") as error:
        make_trainer(make_config(tmp_path)).run(resume=True)
    assert STEP4 in one_line(error) and STEP8 in one_line(error)


def test_checksums_are_written_for_every_file(run):
    manifest = json.loads((checkpoint(run) / "checksums.json").read_text(encoding="utf-8"))
    assert manifest["algorithm"] == "sha256"
    names = {p.name for p in checkpoint(run).iterdir()} - {"checksums.json"}
    assert set(manifest["files"]) == names >= {"model.safetensors", "config.json", "tokenizer.model",
                                               "trainer_state.pt"}
    weights = manifest["files"]["model.safetensors"]
    assert weights["bytes"] == (checkpoint(run) / "model.safetensors").stat().st_size
    assert len(weights["sha256"]) == 64


# ---------------------------------------------------------------------------
# 5. 损坏的检查点：generate / chat / serve / eval / export 用的 load_model 说一行
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("file, damage", [
    ("model.safetensors", truncate), ("model.safetensors", empty), ("model.safetensors", flip_4k),
    ("config.json", flip_4k), ("tokenizer.model", swap_bytes),
])
def test_loading_a_damaged_checkpoint_names_it_and_an_older_one(run, file, damage):
    damage(checkpoint(run) / file)
    with pytest.raises(TowerGPTError, match="损坏") as error:
        load_model(run)
    message = one_line(error)
    assert str(checkpoint(run)) in message and file in message
    assert str(checkpoint(run, STEP4)) in message   # 提示：更早的检查点可以用 --ckpt 指定
    load_model(checkpoint(run, STEP4))               # 它确实完好


def test_damaged_trainer_state_does_not_stop_generation(run):
    """生成只读权重、配置、分词器：trainer_state.pt 坏了不影响（也不必为它多读一个大文件）。"""
    empty(checkpoint(run) / "trainer_state.pt")
    assert load_model(run).config.n_layer == 2


# ---------------------------------------------------------------------------
# 9b. 恶意的 trainer_state.pt：拒绝，一行；不退回旧检查点
# ---------------------------------------------------------------------------

class Evil:
    """被反序列化时会调用 print（真正的攻击会调用 os.system）。weights_only=True 拒绝还原它。"""

    def __reduce__(self):
        return (print, ("PWNED: pickle code ran",))


def plant_evil_state(directory, update_checksums):
    torch.save({"progress": Evil()}, directory / "trainer_state.pt")
    if update_checksums and (directory / "checksums.json").exists():   # 攻击者能改文件，当然也能改 checksums.json
        checkpoint_module.write_checksums(directory)


def test_hostile_trainer_state_is_refused_in_one_line(run, tmp_path, capsys):
    plant_evil_state(checkpoint(run), update_checksums=True)
    with pytest.raises(TowerGPTError, match="不允许") as error:
        make_trainer(make_config(tmp_path)).run(resume=True)
    message = one_line(error)
    assert str(checkpoint(run) / "trainer_state.pt") in message and "print" in message
    assert "PWNED" not in capsys.readouterr().out   # 代码没有执行，也没有悄悄退回第 4 步


def test_replaced_trainer_state_with_stale_checksum_counts_as_damaged(run, finished, tmp_path, capsys):
    """checksums.json 没跟着改：文件与保存时不同，当作损坏，退回第 4 步（先核对校验和，根本不去反序列化）。"""
    plant_evil_state(checkpoint(run), update_checksums=False)
    summary, out, warnings = resume(tmp_path, capsys)
    assert len(warnings) == 1 and "trainer_state.pt" in warnings[0] and "PWNED" not in out
    assert summary["step"] == 8 and losses(run) == finished[1]


# ---------------------------------------------------------------------------
# 9a. config.json 的字段类型与范围
# ---------------------------------------------------------------------------

VALID_CONFIG = dict(vocab_size=50, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=16, dropout=0.0)


@pytest.mark.parametrize("field, value", [
    ("n_layer", "four"), ("n_layer", True), ("n_head", 2.0), ("vocab_size", None), ("d_model", [32]),
    ("dropout", "0.1"), ("rope_theta", False), ("tie_embeddings", 1), ("tie_embeddings", "yes"),
    ("n_head", 0), ("n_layer", -1), ("max_seq_len", 0), ("dropout", 1.5), ("norm_eps", 0),
])
def test_config_json_field_types_and_ranges_are_checked(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps({**VALID_CONFIG, field: value}), encoding="utf-8")
    with pytest.raises(TowerGPTError) as error:
        read_model_config(tmp_path)
    message = one_line(error)
    assert str(tmp_path / "config.json") in message and f"'{field}'" in message


def test_config_json_accepts_integers_for_float_fields(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({**VALID_CONFIG, "dropout": 0, "rope_theta": 500000}),
                                          encoding="utf-8")
    config = read_model_config(tmp_path)
    assert isinstance(config.dropout, float) and config.rope_theta == 500000.0


# ---------------------------------------------------------------------------
# 4. 保存时磁盘满了
# ---------------------------------------------------------------------------

def failing_on_second_call(real, error, path_of=lambda args: args[1]):
    """包装一个写文件的函数：第二次调用时先写下半个文件（像真的写到一半），再抛出 error。"""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(path_of(args)).write_bytes(b"\0" * 10_000)
            raise error
        return real(*args, **kwargs)

    return wrapper


def assert_disk_full_handled(tmp_path, error):
    checkpoints = tmp_path / "run" / "checkpoints"
    message = one_line(error)
    assert str(checkpoints) in message and "磁盘已满" in message and "disk full" in message
    assert "MB" in message and STEP4 in message          # 一个检查点要多大；latest 仍是第 4 步
    assert not list(checkpoints.glob(".tmp-*"))          # 写了一半的临时目录已删
    assert latest_checkpoint(tmp_path / "run").name == STEP4
    assert not checkpoint(tmp_path / "run").exists()


def test_disk_full_errno_is_one_line_and_resume_works(tmp_path, finished, monkeypatch):
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpointing.torch, "save", failing_on_second_call(torch.save, enospc))
    with pytest.raises(TowerGPTError) as error:
        make_trainer(make_config(tmp_path)).run()
    assert_disk_full_handled(tmp_path, error)
    monkeypatch.undo()   # “腾出了空间”
    summary = make_trainer(make_config(tmp_path)).run(resume=True)
    assert summary["step"] == 8 and losses(tmp_path / "run") == finished[1]


def tiny_disk(free):
    real = shutil.disk_usage
    return lambda path: types.SimpleNamespace(**{**real(path)._asdict(), "free": free})


def test_torch_save_disk_full_without_errno(tmp_path, monkeypatch):
    """磁盘满时 torch.save 只说 "[enforce fail at inline_container.cc:672] unexpected pos"：要看剩余空间。"""
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(checkpointing.torch, "save", failing_on_second_call(torch.save, wrapped))
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", tiny_disk(free=20_000))
    with pytest.raises(TowerGPTError) as error:
        make_trainer(make_config(tmp_path)).run()
    assert_disk_full_handled(tmp_path, error)


def test_safetensors_disk_full(tmp_path, monkeypatch):
    """safetensors 把 ENOSPC 包成 SafetensorError，消息里带 "(os error 28)"（磁盘其实还有空间也照认）。"""
    wrapped = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(checkpoint_module, "safetensors_save_model",
                        failing_on_second_call(checkpoint_module.safetensors_save_model, wrapped))
    with pytest.raises(TowerGPTError) as error:
        make_trainer(make_config(tmp_path)).run()
    assert_disk_full_handled(tmp_path, error)


def test_other_save_errors_are_not_called_disk_full(tmp_path, monkeypatch):
    """同样的 RuntimeError，但磁盘空间充足：不是磁盘满，原样抛出（那是程序的问题），临时目录照样删掉。"""
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(checkpointing.torch, "save", failing_on_second_call(torch.save, wrapped))
    with pytest.raises(RuntimeError, match="unexpected pos"):
        make_trainer(make_config(tmp_path)).run()
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    assert latest_checkpoint(tmp_path / "run").name == STEP4


def test_resume_clears_temporaries_left_by_dead_processes(run, tmp_path):
    finished_process = subprocess.Popen(["true"])
    finished_process.wait()                  # 它的进程号现在不属于任何进程
    dead = checkpoint(run, f".tmp-step_00000012-{finished_process.pid}")
    alive = checkpoint(run, f".tmp-step_00000012-{os.getppid()}")   # 父进程还活着：可能正在写，不能碰
    for leftover in (dead, alive):
        leftover.mkdir()
        (leftover / "model.safetensors").write_bytes(b"\0" * 50_000)
    make_trainer(make_config(tmp_path)).run(resume=True)   # 已到第 8 步：不再训练、不再保存
    assert not dead.exists() and alive.exists()


# ---------------------------------------------------------------------------
# 走真正的命令行：generate 说一行，pretrain --resume 退回并继续
# ---------------------------------------------------------------------------

def test_cli_generate_and_resume_with_damaged_latest(tmp_path, news_data_dir, capsys):
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "p.yaml", news_data_dir, run_dir, max_steps=6, save_every=3, eval_every=0)
    main(["pretrain", "--config", str(config)])
    latest, older = checkpoint(run_dir, "step_00000006"), checkpoint(run_dir, "step_00000003")
    truncate(latest / "model.safetensors")
    capsys.readouterr()

    generate = ["generate", "--prompt", "经济", "--max-new-tokens", "3", "--temperature", "0", "--ckpt"]
    with pytest.raises(SystemExit) as exit_info:
        main([*generate, str(run_dir)])
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err.strip()
    assert "\n" not in stderr and "Traceback" not in stderr
    assert stderr.startswith("错误") and str(latest) in stderr and "损坏" in stderr and str(older) in stderr

    main([*generate, str(older)])                       # 提示里的那个检查点能用
    assert capsys.readouterr().out.startswith("经济")

    main(["pretrain", "--config", str(config), "--resume"])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "警告" in line]
    assert len(warnings) == 1 and str(latest) in warnings[0]
    assert "续训" in captured.out and "step_00000003" in captured.out
    main([*generate, str(run_dir)])                     # 重新训练出的第 6 步完好
    assert capsys.readouterr().out.startswith("经济")
