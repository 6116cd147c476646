"""pretrain / sft / dpo 开训前核对：数据（meta.json 的 tokenizer_fingerprint、vocab_size）与分词器、模型配套。

测试者的场景：用分词器 A（词表 2048）准备好数据，又把一个小分词器 B（词表 320）训练进了同一个位置，
pretrain 在第一步就死于 IndexError（id 超出词向量表）。现在它在开训前用一行话说清楚。
"""

import json
import random
import shutil

import pytest
import torch
import yaml

from towergpt import cli
from towergpt.checkpoint import save_model_files
from towergpt.errors import TowerGPTError
from towergpt.model import GPT, GPTConfig
from towergpt.tokenizer import Tokenizer, train_tokenizer

CHARACTERS = "的一是在不了有和人这中大为上个国我以要他"
WORDS = ["经济", "人民", "发展", "世界", "和平", "改革", "文化", "科技", "教育", "新年"]
TRAIN = dict(max_steps=2, micro_batch_size=4, eval_every=100, save_every=100, log_every=1, device="cpu",
             dtype="float32", threads=1, seed=0)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("small_corpus") / "small.txt"
    path.write_text("\n".join("".join(rng.choice(CHARACTERS) for _ in range(30)) for _ in range(2000)),
                    encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def small_tokenizer_dir(small_corpus, tmp_path_factory):
    """分词器 B：词表只有 320，比准备数据用的 news 分词器（2048）小得多。"""
    out = tmp_path_factory.mktemp("small_tokenizer")
    train_tokenizer([str(small_corpus)], 320, out, character_coverage=1.0)
    return out


@pytest.fixture(scope="module")
def dialogues(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("dialogues") / "dialogues.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(40):
            word = rng.choice(WORDS) + rng.choice(WORDS)
            record = {"prompt": f"重复：{word}", "response": word, "chosen": word, "rejected": "不知道"}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def prepared(kind, dialogues, tokenizer_dir, out):
    from towergpt.data.prepare import prepare_dpo, prepare_sft

    prepare = prepare_sft if kind == "sft" else prepare_dpo
    prepare([str(dialogues)], str(tokenizer_dir), str(out), max_seq_len=64, workers=1, val_fraction=0.0,
            verbose=False)
    return out


def replace_tokenizer_copy(data_dir, tokenizer_dir):
    """把数据目录里的分词器副本换成另一个分词器（token 文件和 meta.json 不变）。"""
    shutil.rmtree(data_dir / "tokenizer")
    shutil.copytree(tokenizer_dir, data_dir / "tokenizer")


def checkpoint_with(tokenizer_dir, directory, vocab_size=None):
    tokenizer = Tokenizer.load(tokenizer_dir)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size or tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=2,
                          d_model=32, max_seq_len=64))
    save_model_files(model, tokenizer, directory)
    return directory


def write_config(path, data_dir, out_dir, init_from=None):
    config = {"model": dict(vocab_size=0, n_layer=1, n_head=2, n_kv_head=2, d_model=32, max_seq_len=32),
              "data": {"path": str(data_dir)}, "train": dict(TRAIN, out_dir=str(out_dir))}
    if init_from is not None:
        config["init_from"] = str(init_from)
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


def cli_error(capsys, *argv) -> str:
    """跑真正的命令行，断言它以状态码 2 报了一行错（没有 IndexError 的 traceback），返回那一行。"""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("错误 / error:")]
    assert len(errors) == 1, errors
    return errors[0]


def fingerprint(tokenizer_dir) -> str:
    return Tokenizer.load(tokenizer_dir).fingerprint


# ---- pretrain ---------------------------------------------------------------------------------

def test_pretrain_refuses_data_whose_tokenizer_copy_was_replaced(tmp_path, news_data_dir, news_tokenizer_dir,
                                                                 small_tokenizer_dir, capsys):
    data = tmp_path / "data"
    shutil.copytree(news_data_dir, data)
    replace_tokenizer_copy(data, small_tokenizer_dir)
    message = cli_error(capsys, "pretrain", "--config", write_config(tmp_path / "c.yaml", data, tmp_path / "run"))
    assert str(data / "meta.json") in message and "tokenizer_fingerprint" in message
    assert str(data / "tokenizer") in message
    assert fingerprint(news_tokenizer_dir)[:12] in message and fingerprint(small_tokenizer_dir)[:12] in message
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_testers_story_through_the_cli(tmp_path, news_data_dir, small_corpus, capsys):
    """tokenizer train 进数据目录的分词器副本：先被拒绝；--overwrite 之后 pretrain 说清楚为什么不能训练。"""
    data = tmp_path / "data"
    shutil.copytree(news_data_dir, data)
    retrain = ["tokenizer", "train", "--input", small_corpus, "--vocab-size", 320, "--out", data / "tokenizer",
               "--character-coverage", 1.0]
    assert "--overwrite" in cli_error(capsys, *retrain)
    cli.main([str(arg) for arg in retrain + ["--overwrite"]])
    message = cli_error(capsys, "pretrain", "--config", write_config(tmp_path / "c.yaml", data, tmp_path / "run"))
    assert "tokenizer_fingerprint" in message and str(data / "tokenizer") in message


# ---- sft / dpo --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_sft_and_dpo_compare_the_checkpoint_tokenizer_with_meta(kind, tmp_path, dialogues, news_tokenizer_dir,
                                                                small_tokenizer_dir, capsys):
    # 数据用 news 分词器准备；副本换成了 B，检查点也用 B：只比副本与检查点是看不出来的，比 meta.json 才行
    data = prepared(kind, dialogues, news_tokenizer_dir, tmp_path / "data")
    replace_tokenizer_copy(data, small_tokenizer_dir)
    start = checkpoint_with(small_tokenizer_dir, tmp_path / "start")
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "run", init_from=start)
    message = cli_error(capsys, kind, "--config", config)
    assert str(data / "meta.json") in message and str(start) in message
    assert fingerprint(news_tokenizer_dir)[:12] in message and fingerprint(small_tokenizer_dir)[:12] in message


def test_sft_refuses_a_checkpoint_whose_model_vocab_is_too_small(tmp_path, dialogues, news_tokenizer_dir, capsys):
    # 分词器对得上，但检查点里的模型只有 512 行词向量，数据里的 id 可到 2047
    data = prepared("sft", dialogues, news_tokenizer_dir, tmp_path / "data")
    start = checkpoint_with(news_tokenizer_dir, tmp_path / "start", vocab_size=512)
    config = write_config(tmp_path / "c.yaml", data, tmp_path / "run", init_from=start)
    message = cli_error(capsys, "sft", "--config", config)
    assert "vocab_size" in message and "512" in message and str(start) in message


# ---- 两个检查函数本身 ---------------------------------------------------------------------------

def test_check_functions_pass_when_everything_matches(tmp_path, news_tokenizer_dir):
    from towergpt.data.tokenizer_match import check_data_tokenizer, check_vocab_fits

    tokenizer = Tokenizer.load(news_tokenizer_dir)
    meta = {"kind": "pretrain", "tokenizer_fingerprint": tokenizer.fingerprint, "vocab_size": tokenizer.vocab_size}
    check_data_tokenizer(tmp_path, meta, tokenizer, news_tokenizer_dir)
    check_vocab_fits(tmp_path, meta, tokenizer.vocab_size, news_tokenizer_dir)
    with pytest.raises(TowerGPTError, match="无记录"):
        check_data_tokenizer(tmp_path, {"kind": "sft"}, tokenizer, news_tokenizer_dir)
    with pytest.raises(TowerGPTError, match="--format sft"):
        check_data_tokenizer(tmp_path, {"kind": "sft", "tokenizer_fingerprint": "0" * 64}, tokenizer,
                             news_tokenizer_dir)

