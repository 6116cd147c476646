"""提示词查找的投机解码：输出与普通贪心逐 token 相同；缓存回退后与重新计算相同；重复的文字上草稿被接受。"""

import pytest
import torch

from conftest import tiny_gpt
from towergpt.errors import TowerGPTError
from towergpt.generate import compile_for_decoding, generate
from towergpt.prompt_lookup import ContextIndex, LookupStats, stream_prompt_lookup, verify_draft

VOCAB = 61


@pytest.fixture(scope="module")
def varied():
    """权重放大的随机模型：输出杂乱、随上下文而变，草稿大多猜不中（“不重复上下文的文字”）。"""
    return tiny_gpt(vocab_size=VOCAB, weight_std=0.3)


@pytest.fixture(scope="module")
def looping():
    """通常初始化的随机模型：贪心解码很快陷进打转（“重复上下文的文字”），草稿常常猜中。"""
    return tiny_gpt(vocab_size=VOCAB, seed=1)


def prompts(count: int, seed: int) -> list[torch.Tensor]:
    """一半是随机 token，一半是“一段话 + 它的开头”（要续写的内容就在上下文里）。"""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        passage = torch.randint(4, VOCAB, (int(torch.randint(3, 14, (1,), generator=generator)),), generator=generator)
        out.append(torch.cat([passage, passage[: len(passage) // 2 + 1]]) if i % 2 else passage)
    return [p.view(1, -1) for p in out]


def lookup(model, prompt, steps, stats=None, **kwargs):
    return list(stream_prompt_lookup(model, prompt, steps, stats=stats, **kwargs))


def greedy(model, prompt, steps, **kwargs):
    return generate(model, prompt, steps, **kwargs)[0, prompt.size(1):].tolist()


def test_equals_greedy_on_many_prompts(varied, looping):
    for model in (varied, looping):
        for prompt in prompts(10, seed=3):
            expected = greedy(model, prompt, 32)
            for num_draft, max_ngram in [(1, 1), (3, 2), (5, 3), (8, 4)]:
                assert lookup(model, prompt, 32, num_draft=num_draft, max_ngram=max_ngram) == expected, \
                    (prompt.tolist(), num_draft, max_ngram)


def test_generate_with_prompt_lookup_returns_what_generate_returns(varied):
    prompt = prompts(2, seed=7)[1]
    assert torch.equal(generate(varied, prompt, 30, prompt_lookup=4), generate(varied, prompt, 30))


def test_drafts_are_accepted_on_repetitive_text_and_save_forwards(looping):
    stats = LookupStats()
    out = lookup(looping, torch.tensor([[5, 6, 7, 8, 5, 6, 7]]), 40, stats, num_draft=5)
    assert out == greedy(looping, torch.tensor([[5, 6, 7, 8, 5, 6, 7]]), 40)
    assert stats.accepted > 0 and stats.acceptance_rate > 0.5
    assert stats.forwards < len(out) - 1          # 不用投机解码时预填充之后要 len(out) - 1 次前向


def test_text_that_does_not_repeat_still_matches_and_counts_its_drafts(varied):
    stats = LookupStats()
    prompt = torch.arange(4, 24).view(1, -1)      # 20 个互不相同的 token：前文里几乎找不到可抄的
    assert lookup(varied, prompt, 30, stats, num_draft=4) == greedy(varied, prompt, 30)
    assert stats.forwards + stats.accepted == 29  # 每次前向产出 1 个，外加被接受的草稿
    assert stats.accepted <= stats.drafted


def test_rolled_back_cache_equals_a_fresh_recompute(varied):
    """核对之后缓存里留下的（last_token + 被接受的草稿）必须与从头算一遍完全一样；之后的解码也一样。"""
    prompt = [5, 17, 33, 2, 9, 41]
    expected = greedy(varied, torch.tensor([prompt]), 6)
    cache = varied.new_kv_cache(1, 64)
    with torch.inference_mode():
        varied(torch.tensor([prompt]), kv_cache=cache)             # 缓存里是提示词
        first = expected[0]
        draft = expected[1:3] + [(expected[3] + 1) % VOCAB, 7]     # 前两个对，第三个故意猜错
        new = verify_draft(varied, cache, first, draft, VOCAB)
        assert new == expected[1:4]                                # 两个草稿 + 模型自己的下一个
        assert cache.length == len(prompt) + 3                     # 提示词 + first + 两个被接受的

        fresh = varied.new_kv_cache(1, 64)
        varied(torch.tensor([prompt + expected[:3]]), kv_cache=fresh)
        for layer in range(len(cache.keys)):
            kept = slice(0, cache.length)
            torch.testing.assert_close(cache.keys[layer][:, :, kept], fresh.keys[layer][:, :, kept], atol=1e-5, rtol=0)
            torch.testing.assert_close(cache.values[layer][:, :, kept], fresh.values[layer][:, :, kept],
                                       atol=1e-5, rtol=0)
        # 回退掉的槽位里还是猜错的那两个的键值，但接着解码时看不见它们
        assert verify_draft(varied, cache, expected[3], [], VOCAB) == expected[4:5]


def test_stops_at_eos_even_inside_an_accepted_draft(looping):
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7]])
    plain = greedy(looping, prompt, 40)
    for eos in set(plain[1:]):
        expected = plain[: plain.index(eos) + 1]
        assert lookup(looping, prompt, 40, eos_id=eos, num_draft=6) == expected
        assert lookup(looping, prompt, 40, eos_id=(99, eos)) == expected


def test_stops_at_max_new_tokens_and_at_the_context_limit(looping):
    prompt = torch.tensor([[5, 6, 7, 8, 5, 6, 7]])
    for steps in (1, 2, 3, 7):
        assert lookup(looping, prompt, steps, num_draft=5) == greedy(looping, prompt, steps)
    long_prompt = torch.tensor([[5, 6, 7] * 18])                  # 54 个 token，上下文 64
    out = lookup(looping, long_prompt, 100, num_draft=6)
    assert out == greedy(looping, long_prompt, 100) and len(out) == 10


def test_compiled_decoding_with_prompt_lookup_equals_eager_greedy(looping):
    """编译后核对走固定形状的图（T = 1 与 T = 1 + k 各一张）：结果仍与不编译的贪心解码相同。"""
    compiled = compile_for_decoding(looping)
    for prompt in prompts(4, seed=11):
        stats = LookupStats()
        assert lookup(compiled, prompt, 30, stats, num_draft=4) == greedy(looping, prompt, 30)
        assert stats.accepted > 0


def test_context_index_drafts_from_the_most_recent_longest_match():
    assert ContextIndex([1, 2, 9, 1, 2, 8, 3, 1, 2]).draft(max_ngram=2, num_draft=2) == [8, 3]   # 最近的 “1 2”
    assert ContextIndex([7, 2, 9, 1, 2, 8, 7, 2]).draft(max_ngram=2, num_draft=1) == [9]         # 2 元组优先于 1 元组
    assert ContextIndex([4, 5, 4, 5]).draft(max_ngram=3, num_draft=5) == [4, 5, 4, 5, 4]         # 按周期往下猜
    assert ContextIndex([1, 2, 3]).draft(max_ngram=3, num_draft=4) == []                         # 末尾 token 没出现过
    assert ContextIndex([3]).draft(max_ngram=3, num_draft=4) == []


def test_bad_arguments_give_clear_errors(varied):
    prompt = torch.tensor([[1, 2, 3]])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_draft"):
            lookup(varied, prompt, 5, num_draft=bad)
    with pytest.raises(ValueError, match="max_ngram"):
        lookup(varied, prompt, 5, max_ngram=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        lookup(varied, prompt, 0)
    with pytest.raises(ValueError, match=r"\(1, T\)"):
        lookup(varied, torch.tensor([[1, 2], [3, 4]]), 5)
    with pytest.raises(TowerGPTError, match="64"):
        lookup(varied, torch.zeros(1, 65, dtype=torch.long), 5)
    with pytest.raises(TowerGPTError, match="temperature"):
        generate(varied, prompt, 5, temperature=0.8, prompt_lookup=3)
    with pytest.raises(TowerGPTError, match="temperature"):
        generate(varied, prompt, 5, repetition_penalty=1.2, prompt_lookup=3)


def test_cli_flag_is_checked_before_loading_anything():
    from towergpt.cli.parser import build_parser
    from towergpt.generate import check_sampling_args

    parser = build_parser()
    args = parser.parse_args(["generate", "--ckpt", "x", "--prompt", "p", "--prompt-lookup", "5"])
    assert args.prompt_lookup == 5
    with pytest.raises(TowerGPTError, match="--temperature 0"):
        check_sampling_args(args)                                  # 默认温度 0.8：投机解码只用于贪心
    check_sampling_args(parser.parse_args(["generate", "--ckpt", "x", "--prompt", "p", "--prompt-lookup", "5",
                                           "--temperature", "0"]))
    with pytest.raises(TowerGPTError, match="prompt-lookup"):
        check_sampling_args(parser.parse_args(["generate", "--ckpt", "x", "--prompt", "p", "--prompt-lookup", "-1"]))
