"""测试共用的小语料、小分词器和准备好的数据目录（整个测试会话只做一次）。"""

import json
import os
import subprocess
import sys

import pytest

from towergpt.data.demo_corpus import news_documents


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
def news_data_dir(news_jsonl, news_tokenizer_dir, tmp_path_factory):
    from towergpt.data.prepare import prepare_pretrain

    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_pretrain([str(news_jsonl)], str(news_tokenizer_dir), str(out), workers=1, val_fraction=0.05)
    return out


def run_cli(*args, cwd=None, timeout=300):
    """在子进程里跑 `python -m towergpt ...`，返回 CompletedProcess。"""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "towergpt", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)
