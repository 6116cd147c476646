"""内存估计（train/memory_estimate.py）：每一项对着 PyTorch 真正存下、真正分配的字节核对。

三层核对，从细到粗：
1. 激活值：用 torch.autograd.graph.saved_tensors_hooks 数出 autograd 为反向存下的每个张量（按底层存储去重，
   不算参数本身），与 activation_bytes 的公式比（fp32 / bf16，有无 dropout，有无激活检查点）。
2. 参数与优化器状态：真的构造优化器、走一步，数 optimizer.state 里的字节（AdamW、Muon、GaLore、LoRA）。
3. 峰值：在一个新进程里真的训练几步（Trainer.train_step，随机 token），量进程的峰值常驻内存。

峰值怎么量（为什么这样量）：
    CPU 上没有 torch.cuda.max_memory_allocated 那样的计数器。torch.profiler(profile_memory=True) 能记下每次分配，
    但要自己按时间累加才得到峰值，而且只看得到经过 PyTorch 分配器的内存。这里量的是操作系统看到的：
    - 每种配置一个新进程，互不干扰；先用同一条代码路径在一个极小的模型上训练两步，把内核、线程池、
      库代码都载入，再开始量；
    - 设 MALLOC_MMAP_THRESHOLD_=65536：64 KiB 以上的张量都用 mmap 分配，释放时立刻还给操作系统，
      常驻内存（RSS）于是跟着“此刻活着的张量”走，而不是停在 glibc 堆的高水位；
    - 开始量之前往 /proc/self/clear_refs 写 "5"，把峰值 VmHWM 清成当前值；量到的是
      峰值 VmHWM − 开始时的 VmRSS，即模型、优化器、激活值等新分配的全部内存。
    Linux 之外没有这两个文件，测试跳过。

实测（2 核 CPU，单线程，每种 2 步；下表由 test_measured_peak_is_within_20_percent 复现）：

    形状                                              精度    实测峰值   估计     误差
    tiny 预设  4 层 d256  V6000  16 × 256             fp32     695 MiB   689 MiB   −0.9%
    中等       8 层 d512  V8000   4 × 512             bf16    1012 MiB  1000 MiB   −1.2%
    base 预设 12 层 d768  V32000  2 × 256             bf16    2148 MiB  2135 MiB   −0.6%
    中等 + 激活检查点 + 分块损失 512                   bf16     500 MiB   487 MiB   −2.6%
    （同一套量法另测过：tiny + 激活检查点 fp32 367 / 361 MiB；中等 + 激活检查点 bf16 585 / 554 MiB；
      中等 + 分块损失 512 fp32 1077 / 1049 MiB；base + 激活检查点 fp32 2101 / 2093 MiB。）
"""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli

from towergpt.config import build_config, load_config
from towergpt.model import GPT, GPTConfig
from towergpt.train.memory_estimate import (activation_bytes, block_activation_bytes, estimate_memory,
                                            largest_micro_batch)

TESTS = Path(__file__).parent
MIB = 2 ** 20


# ---------------------------------------------------------------------------
# 1. 激活值：与 autograd 真正存下的逐字节比
# ---------------------------------------------------------------------------

def saved_bytes(model, idx, dtype) -> int:
    """一次带 targets 的前向里 autograd 存下的字节数：按底层存储去重，参数本身不算（它们本来就在）。"""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params:
            storages[pointer] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model(idx, idx)
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activations_match_what_autograd_saves(dtype, dropout, checkpointing):
    from towergpt.train.activation_checkpointing import checkpoint_blocks

    config = GPTConfig(vocab_size=500, n_layer=3, n_head=6, n_kv_head=2, d_model=96, max_seq_len=40, dropout=dropout)
    torch.manual_seed(0)
    model = GPT(config).train()
    if checkpointing:
        checkpoint_blocks(model)
    rows, seq_len, mixed = 3, 40, dtype != torch.float32
    measured = saved_bytes(model, torch.randint(0, 500, (rows, seq_len)), dtype)
    # 交叉熵另存 log_softmax 的结果 (R·T·V fp32)：它属于 logits 那一项；RoPE 的 cos/sin 表整个模型共用一份，很小，不计
    log_softmax = 4 * rows * seq_len * config.vocab_size
    rope = 0 if mixed and not checkpointing else 2 * rows * seq_len * config.head_dim * 4
    expected = activation_bytes(config, rows, seq_len, mixed, checkpointing, chunked=False, dropout_on_cpu=True)
    tolerance = 0.03 if dropout and not checkpointing else 0.001   # CPU 上带 dropout 的朴素注意力只是近似
    assert abs(expected + log_softmax + rope - measured) <= tolerance * measured, (measured, expected)


def test_one_block_is_what_checkpointing_takes_away():
    config = GPTConfig(vocab_size=500, n_layer=4, n_head=4, n_kv_head=2, d_model=64, max_seq_len=32)
    full = activation_bytes(config, 2, 32, False, checkpointing=False, chunked=False)
    saved_inputs = activation_bytes(config, 2, 32, False, checkpointing=True, chunked=False)
    per_block = block_activation_bytes(config, 2, 32, False)
    assert full - saved_inputs == 4 * per_block - 4 * (2 * 32 * 64 * 4)   # 每块的中间结果换成一份 C 的输入


# ---------------------------------------------------------------------------
# 2. 参数与优化器状态：与真的优化器走一步之后的 state 比
# ---------------------------------------------------------------------------

def small_config(**optim):
    raw = {"model": dict(vocab_size=320, n_layer=2, n_head=4, n_kv_head=2, d_model=64, max_seq_len=16),
           "train": dict(device="cpu", dtype="float32", micro_batch_size=2),
           "optim": {"name": "adamw", **optim}}
    return build_config(raw)


def real_optimizer_bytes(config, model):
    from towergpt.train.optim import build_optimizer, optimizer_state_bytes

    optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
    idx = torch.randint(0, config.model.vocab_size, (2, 16))
    model(idx, idx)[1].backward()
    optimizer.step()
    return optimizer_state_bytes(optimizer)


@pytest.mark.parametrize("optim", [dict(name="adamw"), dict(name="muon"),
                                   dict(name="galore_adamw", galore_rank=8),
                                   dict(name="galore_adamw", galore_rank=8, galore_proj_type="reverse_std")])
def test_weights_gradients_and_optimizer_state_match_a_real_step(optim):
    if optim["name"].startswith("galore"):
        pytest.importorskip("galore_torch")
    config = small_config(**optim)
    torch.manual_seed(0)
    model = GPT(config.model)
    estimate = estimate_memory(config, "pretrain", torch.float32, "cpu")
    assert estimate.weights == 4 * model.num_params()
    assert estimate.gradients == 4 * sum(p.numel() for p in model.parameters() if p.requires_grad)
    # AdamW 还给每个参数存一个 step 计数（0 维张量，几个字节），估计里不计
    counters = 4 * len(list(model.parameters()))
    assert 0 <= real_optimizer_bytes(config, model) - estimate.optimizer <= counters


@pytest.mark.parametrize("tie", [True, False])
def test_counting_from_the_config_matches_the_model(tie):
    from towergpt.train.memory_estimate import parameter_counts
    from towergpt.train.optim import split_hidden_matrices

    config = small_config()
    config.model.tie_embeddings = tie
    model = GPT(config.model)
    hidden, rest = split_hidden_matrices(model)
    counts = parameter_counts(config)
    assert counts.parameters == model.num_params()
    assert counts.largest_trainable == max(p.numel() for p in model.parameters())
    config.optim.name = "muon"   # Muon：隐藏层矩阵 1 份、其余 2 份，所以它分得清哪些是隐藏层矩阵
    assert parameter_counts(config).optimizer == 4 * sum(p.numel() for _, p in hidden) + 8 * sum(
        p.numel() for _, p in rest)


def test_lora_counts_only_the_adapters(tmp_path):
    from towergpt.lora import LoRAInfo, apply_lora, count_parameters

    config = small_config()
    config.lora.rank, config.lora.targets = 4, "qkv,down_proj"
    torch.manual_seed(0)
    model = GPT(config.model)
    apply_lora(model, LoRAInfo(rank=4, alpha=8.0, dropout=0.0, targets=["qkv", "down_proj"],
                               base_checkpoint=str(tmp_path), base_sha256=""))
    trainable, total = count_parameters(model)
    estimate = estimate_memory(config, "sft", torch.float32, "cpu")
    assert estimate.gradients == 4 * trainable and estimate.weights == 4 * total
    assert estimate.optimizer == 8 * trainable
    assert 0 <= real_optimizer_bytes(config, model) - estimate.optimizer <= 4 * len(list(model.parameters()))


def test_dpo_and_grpo_shapes():
    config = small_config()
    plain = estimate_memory(config, "sft", torch.float32)
    dpo = estimate_memory(config, "dpo", torch.float32)
    assert dpo.rows == 2 * plain.rows and dpo.reference == plain.weights
    config.grpo.group_size, config.grpo.kl_coef = 4, 0.0
    grpo = estimate_memory(config, "grpo", torch.float32)
    assert grpo.rows == 4 * plain.rows and grpo.reference == 0
    config.grpo.kl_coef = 0.05
    assert estimate_memory(config, "grpo", torch.float32).reference == plain.weights


def test_checkpointing_and_chunking_shrink_the_estimate():
    config = load_config("base", ["model.vocab_size=32000", "train.micro_batch_size=8", "train.loss_chunk_tokens=0"])
    plain = estimate_memory(config, "pretrain", torch.bfloat16).peak
    config.train.activation_checkpointing = True
    checkpointed = estimate_memory(config, "pretrain", torch.bfloat16).peak
    config.train.loss_chunk_tokens = 1024
    both = estimate_memory(config, "pretrain", torch.bfloat16).peak
    assert both < checkpointed < plain


def test_largest_micro_batch_is_the_edge_of_the_budget():
    config = load_config("small", ["model.vocab_size=8000"])
    budget = 6 * 2 ** 30
    batch = largest_micro_batch(config, "pretrain", torch.bfloat16, budget)

    def peak(batch_size):
        trial = dataclasses.replace(config, train=dataclasses.replace(config.train, micro_batch_size=batch_size))
        return estimate_memory(trial, "pretrain", torch.bfloat16).peak

    assert batch >= 1 and peak(batch) <= budget < peak(batch + 1)


# ---------------------------------------------------------------------------
# 3. 峰值：新进程里真的训练几步，量常驻内存
# ---------------------------------------------------------------------------

def _status_bytes(key: str) -> int:
    return int(re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


class RandomTokens:
    """训练数据的最小替身：每批随机 token（量内存只需要形状对）。"""

    def __init__(self, vocab_size: int, seq_len: int):
        self.vocab_size, self.seq_len = vocab_size, seq_len
        self.generator = torch.Generator().manual_seed(0)

    def next_batch(self, batch_size: int):
        ids = torch.randint(0, self.vocab_size, (batch_size, self.seq_len + 1), generator=self.generator)
        return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def _trainer(raw: dict):
    from towergpt.train.loop import Trainer
    from towergpt.train.objective import language_model_objective

    config = build_config(raw)
    torch.manual_seed(0)
    model = GPT(config.model)
    model.loss_chunk_tokens = getattr(config.train, "loss_chunk_tokens", 0)
    return config, Trainer(config, model, None, language_model_objective,
                           RandomTokens(config.model.vocab_size, config.model.max_seq_len))


def probe(raw: dict, steps: int) -> None:
    """（在新进程里运行）先在极小的模型上热身，清零峰值，再按 raw 训练 steps 步；打印 JSON：实测与估计。"""
    torch.set_num_threads(1)
    warm_up = json.loads(json.dumps(raw))
    warm_up["model"].update(n_layer=1, d_model=64, n_head=2, n_kv_head=1, vocab_size=256, max_seq_len=16, ffn_hidden=0)
    warm_up["train"]["micro_batch_size"] = 2
    _, trainer = _trainer(warm_up)
    for step in (1, 2):
        trainer.train_step(step)
    del trainer
    Path("/proc/self/clear_refs").write_text("5")          # VmHWM ← 当前的 VmRSS
    baseline = _status_bytes("VmRSS")
    config, trainer = _trainer(raw)
    for step in range(1, steps + 1):
        trainer.train_step(step)
    estimate = estimate_memory(config, "pretrain", trainer.dtype, "cpu")
    print(json.dumps({"measured": _status_bytes("VmHWM") - baseline, "estimated": estimate.peak}))


def measure_peak(model: dict, train: dict, steps: int = 2) -> tuple[int, int]:
    """新进程里训练 steps 步，返回 (实测峰值, 估计峰值) 字节。"""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("需要 Linux 的 /proc/self/clear_refs 来量峰值 / needs Linux /proc")
    raw = {"model": model, "train": dict(device="cpu", threads=1, max_steps=10, log_every=1, **train),
           "optim": dict(name="adamw", lr=1e-3, min_lr=1e-4, warmup_steps=1)}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_memory_estimate as t; "
            f"t.probe({raw!r}, {steps})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["measured"], result["estimated"]


TINY = dict(vocab_size=6000, n_layer=4, n_head=4, n_kv_head=2, d_model=256, max_seq_len=256)
MID = dict(vocab_size=8000, n_layer=8, n_head=8, n_kv_head=4, d_model=512, max_seq_len=512)
BASE = dict(vocab_size=32000, n_layer=12, n_head=12, n_kv_head=4, d_model=768, ffn_hidden=2944, max_seq_len=256)


@pytest.mark.parametrize("model, train", [
    pytest.param(TINY, dict(micro_batch_size=16, dtype="float32"), id="tiny-fp32"),
    pytest.param(MID, dict(micro_batch_size=4, dtype="bfloat16"), id="mid-bf16", marks=pytest.mark.slow),
    pytest.param(BASE, dict(micro_batch_size=2, dtype="bfloat16"), id="base-bf16", marks=pytest.mark.slow),
    pytest.param(MID, dict(micro_batch_size=4, dtype="bfloat16", activation_checkpointing=True, loss_chunk_tokens=512),
                 id="mid-checkpointed-chunked", marks=pytest.mark.slow),
])
def test_measured_peak_is_within_20_percent(model, train):
    if train["dtype"] == "bfloat16" and not torch.backends.mkldnn.is_available():
        pytest.skip("CPU 上的 bf16 需要 oneDNN")
    measured, estimated = measure_peak(model, train)
    print(f"measured {measured / MIB:.0f} MiB, estimated {estimated / MIB:.0f} MiB")
    assert abs(estimated - measured) <= 0.2 * measured, (measured / MIB, estimated / MIB)


# ---------------------------------------------------------------------------
# 4. 命令行与文档
# ---------------------------------------------------------------------------

def test_dry_run_prints_the_estimate_and_trains_nothing(tmp_path):
    done = run_cli("pretrain", "--config", "base", "--dry-run", "--set", f"train.out_dir={tmp_path / 'run'}",
                   "--set", "train.device=cuda", "--set", "train.micro_batch_size=4")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "峰值 / peak" in done.stdout and "124.87M" in done.stdout and "cuda" in done.stdout
    assert "32000" in done.stdout            # 没有数据目录：词表按 32000 估计，并说出来
    assert not (tmp_path / "run").exists()


def test_dry_run_of_dpo_reads_the_structure_from_init_from(start_checkpoint):
    done = run_cli("dpo", "--config", "tiny", "--dry-run", "--set", f"init_from={start_checkpoint}",
                   "--set", "train.device=cpu", "--set", "train.dtype=float32")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 层 layers" in done.stdout and "frozen copy" in done.stdout   # 结构来自检查点（2 层），有参考模型
    assert "32 行 rows × 64 位置" in done.stdout                           # 2 × 16 对，检查点的 max_seq_len


def gpu_table() -> str:
    """docs/memory.md 里的 GPU 表：small / base 预设、bf16、AdamW，能放下的最大微批次（见那里的余量说明）。"""
    presets = [("small", 8000), ("base", 32000)]
    modes = [(False, 0), (True, 0), (False, 4096), (True, 4096)]
    gpus = [8, 12, 24, 80]
    lines = ["| 预设 preset | 序列 seq | 激活检查点 AC | 分块损失 chunk | " + " | ".join(f"{g} GB" for g in gpus) + " |",
             "|---|---|---|---|" + "---|" * len(gpus)]
    for preset, vocab in presets:
        for seq_len in (512, 1024):
            for checkpointing, chunk in modes:
                config = load_config(preset, [f"model.vocab_size={vocab}", f"model.max_seq_len={seq_len}",
                                              f"train.activation_checkpointing={str(checkpointing).lower()}",
                                              f"train.loss_chunk_tokens={chunk}"])
                fits = [largest_micro_batch(config, "pretrain", torch.bfloat16, usable_bytes(g)) for g in gpus]
                lines.append(f"| {preset} | {seq_len} | {'开' if checkpointing else '关'} | "
                             f"{chunk or '关'} | " + " | ".join(str(n) for n in fits) + " |")
    return "\n".join(lines)


def usable_bytes(gigabytes: int) -> float:
    """余量：先减 1 GiB（CUDA 上下文、cuBLAS 工作区），剩下的再留 10% 给分配器碎片。"""
    return (gigabytes - 1) * 2 ** 30 * 0.9


def test_the_gpu_table_in_the_docs_is_what_the_estimator_says():
    docs = (TESTS.parent / "docs" / "memory.md").read_text(encoding="utf-8")
    assert gpu_table() in docs, "docs/memory.md 的表过期了；用 tests/test_memory_estimate.py 的 gpu_table() 重新生成"
