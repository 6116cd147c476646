"""LoRA：起点与底座相同、合并前后一样、底座不动、只训练（只为）适配器、检查点很小且认得底座、续训逐位一致。"""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, tiny_gpt
from test_sft_cli import sft_data, write_config  # noqa: F401  （sft_data 是 fixture）
from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.config import load_config
from towergpt.lora import LoRAInfo, LoRALinear, apply_lora, count_parameters, merge_lora
from towergpt.train.optim import build_optimizer
from towergpt.train.sft import run_sft

ALL = ["qkv", "out_proj", "gate_proj", "up_proj", "down_proj"]


def info(rank=4, alpha=8.0, targets=ALL):
    return LoRAInfo(rank=rank, alpha=alpha, dropout=0.0, targets=list(targets), base_checkpoint="/base",
                    base_sha256="0" * 64)


def randomise_adapters(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("lora_B"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def test_a_fresh_adapter_changes_nothing_because_B_starts_at_zero():
    model = tiny_gpt(200)
    idx = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(idx)
        apply_lora(model, info())
        after = model(idx)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear) and torch.count_nonzero(layer.lora_B) == 0
    assert torch.count_nonzero(layer.lora_A) > 0          # A 随机：否则梯度永远为 0


def test_merged_logits_equal_unmerged():
    model = apply_lora(tiny_gpt(200), info())
    randomise_adapters(model)
    idx = torch.randint(0, 200, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = model(idx)
        merged = merge_lora(model)(idx)
    assert not any(isinstance(m, LoRALinear) for m in model.modules()) and not hasattr(model, "lora")
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_only_the_adapters_train_and_the_optimizer_keeps_state_only_for_them():
    model = apply_lora(tiny_gpt(200), info(rank=4, targets=["qkv", "down_proj"]))
    C, hidden, qkv_out = 64, model.config.ffn_hidden, 64 + 2 * 2 * 16      # (H + 2·Hkv)·D，D = 16
    per_block = 4 * (C + qkv_out) + 4 * (hidden + C)                         # r·(in + out) 两个矩阵
    trainable, total = count_parameters(model)
    assert trainable == model.config.n_layer * per_block
    assert total == tiny_gpt(200).num_params() + trainable
    optimizer = build_optimizer(model, load_config("tiny").optim, torch.device("cpu"))
    _, loss = model(torch.randint(0, 200, (2, 16)), torch.randint(0, 200, (2, 16)))
    loss.backward()
    optimizer.step()
    stateful = [p for p in optimizer.state if optimizer.state[p]]
    assert len(stateful) == 4 * model.config.n_layer                        # 每块 qkv、down_proj 各一对 A、B
    assert sum(p.numel() for p in stateful) == trainable
    assert all(p.grad is None for n, p in model.named_parameters() if not n.endswith(("lora_A", "lora_B")))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, start_checkpoint, sft_data):  # noqa: F811
    folder = tmp_path_factory.mktemp("lora_run")
    config_path = write_config(folder / "sft.yaml", start_checkpoint, sft_data, folder / "run", max_steps=20,
                               eval_every=10, save_every=10)
    config = load_config(str(config_path), ["lora.rank=4", "lora.alpha=8", "optim.lr=0.01"])
    summary = run_sft(config)
    return folder / "run", config_path, summary


def test_a_lora_run_learns_leaves_the_base_alone_and_saves_only_adapters(lora_run, start_checkpoint):
    run_dir, _, _ = lora_run
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0] - 0.3          # 底座是随机初始化的小模型，只动适配器也学得动
    checkpoint = resolve_checkpoint(run_dir)
    stored = load_file(str(checkpoint / "model.safetensors"))
    assert stored and all(name.endswith(("lora_A", "lora_B")) for name in stored)       # 只有适配器
    base_bytes = (start_checkpoint / "model.safetensors").stat().st_size
    assert (checkpoint / "model.safetensors").stat().st_size < base_bytes / 3
    record = json.loads((checkpoint / "lora.json").read_text())
    assert record["base_checkpoint"] == str(start_checkpoint.resolve()) and record["rank"] == 4
    # 底座文件没有被改写，载入的 LoRA 模型与“底座 + 手工合并适配器”一致
    base, _ = load(start_checkpoint)
    merged, _ = load(run_dir)
    manual = apply_lora(base, LoRAInfo(**{k: record[k] for k in LoRAInfo.__dataclass_fields__}))
    manual.load_state_dict(stored, strict=False)
    idx = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(idx), manual(idx), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(merged(idx), load(start_checkpoint)[0](idx))   # 适配器确实学到了东西


def test_resuming_a_lora_run_is_bitwise_exact(tmp_path, lora_run, start_checkpoint, sft_data, monkeypatch):  # noqa: F811
    """第 15 步崩溃（检查点在第 10 步），续训后的适配器和每一步的损失与不中断的运行逐位相同。"""
    import towergpt.train.sft as sft_module

    run_dir, _, _ = lora_run
    part = tmp_path / "part"
    config_path = write_config(tmp_path / "part.yaml", start_checkpoint, sft_data, part, max_steps=20,
                               eval_every=10, save_every=10)
    overrides = ["lora.rank=4", "lora.alpha=8", "optim.lr=0.01"]
    real_make = sft_module.make_sft_objective

    def crashing(pad_id):
        objective, calls = real_make(pad_id), {"n": 0}

        def crash_in_step_15(model, batch, device):
            calls["n"] += model.training
            if calls["n"] == 15:
                raise RuntimeError("simulated crash")
            return objective(model, batch, device)
        return crash_in_step_15

    monkeypatch.setattr(sft_module, "make_sft_objective", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_sft(load_config(str(config_path), overrides))
    monkeypatch.setattr(sft_module, "make_sft_objective", real_make)
    run_sft(load_config(str(config_path), overrides), resume=True)
    straight = load_file(str(resolve_checkpoint(run_dir) / "model.safetensors"))
    resumed = load_file(str(resolve_checkpoint(part) / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    expected = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
                if "loss" in r}
    got = {r["step"]: r["loss"] for r in map(json.loads, (part / "metrics.jsonl").read_text().splitlines())
           if "loss" in r}
    assert got == expected


def test_generate_eval_and_merge_accept_a_lora_run(tmp_path, lora_run):
    run_dir, _, _ = lora_run
    generated = run_cli("generate", "--ckpt", run_dir, "--prompt", "重复：经济", "--temperature", "0",
                        "--max-new-tokens", "5")
    assert generated.returncode == 0, generated.stderr
    merged_dir = tmp_path / "merged"
    merged = run_cli("lora", "merge", "--ckpt", run_dir, "--out", merged_dir)
    assert merged.returncode == 0, merged.stderr
    assert not (merged_dir / "lora.json").exists()
    plain, _ = load(merged_dir)
    direct, _ = load(run_dir)
    idx = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(plain(idx), direct(idx), rtol=0, atol=0)
    again = run_cli("lora", "merge", "--ckpt", merged_dir, "--out", tmp_path / "again")
    assert again.returncode == 2 and "不是 LoRA 检查点" in again.stderr


def test_a_changed_or_missing_base_is_one_clear_line(tmp_path, lora_run, start_checkpoint):
    import shutil

    run_dir, _, _ = lora_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    checkpoint = resolve_checkpoint(copy)
    record = json.loads((checkpoint / "lora.json").read_text())
    record["base_sha256"] = "f" * 64
    (checkpoint / "lora.json").write_text(json.dumps(record))
    (checkpoint / "checksums.json").unlink()          # 只改 lora.json，不让校验和先报“文件被改”
    changed = run_cli("generate", "--ckpt", copy, "--prompt", "好")
    assert changed.returncode == 2 and "sha256" in changed.stderr and "Traceback" not in changed.stderr
    record["base_checkpoint"] = str(tmp_path / "gone")
    (checkpoint / "lora.json").write_text(json.dumps(record))
    missing = run_cli("generate", "--ckpt", copy, "--prompt", "好")
    assert missing.returncode == 2 and "不见了" in missing.stderr


@pytest.mark.parametrize("override, message", [
    ("lora.rank=-1", "lora.rank"), ("lora.targets=qkv,embed", "lora.targets"), ("lora.alpha=0", "lora.alpha"),
])
def test_bad_lora_settings_name_the_key(tmp_path, override, message):
    from towergpt.errors import TowerGPTError

    with pytest.raises(TowerGPTError, match=message):
        load_config("tiny", [override])
