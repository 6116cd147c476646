"""`towergpt eval`：损失与手算一致、bpc 的定义、原始文件与数据目录一致、滑动窗口、指纹核对、情感任务。"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import run_cli
from towergpt.checkpoint import save_model_files
from towergpt.demo.corpus import news_documents
from towergpt.data.prepare import prepare_pretrain, prepare_sft
from towergpt.errors import TowerGPTError
from towergpt.evaluate import evaluate_language_model, evaluate_sentiment, iter_windows
from towergpt.model import GPT, GPTConfig
from towergpt.tokenizer import Tokenizer

SEQ_LEN = 64


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                       max_seq_len=SEQ_LEN)
    return GPT(config).eval()


@pytest.fixture(scope="module")
def chat_model(tokenizer):
    """情感任务的提示词有几十个 token：用一个上下文更长（但更小）的模型。"""
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=1, d_model=32,
                         max_seq_len=512)).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    save_model_files(model, tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def texts():
    """8 篇短新闻（每篇截到 120 字），外加一篇空白文档（应被跳过，和 prepare 一样）。"""
    documents = []
    for document in news_documents():
        documents.append(document[:120])
        if len(documents) == 8:
            break
    return documents


@pytest.fixture(scope="module")
def texts_jsonl(texts, tmp_path_factory):
    path = tmp_path_factory.mktemp("texts") / "docs.jsonl"
    rows = texts[:4] + ["   "] + texts[4:]
    path.write_text("".join(json.dumps({"text": text}, ensure_ascii=False) + "\n" for text in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared_dir(texts_jsonl, news_tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_pretrain([str(texts_jsonl)], str(news_tokenizer_dir), str(out), workers=1, val_fraction=0.0, verbose=False)
    return out


def hand_computed_nats(model, stream: list[int], seq_len: int) -> tuple[float, int]:
    """不分批、不补齐：逐个窗口前向，用 log_softmax 取出正确 token 的对数概率。"""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, seq_len):
            window = torch.tensor(stream[start:start + seq_len + 1])
            log_probs = F.log_softmax(model(window[None, :-1]).float(), dim=-1)[0]   # (T, V)
            total -= log_probs.gather(1, window[1:, None]).sum().item()
            count += len(window) - 1
    return total, count


def test_loss_and_bpc_match_a_hand_computation_on_raw_text(model, tokenizer, texts, texts_jsonl):
    result = evaluate_language_model(model, tokenizer, texts_jsonl, batch_size=3)
    stream = [token for text in texts for token in [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]]
    nats, count = hand_computed_nats(model, stream, SEQ_LEN)
    assert len(stream) % SEQ_LEN != 1, "the last window should be a short one (exercises padding)"
    assert result["tokens"] == count == len(stream) - 1
    assert result["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-4)
    characters = sum(len(text) for text in texts)
    assert result["characters"] == characters and result["characters_exact"]
    assert result["bpc"] == pytest.approx(nats / math.log(2) / characters, rel=1e-5)
    assert result["documents"] == 8 and result["empty_documents"] == 1


def test_prepared_dir_and_raw_file_agree(model, tokenizer, texts_jsonl, prepared_dir):
    raw = evaluate_language_model(model, tokenizer, texts_jsonl)
    prepared = evaluate_language_model(model, tokenizer, prepared_dir, split="train")
    assert prepared["format"] == "pretrain" and prepared["characters_exact"]
    for key in ("tokens", "characters", "loss", "bpc"):
        assert prepared[key] == pytest.approx(raw[key], rel=1e-6), key


def test_max_tokens_limits_the_evaluation(model, tokenizer, texts_jsonl, prepared_dir):
    raw = evaluate_language_model(model, tokenizer, texts_jsonl, max_tokens=50)
    prepared = evaluate_language_model(model, tokenizer, prepared_dir, split="train", max_tokens=50)
    assert raw["tokens"] == prepared["tokens"] == 50
    assert raw["loss"] == pytest.approx(prepared["loss"], rel=1e-6)
    assert raw["max_tokens_reached"] and prepared["max_tokens_reached"]
    # 数据目录只知道平均“每 token 字符数”：字符数是估算的；原始文本则当场数出来
    assert not prepared["characters_exact"] and prepared["characters"] > 0
    assert 0 < raw["characters"] < 120 * 2


def test_sliding_windows_score_every_target_exactly_once():
    stream = np.arange(23)
    seen = []
    for window, first_scored in iter_windows([stream[:5], stream[5:17], stream[17:]], seq_len=6, stride=4):
        assert 2 <= len(window) <= 7
        assert list(window) == list(range(window[0], window[0] + len(window)))   # 流里连续的一段
        seen.extend(window[1 + first_scored:].tolist())
    assert seen == list(range(1, 23))


def hand_computed_sliding_nats(model, stream: list[int], seq_len: int, stride: int) -> tuple[float, int]:
    """滑动窗口的手算：目标 p（流里第 1..n-1 个）只计一次，在起点 s = k·stride 最小、又能看见它的窗口里
    （p <= s + seq_len），上文是 stream[s:p]。模型是因果的：一次前向 stream[s:s + seq_len] 就给出这些上文的预测。"""
    total, window_start, log_probs = 0.0, None, None
    with torch.no_grad():
        for p in range(1, len(stream)):
            start = max(0, math.ceil((p - seq_len) / stride)) * stride
            if start != window_start:
                window = torch.tensor(stream[start:start + seq_len])
                log_probs = F.log_softmax(model(window[None]).float(), dim=-1)[0]   # (T, V)
                window_start = start
            total -= log_probs[p - 1 - start, stream[p]].item()
    return total, len(stream) - 1


def test_sliding_window_evaluation_counts_each_token_once(model, tokenizer, texts, texts_jsonl):
    packed = evaluate_language_model(model, tokenizer, texts_jsonl)
    stride = SEQ_LEN // 4
    sliding = evaluate_language_model(model, tokenizer, texts_jsonl, stride=stride, batch_size=3)
    stream = [token for text in texts for token in [tokenizer.bos_id, *tokenizer.encode(text), tokenizer.eos_id]]
    nats, count = hand_computed_sliding_nats(model, stream, SEQ_LEN, stride)
    assert sliding["tokens"] == packed["tokens"] == count and sliding["stride"] == stride
    assert sliding["loss"] == pytest.approx(nats / count, rel=1e-5)   # 每个目标恰好一次，各自带着最长的上文
    assert sliding["loss"] != packed["loss"]


def test_fingerprint_mismatch_is_refused(model, tokenizer, prepared_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(prepared_dir, other)
    meta = json.loads((other / "meta.json").read_text(encoding="utf-8"))
    meta["tokenizer_fingerprint"] = "0" * 64
    (other / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(TowerGPTError, match="另一个分词器"):
        evaluate_language_model(model, tokenizer, other, split="train")


def test_sft_dir_counts_only_assistant_tokens(model, tokenizer, news_tokenizer_dir, tmp_path):
    dialogues = tmp_path / "chat.jsonl"
    rows = [{"prompt": f"问题{i}：今天天气怎么样？", "response": f"回答{i}：晴天，适合出门。"} for i in range(6)]
    dialogues.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "sft"
    meta = prepare_sft([str(dialogues)], str(news_tokenizer_dir), str(out), max_seq_len=SEQ_LEN, workers=1,
                       val_fraction=0.0, verbose=False)
    result = evaluate_language_model(model, tokenizer, out, split="train")
    assert result["format"] == "sft" and result["conversations"] == 6
    assert result["tokens"] == meta["train"]["assistant_tokens"]
    assert result["characters"] == meta["train"]["assistant_characters"]


def test_cli_prints_and_writes_json_and_reports_errors(checkpoint, texts_jsonl, tmp_path):
    out = tmp_path / "result.json"
    done = run_cli("eval", "--ckpt", checkpoint, "--data", texts_jsonl, "--out", out, "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    printed = json.loads(done.stdout)
    assert printed == json.loads(out.read_text(encoding="utf-8"))
    assert {"loss", "perplexity", "bpc", "tokens", "characters"} <= set(printed)
    bad = run_cli("eval", "--ckpt", checkpoint, "--data", tmp_path / "missing.jsonl", "--device", "cpu")
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr and "Traceback" not in bad.stderr


def test_sentiment_task_reports_accuracy_and_baseline(chat_model, tokenizer, tmp_path):
    reviews = tmp_path / "heldout.jsonl"
    labelled = [("质量很好，非常满意", "正面"), ("物流很快", "正面"), ("不错，推荐", "正面"),
                ("太差了，退货", "负面"), ("不好用", "负面"), ("很喜欢", "正面")]
    reviews.write_text("".join(json.dumps({"review": r, "label": l}, ensure_ascii=False) + "\n" for r, l in labelled),
                       encoding="utf-8")
    result = evaluate_sentiment(chat_model, tokenizer, reviews)
    assert result["task"] == "sentiment" and result["heldout_reviews"] == 6
    assert result["majority_baseline"] == pytest.approx(4 / 6, abs=1e-4)
    assert 0.0 <= result["sentiment_accuracy"] <= 1.0
    assert 0 <= result["unparseable_answers"] <= 6
    assert len(result["examples"]) == 3 and {"user", "assistant", "label"} <= set(result["examples"][0])


def test_sentiment_task_defaults_to_the_built_in_heldout_reviews(chat_model, tokenizer):
    result = evaluate_sentiment(chat_model, tokenizer)
    assert result["heldout_reviews"] == 1000 and result["majority_baseline"] == 0.5


def test_bad_reviews_file_names_the_line_and_field(model, tokenizer, tmp_path):
    reviews = tmp_path / "bad.jsonl"
    reviews.write_text('{"review": "好", "label": "正面"}\n{"review": "差"}\n', encoding="utf-8")
    with pytest.raises(TowerGPTError, match=r"bad\.jsonl:2 字段/field 'label'"):
        evaluate_sentiment(model, tokenizer, reviews)
