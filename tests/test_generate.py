"""生成：KV 缓存的贪心解码等于朴素的完整重算；采样各环节的行为。"""

import pytest
import torch

from towergpt.errors import TowerGPTError
from towergpt.generate import (
    apply_repetition_penalty,
    compile_for_decoding,
    filter_top_k,
    filter_top_p,
    generate,
    stream_generate,
)
from towergpt.model import GPT, GPTConfig

VOCAB = 61


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=48)).eval()


def naive_greedy(model, idx, steps):
    """不用缓存：每一步都把整段序列重新算一遍，取最后位置的最大值。"""
    for _ in range(steps):
        next_id = model(idx)[0, -1].argmax()
        idx = torch.cat([idx, next_id.view(1, 1)], dim=1)
    return idx


def test_greedy_generation_equals_naive_full_recompute(model):
    prompt = torch.tensor([[5, 17, 33, 2]])
    assert torch.equal(generate(model, prompt, 30, temperature=0.0), naive_greedy(model, prompt, 30))


def test_generation_stops_at_the_context_limit(model):
    prompt = torch.randint(0, VOCAB, (1, 40), generator=torch.Generator().manual_seed(1))
    out = generate(model, prompt, 100)
    assert out.shape == (1, 48)
    with pytest.raises(TowerGPTError, match="48"):
        generate(model, torch.zeros(1, 49, dtype=torch.long), 1)


def test_generation_stops_at_eos(model):
    prompt = torch.tensor([[1, 2, 3]])
    first = generate(model, prompt, 1)[0, -1].item()
    out = generate(model, prompt, 20, eos_id=first)
    assert out.shape == (1, 4) and out[0, -1].item() == first


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    prompt = torch.tensor([[7, 8, 9]])
    a = generate(model, prompt, 20, temperature=1.0, top_p=0.9, seed=3)
    b = generate(model, prompt, 20, temperature=1.0, top_p=0.9, seed=3)
    assert torch.equal(a, b)
    assert torch.equal(generate(model, prompt, 20, temperature=1.5, top_k=1, seed=4), generate(model, prompt, 20))


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    kept = torch.isfinite(filter_top_k(logits, 2))
    assert kept.tolist() == [False, True, False, True, False]


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()
    assert torch.isfinite(filter_top_p(logits, 0.7)).tolist() == [True, True, False, False]
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [True, False, False, False]
    assert torch.isfinite(filter_top_p(logits, 1.0)).all()


def test_repetition_penalty_makes_seen_tokens_less_likely():
    logits = torch.tensor([2.0, -1.0, 3.0])
    seen = torch.tensor([True, True, False])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [1.0, -2.0, 3.0]


def test_stream_generate_yields_what_generate_returns(model):
    prompt = torch.tensor([[4, 4, 4]])
    streamed = list(stream_generate(model, prompt, 12))
    assert generate(model, prompt, 12)[0, 3:].tolist() == streamed


def test_generate_restores_training_mode(model):
    model.train()
    generate(model, torch.tensor([[1]]), 2)
    assert model.training
    model.eval()


def test_batched_greedy_with_left_padding_equals_one_at_a_time(model):
    from towergpt.generate import generate_batch_greedy

    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    batched = generate_batch_greedy(model, prompts, 8, pad_id=0)
    for prompt, got in zip(prompts, batched):
        alone = generate(model, torch.tensor([prompt]), 8)[0, len(prompt):].tolist()
        assert got == alone
    stop = batched[0][3]
    cut = generate_batch_greedy(model, prompts[:1], 8, pad_id=0, eos_id=stop)
    assert cut == [batched[0][:batched[0].index(stop)]]


def test_compiled_decoding_equals_eager_including_a_rolled_back_cache(model):
    """torch.compile 后的解码与不编译逐 token 相同；缓存回退（聊天复用历史）后继续生成也相同。"""
    compiled = compile_for_decoding(model)
    prompt = torch.tensor([[5, 17, 33, 2, 9]])
    assert torch.equal(generate(compiled, prompt, 20), generate(model, prompt, 20))

    def continue_after_rollback(m):
        cache = m.new_kv_cache(1, 48)
        first = list(stream_generate(m, prompt, 8, kv_cache=cache))
        cache.length = prompt.size(1) + 3                 # 丢掉后面生成的几个，换一个新输入接着生成
        return first + list(stream_generate(m, torch.tensor([[7, 8]]), 8, kv_cache=cache))

    assert continue_after_rollback(compiled) == continue_after_rollback(model)


def test_banned_by_ngrams_finds_every_token_that_would_repeat_an_ngram():
    from towergpt.generate import banned_by_ngrams

    assert banned_by_ngrams([5, 6, 7, 5, 6], 3) == [7]            # “5 6 7” 已经有了，不许再写 7
    assert banned_by_ngrams([5, 6, 7, 5, 6, 8, 5, 6], 3) == [7, 8]
    assert banned_by_ngrams([5, 6, 7], 3) == []                   # 前缀“6 7”之前没出现过
    assert banned_by_ngrams([4, 4, 4], 1) == [4, 4, 4]            # n = 1：出现过的都不许再出现
    assert banned_by_ngrams([1, 2, 3], 0) == []


def test_no_repeat_ngram_stops_a_greedy_loop():
    from conftest import tiny_gpt
    from towergpt.generate import generate

    model = tiny_gpt(vocab_size=40)
    idx = torch.tensor([[1, 2, 3]])

    def trigrams(ids):
        return [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]

    plain = generate(model, idx, 30)[0].tolist()
    fixed = generate(model, idx, 30, no_repeat_ngram=3)[0].tolist()
    assert len(set(trigrams(plain))) < len(trigrams(plain))      # 不加限制时贪心解码在打转
    assert len(set(trigrams(fixed))) == len(trigrams(fixed))      # 加了之后没有任何 3 元组出现两次
    assert fixed[:3] == [1, 2, 3] and len(fixed) == 33


def test_compiled_step_compiles_once_for_every_position_and_prompt_length():
    """位置是张量、缓存形状固定：换提示词长度、换位置、回退缓存，都不会重新编译。"""
    from conftest import tiny_gpt

    model = tiny_gpt(vocab_size=VOCAB, weight_std=0.3)
    compiled = compile_for_decoding(model)
    generate(compiled, torch.tensor([[5, 17, 33, 2, 9]]), 10, vocab_limit=VOCAB - 5)   # 编译：预填充一张、单步一张
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for prompt in ([[4, 8, 15]], [[16, 23, 42, 4, 8, 15, 16, 23]], [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]):
        prompt = torch.tensor(prompt)
        assert torch.equal(generate(compiled, prompt, 25, vocab_limit=VOCAB - 5),
                           generate(model, prompt, 25, vocab_limit=VOCAB - 5))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_compiled_decoder_behaves_like_the_model_it_wraps(model):
    from towergpt.checkpoint import unwrap_model

    compiled = compile_for_decoding(model)
    assert unwrap_model(compiled) is model
    assert compiled.config is model.config and compiled.new_kv_cache(1, 8).max_len == 8
    cache = compiled.new_kv_cache(1, 6)
    list(stream_generate(compiled, torch.tensor([[1, 2, 3]]), 2, kv_cache=cache))
    with pytest.raises(ValueError, match="KV"):                          # 缓存满了给出清楚的错误
        compiled.step(torch.tensor([[1, 2, 3]]), cache, VOCAB)
