"""词表的填充行永远不会被生成：无论它们的打分多大（generate / chat / serve / 批量贪心）。

模型的词表常被向上取到 64 的倍数，多出来的 id 分词器里没有。这里故意把这些填充行做成
“和最可能的真 token 一样可能，甚至更可能”，再在每一个生成入口上核对：产出的 id 全在分词器词表里。
"""

import json

import pytest
import torch

from conftest import run_cli, tiny_gpt
from towergpt.chat import ChatSession, Sampling
from towergpt.checkpoint import save_model_files
from towergpt.generate import generate, generate_batch_greedy, stream_generate
from towergpt.model import GPT
from towergpt.tokenizer import Tokenizer

EXTRA_ROWS = 64          # 填充行数：取到 64 的倍数之后再多 64 行，保证至少有 64 个填充 id


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


def padded_vocab(tokenizer) -> int:
    return 64 * -(-tokenizer.vocab_size // 64) + EXTRA_ROWS


def make_padding_rows_most_likely(model: GPT, real_vocab: int, probe: torch.Tensor) -> None:
    """改权重，让每个位置上填充 id 的打分都比最好的真 token 高一点。

    做法：词向量第 0 维设成一个大常数，它主导残差流，最后 RMSNorm 之后第 0 维几乎是同一个正数 s；
    输出头的填充行只在第 0 维有权重 K，于是每个位置填充 id 的打分都是 K·s。K 取成
    “探针文本上真 token 最高打分 / s”再放大一点。不共享词向量与输出头，改输出头不影响输入。
    """
    with torch.no_grad():
        model.embed.weight[:, 0] = 20.0
        model.lm_head.weight[real_vocab:] = 0.0
        model.lm_head.weight[real_vocab:, 0] = 1.0
        logits = model(probe)[0]                               # (T, V)
        unit = logits[:, real_vocab]                           # (T,) 即每个位置的 s
        best_real = logits[:, :real_vocab].max(dim=-1).values  # (T,)
        assert (unit > 0).all()
        scale = float((best_real / unit).max()) * 1.5 + 1.0
        model.lm_head.weight[real_vocab:, 0] = scale
        logits = model(probe)[0]
        # 前提成立：每个位置上，任何一个填充 id 都比最可能的真 token 更可能
        assert (logits[:, real_vocab:].min(dim=-1).values > logits[:, :real_vocab].max(dim=-1).values).all()


@pytest.fixture(scope="module")
def hostile(tokenizer):
    """(模型, 检查点目录)：填充行比任何真 token 都更可能。"""
    model = tiny_gpt(padded_vocab(tokenizer), max_seq_len=128, tie_embeddings=False)
    probe = torch.tensor([[tokenizer.bos_id] + tokenizer.encode("今天上午，国务院召开会议，讨论经济工作。")])
    make_padding_rows_most_likely(model, tokenizer.vocab_size, probe)
    return model


@pytest.fixture(scope="module")
def hostile_checkpoint(hostile, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("hostile") / "ckpt"
    save_model_files(hostile, tokenizer, directory)
    return directory


def prompt_ids(tokenizer, text="今天上午，国务院"):
    return torch.tensor([[tokenizer.bos_id] + tokenizer.encode(text)])


def test_the_hostile_model_would_pick_padding_without_the_limit(hostile, tokenizer):
    """对照：不告诉生成函数词表大小时，这个模型的贪心结果就是填充 id（说明下面的测试确实能失败）。"""
    out = generate(hostile, prompt_ids(tokenizer), 5)[0, -5:]
    assert (out >= tokenizer.vocab_size).all()


def test_greedy_and_sampling_only_produce_tokenizer_ids(hostile, tokenizer):
    limit = tokenizer.vocab_size
    idx = prompt_ids(tokenizer)
    settings = [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=1.5, top_k=50),
                dict(temperature=1.0, top_p=0.95), dict(temperature=1.0, repetition_penalty=1.3)]
    for seed in range(5):
        for setting in settings:
            new = generate(hostile, idx, 30, seed=seed, vocab_limit=limit, **setting)[0, idx.size(1):]
            assert new.max().item() < limit, setting
            tokenizer.decode(new.tolist())                      # 解码不再报“超出词表范围”


def test_batched_greedy_only_produces_tokenizer_ids(hostile, tokenizer):
    prompts = [tokenizer.encode(text) for text in ("今天", "国务院召开会议", "好")]
    outputs = generate_batch_greedy(hostile, prompts, 10, pad_id=tokenizer.pad_id, vocab_limit=tokenizer.vocab_size)
    assert all(ids and max(ids) < tokenizer.vocab_size for ids in outputs)


def test_stream_generate_with_a_rolled_back_cache_keeps_to_the_vocabulary(hostile, tokenizer):
    cache = hostile.new_kv_cache(1, 128)
    first = list(stream_generate(hostile, prompt_ids(tokenizer), 10, temperature=1.0, seed=1, kv_cache=cache,
                                 vocab_limit=tokenizer.vocab_size))
    assert max(first) < tokenizer.vocab_size


def test_chat_session_only_produces_tokenizer_ids(hostile, tokenizer):
    session = ChatSession(hostile, tokenizer, sampling=Sampling(max_new_tokens=20, temperature=1.0, seed=0))
    for text in ("你好", "再说一句"):
        "".join(session.ask(text))
    answers = [ids for role, ids in session.history if role == "assistant"]
    assert all(ids and max(ids) < tokenizer.vocab_size for ids in answers)


def test_generate_command_samples_without_running_off_the_vocabulary(hostile_checkpoint):
    for seed in ("0", "187"):
        result = run_cli("generate", "--ckpt", hostile_checkpoint, "--prompt", "今天上午，国务院",
                         "--temperature", "1.0", "--max-new-tokens", "30", "--seed", seed)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "超出词表" not in result.stderr


def test_server_streams_to_done_and_answers_200(hostile_checkpoint):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    from test_serve import LiveServer, http

    from towergpt.checkpoint import load
    from towergpt.server.app import create_app
    from towergpt.server.settings import ServerSettings

    model, tokenizer = load(hostile_checkpoint)
    settings = ServerSettings(model_name="tiny", max_active=2, max_waiting=4, max_tokens_limit=64)
    with LiveServer(create_app(model, tokenizer, settings)) as live:
        body = {"model": "tiny", "prompt": "今天上午，国务院", "max_tokens": 30, "seed": 187}
        status, text = http(live.url + "/v1/completions", body)
        assert status == 200, text
        assert json.loads(text)["choices"][0]["finish_reason"] == "length"
        status, text = http(live.url + "/v1/completions", {**body, "stream": True})
        assert status == 200, text
        assert text.rstrip().endswith("data: [DONE]")
        messages = [{"role": "user", "content": "你好"}]
        status, text = http(live.url + "/v1/chat/completions", {"model": "tiny", "messages": messages,
                                                                "max_tokens": 20, "seed": 3})
        assert status == 200, text
