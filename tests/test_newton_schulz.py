"""Muon 的 Newton–Schulz 在没有 bf16 运算单元的 CPU 上用 fp32（towergpt/train/optim/newton_schulz.py）。"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from towergpt.config import build_config
from towergpt.model import GPT
from towergpt.train.optim import build_optimizer
from towergpt.train.optim import newton_schulz as ns_module
from towergpt.train.optim.newton_schulz import PATCHED_NAME, newton_schulz_fp32, newton_schulz_in_fp32

torch_muon = pytest.importorskip("torch.optim._muon")
COEFFICIENTS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(48, 32), (32, 48), (40, 40)])
def test_the_fp32_iteration_is_torchs_iteration_without_the_bf16_rounding(shape):
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    ours = newton_schulz_fp32(grad, COEFFICIENTS, 5, 1e-7)
    theirs = getattr(torch_muon, PATCHED_NAME)(grad, COEFFICIENTS, 5, 1e-7).float()
    assert ours.dtype == torch.float32 and ours.shape == grad.shape
    # bf16 有 8 位有效数字（相对误差约 4e-3），五次迭代累积下来约 1e-2；算法不同会差到 1 的量级
    assert (ours - theirs).abs().max() < 0.03 * theirs.abs().max()
    # 它确实“近似正交”：奇异值落在 (0.5, 1.5) 附近（Muon 的五次迭代故意不收敛到 1）
    singular = torch.linalg.svdvals(ours)
    assert singular.min() > 0.3 and singular.max() < 1.5


def test_the_switch_is_undone_after_the_block_even_on_error():
    original = getattr(torch_muon, PATCHED_NAME)
    with pytest.raises(RuntimeError):
        with newton_schulz_in_fp32():
            assert getattr(torch_muon, PATCHED_NAME) is newton_schulz_fp32
            raise RuntimeError("boom")
    assert getattr(torch_muon, PATCHED_NAME) is original


class MatmulDtypes(TorchDispatchMode):
    """记下每个矩阵乘（mm / addmm）的输入精度。"""

    def __init__(self):
        super().__init__()
        self.dtypes = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm):
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("has_bf16", [False, True])
def test_muon_uses_bf16_matmuls_only_on_a_cpu_that_has_bf16_units(monkeypatch, has_bf16):
    monkeypatch.setattr(ns_module, "cpu_supports_bf16", lambda: has_bf16)
    config = build_config({"model": dict(vocab_size=64, n_layer=1, n_head=2, n_kv_head=1, d_model=32, max_seq_len=16),
                           "train": dict(device="cpu", dtype="float32"), "optim": dict(name="muon")})
    model = GPT(config.model)
    optimizer = build_optimizer(model, config.optim, torch.device("cpu"))
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    model(tokens, tokens)[1].backward()
    with MatmulDtypes() as seen:
        optimizer.step()
    assert optimizer.fp32_newton_schulz is not has_bf16
    assert (torch.bfloat16 in seen.dtypes) is has_bf16
