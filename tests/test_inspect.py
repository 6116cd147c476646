"""检视器（towergpt inspect）：它给读者看的每样东西都必须是模型真正算出来的。

- 一层层手动走一遍得到的 logits 等于 model(ids)；显式的注意力权重 × v 再过 out_proj 等于注意力模块的输出；
- 概率从大到小、加起来不超过 1；真正的下一个 token 的概率、惊讶度、排名彼此一致；
- 注意力每行和为 1、对角线以上为 0；GQA 的头按键值组标注；
- 最后一层的 logit lens 就是模型自己的预测；
- token 表：原文位置拼回原文，字节回退的几个 piece 共用一个字；对话模式与唯一的对话模板逐 token 相同，模板 token 标出；
- 命令行：--json 是合法的对象，终端视图可读，坏输入一行报错。
"""

import json
import math

import pytest
import torch

from conftest import run_cli, tiny_gpt
from towergpt.chat_template import render_chat
from towergpt.checkpoint import save_model_files
from towergpt.inspect import SCHEMA, inspect_chat, inspect_text
from towergpt.inspect.tokens import text_tokens
from towergpt.inspect.walk import walk
from towergpt.model import repeat_kv
from towergpt.tokenizer import Tokenizer

TEXT = "今天天气很好，我们去公园散步。"
RARE = "鼋鼍"      # 新闻语料里几乎不出现的字：分词器（字符覆盖率 0.98）只能把它们拆成 UTF-8 字节


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


@pytest.fixture(scope="module")
def model(tokenizer):
    # 权重放大到 0.3：随机模型的分布不再接近均匀，排序、排名、注意力才各不相同
    return tiny_gpt(tokenizer.vocab_size, weight_std=0.3)


@pytest.fixture(scope="module")
def report(model, tokenizer):
    return inspect_text(model, tokenizer, TEXT + RARE, top_k=5)


def test_walking_the_model_reproduces_its_forward_pass(model, tokenizer):
    ids = [t.id for t in text_tokens(tokenizer, TEXT)]
    result = walk(model, ids)
    with torch.no_grad():
        expected = model(torch.tensor([ids]))[0]
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-5)
    assert result.residuals.shape == (model.config.n_layer + 1, len(ids), model.config.d_model)


def test_explicit_attention_weights_are_the_ones_the_model_uses(model, tokenizer):
    """A·v 再过 out_proj 必须等于注意力模块（走融合内核）的输出：画出来的权重就是模型用的权重。"""
    ids = [t.id for t in text_tokens(tokenizer, TEXT)]
    T = len(ids)
    result = walk(model, ids)
    block = model.blocks[0]
    with torch.no_grad():
        x = block.attn_norm(model.embed(torch.tensor([ids])))                       # (1, T, C)
        cos, sin = model.rope_cos[:T].view(1, 1, T, -1), model.rope_sin[:T].view(1, 1, T, -1)
        expected = block.attn(x, cos, sin, None, True, None, 0)                       # (1, T, C)
        attn = block.attn
        _, _, v = attn.qkv(x).split([attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim,
                                     attn.n_kv_head * attn.head_dim], dim=-1)
        v = repeat_kv(v.view(1, T, attn.n_kv_head, attn.head_dim).transpose(1, 2), attn.n_head // attn.n_kv_head)
        mixed = (result.attention[0].unsqueeze(0) @ v).transpose(1, 2).reshape(1, T, -1)   # (1, T, C)
        rebuilt = attn.out_proj(mixed)
    torch.testing.assert_close(rebuilt, expected, rtol=1e-4, atol=1e-5)


def test_predictions_are_sorted_probabilities_and_consistent_with_the_actual_next_token(report):
    tokens, predictions = report["tokens"], report["predictions"]
    assert report["schema"] == SCHEMA and len(predictions) == len(tokens)
    for position, row in enumerate(predictions):
        probs = [candidate["prob"] for candidate in row["top"]]
        assert len(probs) == 5 and probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-5
        assert row["entropy_bits"] >= 0
        if position + 1 == len(tokens):
            assert row["next"] is None                         # 最后一个位置之后没有“真正的下一个”
            continue
        actual = row["next"]
        assert actual["id"] == tokens[position + 1]["id"]
        assert actual["surprisal_bits"] == pytest.approx(-math.log2(max(actual["prob"], 1e-300)), abs=1e-3)
        if actual["rank"] == 1:
            assert actual["prob"] == pytest.approx(probs[0], abs=1e-6)
        else:
            assert actual["prob"] <= probs[0]
            if actual["rank"] <= 5:
                assert any(c["id"] == actual["id"] for c in row["top"])
    assert any(row["next"] and row["next"]["rank"] > 1 for row in predictions)   # 随机模型不会次次猜中


def test_attention_rows_sum_to_one_and_nothing_is_above_the_diagonal(report, model):
    attention = report["attention"]
    weights = attention["weights"]
    T = len(report["tokens"])
    assert (len(weights), len(weights[0])) == (model.config.n_layer, model.config.n_head)
    for heads in weights:
        for matrix in heads:
            assert len(matrix) == T and all(len(row) == T for row in matrix)
            for query, row in enumerate(matrix):
                assert sum(row) == pytest.approx(1.0, abs=1e-4)
                assert all(weight == 0 for weight in row[query + 1:])
                assert all(weight >= 0 for weight in row)
    assert any(0 < matrix[-1][0] < 1 for heads in weights for matrix in heads)   # 真的分散在好几个位置上


def test_grouped_query_heads_are_labelled_by_the_key_value_group_they_share(report):
    attention = report["attention"]
    assert (attention["n_head"], attention["n_kv_head"]) == (4, 2)
    assert attention["head_group"] == [0, 0, 1, 1]          # 相邻的两个查询头共用一组键值


def test_the_last_layer_of_the_logit_lens_is_the_models_own_prediction(report, model):
    lens = report["logit_lens"]
    assert [entry["layer"] for entry in lens] == list(range(model.config.n_layer + 1))
    assert lens[0]["name"] == "embedding"
    last = lens[-1]
    for position, row in enumerate(report["predictions"]):
        assert [c["id"] for c in last["top"][position]] == [c["id"] for c in row["top"]]
        assert [c["prob"] for c in last["top"][position]] == pytest.approx([c["prob"] for c in row["top"]], abs=1e-6)
        if row["next"]:
            assert last["next_prob"][position] == pytest.approx(row["next"]["prob"], abs=1e-6)
    # 前面的层给出的是别的分布（否则 lens 什么也没说明）
    assert any(lens[1]["top"][p][0]["prob"] != last["top"][p][0]["prob"] for p in range(len(report["tokens"])))


def test_token_positions_rebuild_the_text_and_byte_pieces_share_their_character(report):
    tokens = report["tokens"]
    source = report["text"]
    assert tokens[0]["kind"] == "control" and tokens[0]["start"] is None        # <s> 不对应任何文字
    body = tokens[1:]
    assert all(t["start"] is not None for t in body)
    assert body[0]["start"] == 0 and body[-1]["end"] == len(source)
    for token in body:
        if token["kind"] == "text":
            assert source[token["start"]:token["end"]] == token["text"]
    bytes_pieces = [t for t in body if t["kind"] == "byte"]
    assert len(bytes_pieces) >= 3, "RARE 应该走字节回退；分词器变了就换两个更少见的字"
    rare_start = len(TEXT)
    for token in bytes_pieces:
        assert token["end"] - token["start"] == 1 and token["start"] >= rare_start
    assert {t["start"] for t in bytes_pieces} == {rare_start, rare_start + 1}   # 两个字，各占几个字节 piece


def test_a_chat_is_rendered_by_the_one_template_with_template_tokens_marked(model, tokenizer):
    messages = [{"role": "system", "content": "你是助手。"}, {"role": "user", "content": "今天天气好吗？"}]
    report = inspect_chat(model, tokenizer, messages, add_generation_prompt=True, top_k=3)
    tokens = report["tokens"]
    assert [t["id"] for t in tokens] == render_chat(tokenizer, messages, add_generation_prompt=True).ids
    assert report["mode"] == "chat" and report["text"] == messages
    content = [t for t in tokens if not t["template"]]
    for number, message in enumerate(messages):
        pieces = [t for t in content if t["message"] == number]
        assert "".join(t["text"] for t in pieces) == message["content"]
        assert all(message["content"][t["start"]:t["end"]] == t["text"] for t in pieces)
    specials = {tokenizer.bos_id, tokenizer.im_start_id, tokenizer.im_end_id}
    assert all(t["template"] for t in tokens if t["id"] in specials)
    assert tokens[-1]["role"] == "assistant" and tokens[-1]["template"]       # 末尾是“轮到助手了”
    assert tokens[-1]["message"] == len(messages)


@pytest.fixture(scope="module")
def checkpoint(model, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("inspect_ckpt")
    save_model_files(model, tokenizer, directory)
    return directory


def test_cli_json_is_one_documented_object(checkpoint):
    result = run_cli("inspect", "--ckpt", checkpoint, "--text", TEXT, "--top-k", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == SCHEMA
    assert set(report) == {"schema", "model", "mode", "text", "tokens", "predictions", "attention", "logit_lens"}
    assert all(len(row["top"]) == 3 for row in report["predictions"])


def test_cli_terminal_view_shows_pieces_predictions_attention_and_lens(checkpoint, tokenizer):
    result = run_cli("inspect", "--ckpt", checkpoint, "--text", TEXT, "--chat")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for heading in ("1. token", "2. 注意力", "3. logit lens", "模板 token", "键值组 1", "block 2"):
        assert heading in out
    assert "公园" in out or "公" in out


@pytest.mark.parametrize("args, message", [
    (["--text", "  "], "（--text）是空的"),
    (["--text", "好", "--top-k", "0"], "--top-k"),
    (["--text", "好", "--reply", "嗯"], "--chat"),
    (["--text", "天气很好" * 40], "max_seq_len=64"),
])
def test_cli_bad_input_is_one_clear_line(checkpoint, args, message):
    result = run_cli("inspect", "--ckpt", checkpoint, *args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
