"""优化器：参数分组、GaLore 的投影真的打开了、Muon 跟着学习率曲线走、检查点逐位续训、清楚的错误。

GaLore 的测试需要可选依赖（pip install -e ".[galore]"，CI 会装）；没装时跳过。
8 位 GaLore 需要 CUDA：CPU 上只检查它给出清楚的错误。
"""

import contextlib
import copy
import importlib.util
import io
import sys
from pathlib import Path

import pytest
import torch

from test_train_loop import SEQ, VOCAB, NullTokenizer, SyntheticTokens, losses
from towergpt.config import OptimConfig, build_config
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.train.loop import Trainer
from towergpt.train.optim import galore as galore_module
from towergpt.train.optim import (
    HIDDEN_MATRICES, MuonWithAdamW, build_optimizer, optimizer_state_bytes, set_learning_rate,
    split_hidden_matrices,
)
from towergpt.train.optim.newton_schulz import newton_schulz_in_fp32
from towergpt.train.pretrain import language_model_objective

CPU = torch.device("cpu")
RANK = 4  # 测试模型 d_model=32：最小矩阵的短边是 32
HAS_GALORE = importlib.util.find_spec("galore_torch") is not None
needs_galore = pytest.mark.skipif(not HAS_GALORE, reason='需要 pip install -e ".[galore]" / galore-torch not installed')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="8 位 GaLore 需要 CUDA / needs CUDA")


def make_config(tmp_path, optim_settings=None, **train):
    settings = dict(out_dir=str(tmp_path / "run"), max_steps=6, micro_batch_size=4, grad_accum=1, eval_every=0,
                    save_every=3, log_every=1, keep_last=2, device="cpu", dtype="float32")
    settings.update(train)
    optim_values = dict(lr=3e-3, min_lr=3e-4, warmup_steps=2, galore_rank=RANK, galore_update_proj_gap=2)
    optim_values.update(optim_settings or {})
    return build_config({
        "model": dict(vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=1, d_model=32, max_seq_len=SEQ, dropout=0.1),
        "train": settings,
        # galore_update_proj_gap=2：第 1、3、5 步重算投影（GaLore 内部计数 0、2、4）。续训从第 3 步之后开始，
        # 第 4 步用的投影必须是从检查点读回来的那个 —— 丢了它，续训就会重算 SVD，损失不再逐位相同。
        "optim": optim_values,
    })


def make_model(config):
    torch.manual_seed(config.train.seed)
    return GPT(config.model)


def build_for(model, name, **settings):
    return build_optimizer(model, make_config(Path("."), dict(name=name, **settings)).optim, CPU)


def optimizer_for(name, **settings):
    model = make_model(make_config(Path(".")))
    return model, build_for(model, name, **settings)


def one_step(model, optimizer, seed=0):
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))
    torch.manual_seed(seed)  # 模型有 dropout：两次对比的前向要用同样的随机数
    _, loss = model(tokens, tokens)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def group_params(group):
    return {id(p) for p in group["params"]}


# ---- 参数分组 ----------------------------------------------------------------

def test_hidden_matrices_are_the_attention_and_mlp_weights_and_every_parameter_appears_once():
    config = make_config(Path("."))
    model = make_model(config)
    hidden, rest = split_hidden_matrices(model)
    assert len(hidden) == 5 * config.model.n_layer
    assert {name.split(".")[-2] for name, _ in hidden} == set(HIDDEN_MATRICES)
    assert all(p.dim() == 2 for _, p in hidden)
    rest_names = {name for name, _ in rest}
    assert "embed.weight" in rest_names and "final_norm.weight" in rest_names  # 输出头与 embed 共享，只出现一次
    everything = [id(p) for _, p in hidden + rest]
    assert len(everything) == len(set(everything)) == len(list(model.parameters()))

    untied = GPT(build_config({"model": dict(vocab_size=VOCAB, n_layer=1, n_head=2, n_kv_head=1, d_model=32,
                                             max_seq_len=SEQ, tie_embeddings=False)}).model)
    _, rest = split_hidden_matrices(untied)
    assert {"embed.weight", "lm_head.weight"} <= {name for name, _ in rest}  # 输出头不是隐藏层矩阵


@needs_galore
def test_galore_groups_project_exactly_the_hidden_matrices():
    model, optimizer = optimizer_for("galore_adamw")
    hidden, rest = split_hidden_matrices(model)
    galore, decay, no_decay = optimizer.param_groups
    assert (galore["rank"], galore["update_proj_gap"], galore["scale"], galore["proj_type"]) == (RANK, 2, 0.25, "std")
    assert group_params(galore) == {id(p) for _, p in hidden}
    assert "rank" not in decay and "rank" not in no_decay
    assert group_params(decay) == {id(model.embed.weight)} and decay["weight_decay"] == 0.1
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    counted = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(counted) == len(set(counted)) == len(list(model.parameters()))


def test_muon_groups_take_the_hidden_matrices_and_adamw_the_rest():
    model, optimizer = optimizer_for("muon")
    assert isinstance(optimizer, MuonWithAdamW) and isinstance(optimizer.muon, torch.optim.Muon)
    hidden, rest = split_hidden_matrices(model)
    (muon_group,) = optimizer.muon.param_groups
    assert group_params(muon_group) == {id(p) for _, p in hidden}
    assert set().union(*map(group_params, optimizer.adamw.param_groups)) == {id(p) for _, p in rest}
    counted = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert len(counted) == len(set(counted)) == len(list(model.parameters()))


# ---- GaLore 的投影真的打开了 ----------------------------------------------------

@needs_galore
def test_galore_projection_is_active_the_adam_state_is_low_rank():
    model, optimizer = optimizer_for("galore_adamw")
    one_step(model, optimizer)
    qkv = model.blocks[0].attn.qkv.weight         # (64, 32)：行多于列，从右侧投影 → (64, r)
    down = model.blocks[0].ffn.down_proj.weight   # (32, 128)：列多于行，从左侧投影 → (r, 128)
    assert optimizer.state[qkv]["exp_avg"].shape == (64, RANK)
    assert optimizer.state[qkv]["exp_avg_sq"].shape == (64, RANK)
    assert optimizer.state[down]["exp_avg"].shape == (RANK, 128)
    # 不投影的参数（词向量表）保持完整形状
    assert optimizer.state[model.embed.weight]["exp_avg"].shape == model.embed.weight.shape
    # 投影后状态确实小了：比同一模型的 AdamW 少
    adamw_model, adamw = optimizer_for("adamw")
    one_step(adamw_model, adamw)
    assert optimizer_state_bytes(optimizer) < 0.6 * optimizer_state_bytes(adamw)


# ---- Muon 跟着学习率曲线走、能配合 GradScaler ----------------------------------------

def test_muon_steps_with_the_scheduled_lr_times_muon_lr_over_lr():
    model, optimizer = optimizer_for("muon", muon_lr=0.05)
    reference = copy.deepcopy(model)
    hidden = [p for _, p in split_hidden_matrices(reference)[0]]
    plain_muon = torch.optim.Muon(hidden, lr=1e-3 * 0.05 / 3e-3, weight_decay=0.0)  # 曲线值 × muon_lr / lr
    set_learning_rate(optimizer, 1e-3)
    one_step(model, optimizer)
    # 没有 bf16 运算单元的 CPU 上，我们的 Muon 用 fp32 做 Newton–Schulz（见 newton_schulz.py）：参照也这样做
    with newton_schulz_in_fp32() if optimizer.fp32_newton_schulz else contextlib.nullcontext():
        one_step(reference, plain_muon)
    for mine, theirs in zip(split_hidden_matrices(model)[0], split_hidden_matrices(reference)[0]):
        assert torch.equal(mine[1], theirs[1]), mine[0]
    assert all(group["lr"] == 1e-3 for group in optimizer.param_groups)  # 更新后 lr 恢复成曲线上的值


def test_muon_works_with_an_enabled_grad_scaler():
    """fp16 的路径：GradScaler 通过 param_groups 反缩放梯度、遇到 inf 跳过 step()。"""
    model, optimizer = optimizer_for("muon")
    scaled_model = copy.deepcopy(model)
    scaled_optimizer = build_for(scaled_model, "muon")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model(tokens, tokens)[1].backward()
    optimizer.step()
    torch.manual_seed(0)
    scaler.scale(scaled_model(tokens, tokens)[1]).backward()
    scaler.unscale_(scaled_optimizer)
    scaler.step(scaled_optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), scaled_model.parameters()))

    scaled_optimizer.zero_grad()
    before = [p.clone() for p in scaled_model.parameters()]
    scaler.scale(scaled_model(tokens, tokens)[1] * float("inf")).backward()
    scaler.unscale_(scaled_optimizer)
    scaler.step(scaled_optimizer)
    scaler.update()
    assert all(torch.equal(a, b) for a, b in zip(before, scaled_model.parameters()))
    assert scaler.get_scale() == 2.0 ** 9


# ---- 检查点与续训 ------------------------------------------------------------------

def test_optimizer_state_round_trips_through_a_weights_only_load():
    for name in ["adamw", "muon"] + (["galore_adamw"] if HAS_GALORE else []):
        model, optimizer = optimizer_for(name)
        one_step(model, optimizer)
        buffer = io.BytesIO()
        torch.save(optimizer.state_dict(), buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)  # 任何 Python 对象混在里面都会在这里失败
        fresh_model = copy.deepcopy(model)
        fresh = build_for(fresh_model, name)
        fresh.load_state_dict(saved)
        one_step(model, optimizer, seed=1)
        one_step(fresh_model, fresh, seed=1)
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh_model.parameters())), name


@pytest.mark.parametrize("name", [
    "adamw", pytest.param("galore_adamw", marks=needs_galore), "muon",
    pytest.param("galore_adamw8bit", marks=[needs_galore, needs_cuda]),
])
def test_resume_is_bitwise_identical(tmp_path, name):
    device_name = "cuda" if name == "galore_adamw8bit" else "cpu"
    full = make_config(tmp_path / "full", dict(name=name), device=device_name)
    straight = Trainer(full, make_model(full), NullTokenizer(), language_model_objective, SyntheticTokens())
    straight.run()
    reference = losses(tmp_path / "full" / "run")

    calls = {"n": 0}

    def crash_in_step_4(model, batch, device):
        calls["n"] += 1
        if calls["n"] == 4:  # 第 4 步（grad_accum=1）；检查点在第 3 步
            raise RuntimeError("simulated crash")
        return language_model_objective(model, batch, device)

    part = make_config(tmp_path / "part", dict(name=name), device=device_name)
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(part, make_model(part), NullTokenizer(), crash_in_step_4, SyntheticTokens()).run()
    resumed = Trainer(part, make_model(part), NullTokenizer(), language_model_objective, SyntheticTokens())
    resumed.run(resume=True)
    if device_name == "cuda":  # GPU 上的矩阵乘不保证逐位可复现：只要求非常接近
        assert losses(tmp_path / "part" / "run") == pytest.approx(reference, rel=1e-5)
        return
    assert losses(tmp_path / "part" / "run") == reference
    for (key, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), key
    assert reference[6] < reference[1]


# ---- 清楚的错误 --------------------------------------------------------------------

def test_unknown_optimizer_is_refused():
    with pytest.raises(TowerGPTError, match="optim.name.*'sgd'.*galore_adamw"):
        optimizer_for("sgd")


def test_galore_8bit_needs_cuda():
    with pytest.raises(TowerGPTError, match="galore_adamw8bit.*CUDA"):
        optimizer_for("galore_adamw8bit")


def test_missing_galore_tells_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "galore_torch", None)  # 让 import galore_torch 失败
    galore_module._galore_classes.cache_clear()
    with pytest.raises(TowerGPTError, match=r'pip install -e "\.\[galore\]"'):
        optimizer_for("galore_adamw")


@pytest.mark.parametrize("key, value, message", [
    ("galore_rank", 0, "≥ 1"),
    ("galore_update_proj_gap", 0, "≥ 1"),
    ("galore_scale", 0.0, "> 0"),
    ("galore_proj_type", "diagonal", "std"),
    ("muon_lr", -1.0, "> 0"),
    ("muon_momentum", 1.0, r"\[0, 1\)"),
    ("muon_ns_steps", 0, "1 到 99"),
    ("muon_adjust_lr", "fast", "match_rms_adamw"),
    ("muon_weight_decay", -0.1, "不能为负"),
    ("beta2", 1.5, r"\[0, 1\)"),
])
def test_invalid_settings_name_the_key(key, value, message):
    with pytest.raises(TowerGPTError, match=f"optim.{key}.*({message})"):
        optimizer_for("adamw", **{key: value})


@needs_galore
def test_galore_rank_must_be_smaller_than_every_matrix():
    with pytest.raises(TowerGPTError, match="optim.galore_rank=32.*短边 32"):
        optimizer_for("galore_adamw", galore_rank=32)


def test_resuming_with_another_optimizer_is_a_clear_error():
    _, adamw = optimizer_for("adamw")
    _, muon = optimizer_for("muon")
    with pytest.raises(TowerGPTError, match="optim.name=muon"):
        muon.load_state_dict(adamw.state_dict())


def test_default_config_builds_adamw_with_decay_on_matrices_only():
    model, optimizer = optimizer_for("adamw")
    assert isinstance(optimizer, torch.optim.AdamW)
    decay, no_decay = optimizer.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert OptimConfig().name == "adamw"
