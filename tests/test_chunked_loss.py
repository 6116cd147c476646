"""分块的输出头 + 交叉熵（towergpt/chunked_loss.py）：与完整 logits 的写法逐项相等，而且真的不造出 (B, T, V)。

相等：log 概率、平均损失、对隐藏状态 / 输出头权重 / 真实小模型全部参数的梯度；有被忽略的位置、
块大小不整除 B·T、块比 B·T 还大、共享与不共享词向量、温度；DPO 和 GRPO 的一步目标函数。
不造出：用一个 TorchDispatchMode 看前向和反向里每个算子产出的每个张量，记下最大的那个
（见 LargestTensor 的说明），断言它比整批 logits 小。
"""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from towergpt.chunked_loss import (IGNORE_INDEX, chunked_target_logprobs, mean_cross_entropy,
                                   target_logprobs_from_logits)
from towergpt.data.prompt_dataset import Prompt
from towergpt.model import GPT, GPTConfig
from towergpt.train.dpo import DPOObjective, freeze
from towergpt.train.grpo import GRPOObjective, _training_rows
from towergpt.train.rewards import Reward

CPU = torch.device("cpu")


def close(actual, expected, rel=1e-6, atol=1e-7):
    """fp32 的“相等”：最大误差不超过 expected 最大绝对值的 rel 倍，再加 atol（给全 0 的张量）。"""
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rel * scale + atol, (actual - expected).abs().max().item()


def with_ignored(targets: torch.Tensor) -> torch.Tensor:
    """把一部分位置标成 IGNORE_INDEX（每行开头几个，外加一整行：像 SFT 的提示词和没有回答的行）。"""
    targets = targets.clone()
    targets[:, :3] = IGNORE_INDEX
    targets[1] = IGNORE_INDEX
    return targets


# ---- 原语本身：hidden、weight 直接给 -------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 7, 24, 1000])        # N·T = 24：整除的、不整除的、恰好一块、比全部还大
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_and_both_gradients_equal_the_full_logits(chunk, temperature):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 8, 16, generator=generator, requires_grad=True)        # (N, T, C)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)          # (V, C)
    targets = with_ignored(torch.randint(0, 50, (3, 8), generator=generator))
    upstream = torch.randn(3, 8, generator=generator)                               # 任意的 d loss / d log p

    expected = target_logprobs_from_logits(hidden @ weight.t(), targets, temperature)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (hidden, weight))
    actual = chunked_target_logprobs(hidden, weight, targets, chunk, temperature)
    actual_grads = torch.autograd.grad((actual * upstream).sum(), (hidden, weight))

    close(actual, expected)
    assert torch.all(actual[targets == IGNORE_INDEX] == 0)
    for got, want in zip(actual_grads, expected_grads):
        close(got, want)


def test_a_frozen_output_layer_gets_no_gradient_and_the_hidden_gradient_is_unchanged():
    """LoRA 冻结了输出头：反向不为它算 gᵀ·h（省一次大矩阵乘），隐藏状态的梯度照旧。"""
    generator = torch.Generator().manual_seed(3)
    hidden = torch.randn(2, 6, 8, generator=generator, requires_grad=True)
    weight = torch.randn(30, 8, generator=generator)                                # requires_grad=False
    targets = with_ignored(torch.randint(0, 30, (2, 6), generator=generator))
    expected = torch.autograd.grad(target_logprobs_from_logits(hidden @ weight.t(), targets).sum(), hidden)[0]
    actual = torch.autograd.grad(chunked_target_logprobs(hidden, weight, targets, 5).sum(), hidden)[0]
    close(actual, expected)
    assert weight.grad is None


def test_per_token_logprobs_are_log_softmax_gathered_and_the_mean_is_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 11, generator=generator)
    targets = with_ignored(torch.randint(0, 11, (2, 5), generator=generator))
    logprobs = target_logprobs_from_logits(logits, targets)
    by_hand = torch.log_softmax(logits, dim=-1)
    assert logprobs[0, 4] == pytest.approx(by_hand[0, 4, targets[0, 4]].item())
    assert torch.all(logprobs[targets == IGNORE_INDEX] == 0)
    expected = F.cross_entropy(logits.view(-1, 11), targets.view(-1), ignore_index=IGNORE_INDEX)
    close(mean_cross_entropy(logprobs, targets), expected)


def test_a_chunk_size_of_zero_is_a_clear_error():
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_target_logprobs(torch.zeros(2, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long), 0)


# ---- 通过真实的小模型 ------------------------------------------------------------------------

VOCAB = 512


def small_model(tie_embeddings=True, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=32,
                         tie_embeddings=tie_embeddings))


def batch(seed=2, rows=4, length=32):
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, VOCAB, (rows, length), generator=generator)
    return idx, with_ignored(torch.randint(0, VOCAB, (rows, length), generator=generator))


def loss_and_grads(model, chunk, idx, targets, per_token=False, temperature=1.0):
    model.zero_grad(set_to_none=True)
    model.loss_chunk_tokens = chunk
    if per_token:
        weights = torch.linspace(-1.0, 1.0, targets.numel()).view(targets.shape)
        loss = (model(idx, targets, per_token=True, temperature=temperature) * weights).sum()
    else:
        logits, loss = model(idx, targets)
        assert (logits is None) == (chunk > 0)       # 分块时根本没有 logits 可返回
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize("chunk", [7, 128, 1000])         # B·T = 128
def test_the_model_loss_and_every_gradient_equal_the_plain_path(tie_embeddings, chunk):
    model = small_model(tie_embeddings)
    idx, targets = batch()
    plain_loss, plain_grads = loss_and_grads(model, 0, idx, targets)
    loss, grads = loss_and_grads(model, chunk, idx, targets)
    close(loss, plain_loss)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        close(grads[name], plain_grads[name], rel=2e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_the_model_per_token_logprobs_equal_the_plain_path(temperature):
    model = small_model()
    idx, targets = batch(seed=3)
    plain_loss, plain_grads = loss_and_grads(model, 0, idx, targets, True, temperature)
    loss, grads = loss_and_grads(model, 13, idx, targets, True, temperature)
    close(loss, plain_loss, rel=2e-6)
    for name in grads:
        close(grads[name], plain_grads[name], rel=2e-6)
    with pytest.raises(ValueError, match="per_token"):
        model(idx, targets, temperature=0.5)


def test_under_bf16_autocast_the_matmul_precision_matches_the_plain_path():
    """autocast 下两边的矩阵乘都用 bf16、交叉熵都用 fp32：只剩 bf16 舍入的差别（分成几块时 W 的梯度按块舍入）。"""
    model = small_model()
    idx, targets = batch(seed=4)
    results = {}
    for chunk in (0, 128, 24):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model.zero_grad(set_to_none=True)
            model.loss_chunk_tokens = chunk
            _, loss = model(idx, targets)
        loss.backward()
        results[chunk] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    plain_loss, plain_grads = results[0]
    assert plain_loss.dtype == torch.float32
    for chunk in (128, 24):
        loss, grads = results[chunk]
        close(loss, plain_loss, rel=1e-5)
        for name in grads:
            close(grads[name], plain_grads[name], rel=3e-2 if chunk == 24 else 1e-4)   # 1e-4：fp32 累加顺序；bf16 的一个舍入是 4e-3


# ---- 最大的张量 ------------------------------------------------------------------------------

class LargestTensor(TorchDispatchMode):
    """记下它开着时每个 aten 算子产出的最大张量（字节）。

    为什么这样量：CPU 上没有 torch.cuda.max_memory_allocated；tracemalloc 看不见 torch 的分配；
    saved-tensors 钩子只看得见留给反向的张量，看不见“造出来、马上用完”的临时张量（分块要消灭的正是它）。
    而每个张量都是某个算子的输出：在分发层拦下每个算子（前向、反向、自定义 Function 里面都算；CPU 上反向
    在同一个线程里跑），看它的输出，就不会漏掉任何一个。
    """

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in torch.utils._pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


def largest_tensor_of(step) -> int:
    with LargestTensor() as mode:
        step()
    return mode.largest


def test_with_chunking_no_tensor_is_as_large_as_the_full_logits():
    model = small_model()
    idx, targets = batch()
    full_logits = idx.numel() * VOCAB * 4                                      # B·T·V·4 字节
    plain = largest_tensor_of(lambda: loss_and_grads(model, 0, idx, targets))
    chunked = largest_tensor_of(lambda: loss_and_grads(model, 16, idx, targets))
    assert plain >= full_logits                      # 量法看得见整批的 logits
    assert chunked < full_logits / 2, (chunked, full_logits)


# ---- DPO 与 GRPO 的一步 ----------------------------------------------------------------------

def objective_step(model, objective, batch_, chunk, seed=0):
    """设好分块、跑一次目标函数并反向，返回 (结果, 各参数的梯度, 最大张量的字节数)。"""
    model.zero_grad(set_to_none=True)
    model.loss_chunk_tokens = chunk
    reference = getattr(objective, "reference", None)
    if reference is not None:
        reference.loss_chunk_tokens = chunk
    torch.manual_seed(seed)                          # GRPO 采样用全局随机数：两次得到同样的回答
    captured = {}

    def step():
        captured["result"] = objective(model, batch_, CPU)
        captured["result"].loss.backward()

    largest = largest_tensor_of(step)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return captured["result"], grads, largest


def assert_same_step(model, objective, batch_, chunk, full_logits_bytes):
    plain, plain_grads, plain_largest = objective_step(model, objective, batch_, 0)
    chunked, grads, largest = objective_step(model, objective, batch_, chunk)
    close(chunked.loss.detach(), plain.loss.detach(), rel=2e-6)
    assert chunked.metrics.keys() == plain.metrics.keys()
    for name, value in plain.metrics.items():
        # 奖励差是两个约 −180 的对数概率之和相减：fp32 在这个大小上的一位是 1.5e-5，给 2e-5 的绝对余量
        close(chunked.metrics[name].double(), value.double(), rel=1e-5, atol=2e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for name in grads:
        close(grads[name], plain_grads[name], rel=1e-4)   # 分块改变 fp32 的累加顺序；算错的梯度差的是量级，不是这几位
    assert plain_largest >= full_logits_bytes and largest < full_logits_bytes


def test_a_dpo_step_is_the_same_chunked_and_plain():
    model = small_model(seed=0)
    reference = freeze(small_model(seed=1))          # 参考模型与策略不同：隐式奖励不为 0
    idx, targets = batch(seed=5)                     # 4 行 = 2 对
    objective = DPOObjective(reference, pad_id=3, beta=0.5, label_smoothing=0.1, sft_weight=0.5)
    dpo_batch = {"inputs": idx, "targets": targets, "pairs": 2}
    assert_same_step(model, objective, dpo_batch, chunk=20, full_logits_bytes=idx.numel() * VOCAB * 4)


def test_a_grpo_step_with_kl_and_temperature_is_the_same_chunked_and_plain():
    model = small_model(seed=0)
    model.train()
    tokenizer = SimpleNamespace(im_end_id=2, eos_id=2, pad_id=3, vocab_size=VOCAB,
                                decode=lambda ids: "".join("好" if i % 3 else "a" for i in ids))
    reward = Reward("odd", 1.0, lambda sample: sum(ch == "好" for ch in sample.completion) / 10)
    settings = SimpleNamespace(group_size=4, max_new_tokens=6, temperature=0.8, clip_eps=0.2, kl_coef=0.1)
    objective = GRPOObjective(tokenizer, settings, [reward], reference=freeze(small_model(seed=1)))
    prompts = [Prompt(tuple(range(10, 10 + n)), ({"role": "user", "content": "问"},), "") for n in (5, 9)]
    # 8 个回答，每行最长 9 + 6 − 1 = 14 → 补齐到 32：N·T = 8·32 个位置
    assert_same_step(model, objective, prompts, chunk=24, full_logits_bytes=8 * 32 * VOCAB * 4)


def test_grpo_rows_put_each_answer_token_where_it_is_predicted():
    inputs, targets = _training_rows([[5, 6, 7], [5]], [[8, 9], [10, 11, 12]], pad_id=3, max_seq_len=64)
    assert inputs.shape == targets.shape
    assert inputs[0, :4].tolist() == [5, 6, 7, 8] and inputs[1, :3].tolist() == [5, 10, 11]
    # 位置 t 的输出预测第 t+1 个 token：回答的第 j 个 token 在位置 len(提示词) − 1 + j
    assert targets[0, :5].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 8, 9, IGNORE_INDEX]
    assert targets[1, :4].tolist() == [10, 11, 12, IGNORE_INDEX]
    assert int((targets != IGNORE_INDEX).sum()) == 5
