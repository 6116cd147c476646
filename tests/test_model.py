"""模型的关键性质：因果性、KV 缓存与完整重算一致、padding 不变性、梯度、初始损失。"""

import math

import pytest
import torch

from towergpt.model import GPT, IGNORE_INDEX, GPTConfig

VOCAB = 97


def make_model(n_kv_head=4, **overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=n_kv_head, d_model=32, max_seq_len=64,
                       **overrides)
    return GPT(config)


@pytest.mark.parametrize("training", [True, False])
def test_changing_a_token_never_changes_earlier_logits(training):
    model = make_model(n_kv_head=2)
    model.train(training)  # dropout=0，所以训练模式下也是确定的：这里检查掩码在两种模式下都在
    idx = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    base = model(idx)
    for t in (0, 7, 19):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % VOCAB
        logits = model(changed)
        assert torch.equal(logits[:, :t], base[:, :t]), f"position {t} leaked backwards"
        assert not torch.allclose(logits[:, t], base[:, t])


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_matches_full_recompute_token_by_token(n_kv_head):
    model = make_model(n_kv_head=n_kv_head).eval()
    idx = torch.randint(0, VOCAB, (1, 30), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = model.new_kv_cache()
    prefill = model(idx[:, :10], kv_cache=cache)
    torch.testing.assert_close(prefill, full[:, :10], atol=1e-5, rtol=0)
    for t in range(10, 30):
        step = model(idx[:, t:t + 1], kv_cache=cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=0)
    assert cache.length == 30


def test_kv_cache_accepts_several_tokens_after_a_prefix():
    """聊天时会在已有缓存后面一次接上一整轮新消息：必须与完整重算一致。"""
    model = make_model(n_kv_head=2).eval()
    idx = torch.randint(0, VOCAB, (1, 25), generator=torch.Generator().manual_seed(3))
    full = model(idx)
    cache = model.new_kv_cache()
    model(idx[:, :8], kv_cache=cache)
    chunk = model(idx[:, 8:20], kv_cache=cache)
    torch.testing.assert_close(chunk, full[:, 8:20], atol=1e-5, rtol=0)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_equals_each_sequence_alone(side):
    model = make_model(n_kv_head=2).eval()
    gen = torch.Generator().manual_seed(4)
    lengths = [12, 5, 9]
    seqs = [torch.randint(1, VOCAB, (n,), generator=gen) for n in lengths]
    width = max(lengths)
    batch = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        batch[row, span] = seq
        mask[row, span] = 1
    logits = model(batch, attention_mask=mask)
    assert torch.isfinite(logits).all()
    for row, seq in enumerate(seqs):
        alone = model(seq.unsqueeze(0))[0]
        real = mask[row].bool()
        torch.testing.assert_close(logits[row][real], alone, atol=1e-5, rtol=0)


def test_left_padded_kv_cache_decoding_matches_alone():
    model = make_model(n_kv_head=2).eval()
    seq = torch.randint(1, VOCAB, (1, 10), generator=torch.Generator().manual_seed(5))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), seq], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 10)], dim=1).long()
    cache = model.new_kv_cache()
    model(padded[:, :-1], attention_mask=mask[:, :-1], kv_cache=cache)
    last = model(padded[:, -1:], attention_mask=mask, kv_cache=cache)
    torch.testing.assert_close(last[0, 0], model(seq)[0, -1], atol=1e-5, rtol=0)


def test_every_parameter_gets_a_gradient_and_initial_loss_is_near_ln_vocab():
    model = make_model(n_kv_head=2, tie_embeddings=False)
    idx = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(6))
    targets = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(7))
    _, loss = model(idx, targets)
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
    assert abs(loss.item() - math.log(VOCAB)) < 0.1


def test_ignored_targets_do_not_count():
    model = make_model()
    idx = torch.randint(0, VOCAB, (1, 16), generator=torch.Generator().manual_seed(8))
    targets = idx.roll(-1, dims=1)
    logits, loss_all = model(idx, targets)
    masked = targets.clone()
    masked[:, :8] = IGNORE_INDEX
    _, loss_half = model(idx, masked)
    expected = torch.nn.functional.cross_entropy(logits[0, 8:], targets[0, 8:])
    torch.testing.assert_close(loss_half, expected)
    assert not torch.isclose(loss_all, loss_half)


def test_weight_tying_shares_one_tensor_and_counts_once():
    tied = make_model()
    untied = make_model(tie_embeddings=False)
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == VOCAB * 32
    # 共享权重时输出头的 V×C 矩阵乘仍要算：6·(非词向量参数 + V·C) + 每层注意力 12·T·C
    config = tied.config
    attention = 12 * config.n_layer * 64 * config.d_model
    expected = 6 * (tied.num_params(exclude_embedding=True) + VOCAB * config.d_model) + attention
    assert tied.flops_per_token(64) == expected
    assert untied.flops_per_token(64) == 6 * untied.num_params(exclude_embedding=True) + attention


def test_residual_projections_use_scaled_init():
    model = GPT(GPTConfig(vocab_size=1000, n_layer=8, n_head=4, n_kv_head=4, d_model=256, max_seq_len=32))
    expected = 0.02 / math.sqrt(2 * 8)
    assert abs(model.blocks[0].attn.out_proj.weight.std().item() - expected) < expected * 0.1
    assert abs(model.blocks[0].ffn.gate_proj.weight.std().item() - 0.02) < 0.002


def test_too_long_input_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="max_seq_len=64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("bad", [dict(n_head=5), dict(n_kv_head=3), dict(d_model=36, n_head=12, n_kv_head=12)])
def test_invalid_config_is_rejected(bad):
    settings = dict(vocab_size=10, n_layer=1, n_head=4, n_kv_head=4, d_model=32, max_seq_len=8)
    settings.update(bad)
    with pytest.raises(ValueError):
        GPTConfig(**settings)


def test_repeat_kv_matches_the_grouped_attention_kernel():
    """GPU 上有掩码或 fp32 时改走“先复制键值”的路径：它与 enable_gqa 的结果必须相同（相邻的查询头共用一组）。"""
    import torch.nn.functional as F

    from towergpt.model import repeat_kv

    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 10, 8, generator=generator)
    k, v = torch.randn(2, 2, 10, 8, generator=generator), torch.randn(2, 2, 10, 8, generator=generator)
    grouped = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    repeated = F.scaled_dot_product_attention(q, repeat_kv(k, 3), repeat_kv(v, 3), is_causal=True)
    assert torch.allclose(grouped, repeated, atol=1e-6)
    assert torch.equal(repeat_kv(k, 3)[:, 3:6], k[:, 1:2].expand(2, 3, 10, 8))
