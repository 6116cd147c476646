"""`towergpt tokenizer train --out`：不悄悄替换已有的分词器（要 --overwrite），并且一次写完整（原子地）。"""

import errno
import pathlib
import random

import pytest

from towergpt import cli
from towergpt.tokenizer import INFO_FILE, MODEL_FILE, Tokenizer

# 20 个常用字随机组成的行：字少，词表 320 就够，训练只要几十毫秒
CHARACTERS = "的一是在不了有和人这中大为上个国我以要他"


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    rng = random.Random(0)
    lines = ("".join(rng.choice(CHARACTERS) for _ in range(30)) for _ in range(2000))
    path = tmp_path_factory.mktemp("small_corpus") / "small.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def train(corpus, out, vocab_size, *extra):
    """跑真正的命令行：成功时返回 None；用户错误时 main 以状态码 2 退出（SystemExit）。"""
    cli.main(["tokenizer", "train", "--input", str(corpus), "--vocab-size", str(vocab_size),
              "--out", str(out), "--character-coverage", "1.0", *map(str, extra)])


def error_of(capsys, corpus, out, vocab_size, *extra) -> str:
    """跑命令，断言它以状态码 2 报了一行错，返回那一行。"""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train(corpus, out, vocab_size, *extra)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("错误 / error:")]
    assert len(errors) == 1, errors
    return errors[0]


def fail_on_info_file(monkeypatch):
    """写 tokenizer.json 时“磁盘满”：tokenizer.model 已经写出，第二个文件失败。"""
    original = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name == INFO_FILE:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)


def test_a_used_out_is_refused_without_overwrite(tmp_path, small_corpus, capsys):
    out = tmp_path / "tok"
    train(small_corpus, out, 320)
    before = Tokenizer.load(out).fingerprint

    message = error_of(capsys, small_corpus, out, 330)
    assert str(out) in message and "--overwrite" in message and "--out" in message
    assert Tokenizer.load(out).fingerprint == before          # 旧分词器原封不动
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]


def test_overwrite_replaces_the_tokenizer(tmp_path, small_corpus):
    out = tmp_path / "tok"
    train(small_corpus, out, 320)
    train(small_corpus, out, 330, "--overwrite")
    assert Tokenizer.load(out).vocab_size == 330
    assert sorted(p.name for p in out.iterdir()) == sorted([MODEL_FILE, INFO_FILE])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]   # 临时目录已经改名，没有留下


def test_an_empty_out_is_fine_without_overwrite(tmp_path, small_corpus):
    out = tmp_path / "tok"
    out.mkdir()
    train(small_corpus, out, 320)
    assert Tokenizer.load(out).vocab_size == 320


def test_overwrite_never_replaces_more_than_a_tokenizer(tmp_path, small_corpus, capsys):
    # 检查点目录里也有 tokenizer.model；“替换”它会把模型权重一起删掉
    checkpoint = tmp_path / "step_00000100"
    train(small_corpus, checkpoint, 320)
    (checkpoint / "model.safetensors").write_bytes(b"weights")

    message = error_of(capsys, small_corpus, checkpoint, 330, "--overwrite")
    assert "model.safetensors" in message and str(checkpoint) in message
    assert (checkpoint / "model.safetensors").read_bytes() == b"weights"
    assert Tokenizer.load(checkpoint).vocab_size == 320


def test_overwrite_refuses_a_directory_that_is_not_a_tokenizer(tmp_path, small_corpus, capsys):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "notes.txt").write_text("别删我", encoding="utf-8")
    message = error_of(capsys, small_corpus, out, 320, "--overwrite")
    assert MODEL_FILE in message
    assert (out / "notes.txt").read_text(encoding="utf-8") == "别删我"


def test_disk_full_on_a_fresh_out_leaves_nothing(tmp_path, small_corpus, capsys, monkeypatch):
    out = tmp_path / "tok"
    fail_on_info_file(monkeypatch)
    message = error_of(capsys, small_corpus, out, 320)
    assert str(out) in message and "No space left on device" in message
    assert not out.exists()                                        # 不留下只有 tokenizer.model 的半成品
    assert list(tmp_path.iterdir()) == []                          # 也不留下临时目录


def test_disk_full_while_overwriting_keeps_the_old_tokenizer(tmp_path, small_corpus, capsys, monkeypatch):
    out = tmp_path / "tok"
    train(small_corpus, out, 320)
    old_model = (out / MODEL_FILE).read_bytes()
    old_info = (out / INFO_FILE).read_bytes()

    fail_on_info_file(monkeypatch)
    message = error_of(capsys, small_corpus, out, 330, "--overwrite")
    assert str(out) in message and "No space left on device" in message
    assert (out / MODEL_FILE).read_bytes() == old_model and (out / INFO_FILE).read_bytes() == old_info
    assert Tokenizer.load(out).vocab_size == 320                   # 两个文件仍是一套，照常能载入
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]   # 临时目录已删掉
