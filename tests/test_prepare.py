"""`towergpt data prepare`：四种输入格式、meta 数字、进程数无关、坏输入、--skip-bad、空文档、dtype。"""

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SENTIMENT, run_cli
from towergpt.data import pipeline as pipeline_module
from towergpt.data import prepare as prepare_module
from towergpt.data.prepare import load_meta, prepare, prepare_pretrain, token_dtype, validation_mask
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.errors import TowerGPTError
from towergpt.tokenizer import Tokenizer



@pytest.fixture(scope="module")
def documents():
    """300 条负面评论（与训练分词器的语料不同），外加几篇有换行、空格、英文、emoji 的文档。"""
    lines = [line for line in (SENTIMENT / "neg.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:300] + ["第一行\n第二行 有空格  ", "English words and 数字 2026", "表情😀和生僻字𠀀"]


def write_corpus(path: Path, texts, kind: str) -> Path:
    """把文档写成指定格式；txt 用空行分隔文档。"""
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    elif kind == "json":
        path.write_text(json.dumps([{"id": i, "text": t} for i, t in enumerate(texts)], ensure_ascii=False),
                        encoding="utf-8")
    elif kind == "txt":
        path.write_text("\n\n".join(texts) + "\n", encoding="utf-8")
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": texts}), path)
    return path


def split_tokens(out: Path, split: str) -> np.ndarray:
    """按 meta 里的顺序把一个划分的全部分片拼起来。"""
    meta = load_meta(out)
    parts = [np.fromfile(out / shard["file"], dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
             for shard in meta[split]["shards"]]
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


def decode_documents(tokens: np.ndarray, tokenizer) -> list[str]:
    """按 bos ... eos 把 token 流切回一篇篇文档并解码。"""
    tokens = tokens.tolist()
    documents, start = [], None
    for position, token in enumerate(tokens):
        if token == tokenizer.bos_id:
            assert start is None, "bos 出现在文档中间"
            start = position + 1
        elif token == tokenizer.eos_id:
            documents.append(tokenizer.decode(tokens[start:position]))
            start = None
    assert start is None, "最后一篇文档没有 eos"
    return documents


def expected_split(count: int, val_fraction: float, seed: int = 0) -> np.ndarray:
    """与 prepare 相同的规则：哈希决定去向；验证集为空时最后一篇进验证集。"""
    mask = validation_mask(0, count, seed, val_fraction)
    if count >= 2 and val_fraction > 0 and not mask.any():
        mask[-1] = True
    return mask


# ---------------------------------------------------------------------------
# 正常路径
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["jsonl", "json", "txt", "parquet"])
def test_each_format_round_trips_and_meta_counts(kind, tmp_path, review_tokenizer_dir, review_tokenizer, documents):
    corpus = write_corpus(tmp_path / f"corpus.{kind}", documents, kind)
    out = tmp_path / "data"
    summary = prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, val_fraction=0.1, verbose=False)
    meta = load_meta(out, kind="pretrain")

    is_val = expected_split(len(documents), 0.1)
    train_docs = [d for d, v in zip(documents, is_val) if not v]
    val_docs = [d for d, v in zip(documents, is_val) if v]
    for split, docs in (("train", train_docs), ("val", val_docs)):
        stats = meta[split]
        assert stats["documents"] == len(docs)
        assert stats["tokens"] == sum(len(review_tokenizer.encode(d)) + 2 for d in docs)  # + bos + eos
        assert stats["characters"] == sum(len(d) for d in docs)
        assert sum(shard["tokens"] for shard in stats["shards"]) == stats["tokens"]
        for shard in stats["shards"]:
            assert (out / shard["file"]).stat().st_size == shard["tokens"] * 2
        assert decode_documents(split_tokens(out, split), review_tokenizer) == docs

    assert 0 < meta["val"]["documents"] < len(documents)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == review_tokenizer.vocab_size
    assert (meta["bos_id"], meta["eos_id"], meta["pad_id"]) == (review_tokenizer.bos_id, review_tokenizer.eos_id,
                                                               review_tokenizer.pad_id)
    assert meta["tokenizer_fingerprint"] == review_tokenizer.fingerprint
    assert Tokenizer.load(out / "tokenizer").fingerprint == review_tokenizer.fingerprint  # 数据目录自带分词器
    assert meta["inputs"] == [{"path": str(corpus.resolve()), "bytes": corpus.stat().st_size}]
    assert meta["empty_documents"] == 0 and meta["skipped_records"] == 0
    assert not (out / "skipped.txt").exists()
    assert summary["train"] == meta["train"] and summary["mb_per_s"] > 0
    assert not list(tmp_path.glob(".data.*"))   # 临时目录（见 output_dir.make_staging_dir）也删掉了


def test_output_does_not_depend_on_worker_count(tmp_path, review_tokenizer_dir, documents, monkeypatch):
    monkeypatch.setattr(pipeline_module, "BATCH_DOCUMENTS", 16)  # 多分几批，让进程池真的并行、乱序完成
    corpus = write_corpus(tmp_path / "corpus.jsonl", documents * 3, "jsonl")
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"data_w{workers}"
        prepare_pretrain([corpus], review_tokenizer_dir, out, workers=workers, val_fraction=0.1,
                         shard_tokens=5000, verbose=False)
        outputs.append(out)
    files = sorted(path.name for path in outputs[0].glob("*.bin"))
    assert files == sorted(path.name for path in outputs[1].glob("*.bin"))
    assert len([name for name in files if name.startswith("train_")]) > 3  # 真的切成了多个分片
    for name in files:
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name
    meta = load_meta(outputs[0])
    shard_sizes = [shard["tokens"] for shard in meta["train"]["shards"]]
    assert all(size == 5000 for size in shard_sizes[:-1]) and 0 < shard_sizes[-1] <= 5000
    assert [shard["file"] for shard in meta["train"]["shards"]] == [f"train_{i:06d}.bin" for i in range(len(shard_sizes))]


def test_multiple_inputs_keep_their_order(tmp_path, review_tokenizer_dir, review_tokenizer, documents):
    first = write_corpus(tmp_path / "a.txt", documents[:50], "txt")
    second = write_corpus(tmp_path / "b.jsonl", documents[50:80], "jsonl")
    out = tmp_path / "data"
    prepare_pretrain([first, second], review_tokenizer_dir, out, workers=2, val_fraction=0.0, verbose=False)
    meta = load_meta(out)
    assert meta["val"] == {"documents": 0, "tokens": 0, "characters": 0, "shards": []}  # 0 = 不要验证集
    assert decode_documents(split_tokens(out, "train"), review_tokenizer) == documents[:80]
    assert [item["path"] for item in meta["inputs"]] == [str(first.resolve()), str(second.resolve())]


def test_small_corpus_still_gets_one_validation_document(tmp_path, review_tokenizer_dir, review_tokenizer):
    corpus = write_corpus(tmp_path / "two.jsonl", ["第一篇文档", "第二篇文档"], "jsonl")
    out = tmp_path / "data"
    prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, val_fraction=0.01, verbose=False)
    meta = load_meta(out)
    assert meta["train"]["documents"] == 1 and meta["val"]["documents"] == 1
    assert decode_documents(split_tokens(out, "val"), review_tokenizer) == ["第二篇文档"]


def test_validation_mask_is_seeded_and_near_the_fraction():
    mask = validation_mask(0, 100_000, seed=0, val_fraction=0.1)
    assert abs(mask.mean() - 0.1) < 0.005
    assert np.array_equal(mask[500:600], validation_mask(500, 100, seed=0, val_fraction=0.1))  # 与批的切法无关
    assert not np.array_equal(mask, validation_mask(0, 100_000, seed=1, val_fraction=0.1))


def test_empty_documents_are_counted_not_written(tmp_path, review_tokenizer_dir, review_tokenizer):
    texts = ["有内容的一篇", "", "   ", "\n\t", "\u3000", "另一篇"]
    corpus = write_corpus(tmp_path / "c.jsonl", texts, "jsonl")
    out = tmp_path / "data"
    prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, val_fraction=0.0, verbose=False)
    meta = load_meta(out)
    assert meta["empty_documents"] == 4
    assert decode_documents(split_tokens(out, "train"), review_tokenizer) == ["有内容的一篇", "另一篇"]


def test_token_dtype_choice():
    assert token_dtype(3000) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")   # id 0..65535 正好放得进 uint16
    assert token_dtype(65537) == np.dtype("<u4")
    assert token_dtype(200_000).itemsize == 4


def test_uint32_shards_are_written_and_read(tmp_path, review_tokenizer_dir, review_tokenizer, documents, monkeypatch):
    # 小分词器的词表只有 3000；假装它超过 65536，走 uint32 这条路
    monkeypatch.setattr(prepare_module, "token_dtype", lambda vocab_size: np.dtype("<u4"))
    corpus = write_corpus(tmp_path / "c.jsonl", documents[:40], "jsonl")
    out = tmp_path / "data"
    prepare_pretrain([corpus], review_tokenizer_dir, out, workers=2, val_fraction=0.0, verbose=False)
    meta = load_meta(out)
    assert meta["dtype"] == "uint32"
    assert (out / "train_000000.bin").stat().st_size == meta["train"]["tokens"] * 4
    assert decode_documents(split_tokens(out, "train"), review_tokenizer) == documents[:40]
    data = PackedPretrainData(out, "train", seq_len=16)
    assert data.window(0).tolist() == split_tokens(out, "train")[:17].tolist()


# ---------------------------------------------------------------------------
# 坏输入：报错指明 文件:行，且不留下输出目录
# ---------------------------------------------------------------------------

GOOD = json.dumps({"text": "好的一行"}, ensure_ascii=False).encode("utf-8") + b"\n"
BAD_CASES = {
    "invalid_json": (b'{"text": "\xe5\x9d\x8f", \n', "JSON"),
    "missing_field": (b'{"content": "x"}\n', "'text'"),
    "not_a_string": (b'{"text": 42}\n', "number"),
    "not_utf8": ('{"text": "坏"}\n'.encode("gbk"), "UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
@pytest.mark.parametrize("workers", [1, 2])
def test_bad_record_names_file_and_line_and_leaves_nothing(case, workers, tmp_path, review_tokenizer_dir):
    bad_line, reason = BAD_CASES[case]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(GOOD * 3 + bad_line + GOOD)
    out = tmp_path / "data"
    with pytest.raises(TowerGPTError) as error:
        prepare_pretrain([corpus], review_tokenizer_dir, out, workers=workers, verbose=False)
    message = str(error.value)
    assert f"{corpus}:4" in message and reason in message
    assert not out.exists()
    assert not list(tmp_path.glob(".data.*"))   # 临时目录（见 output_dir.make_staging_dir）也删掉了


def test_skip_bad_lists_skipped_records(tmp_path, review_tokenizer_dir, review_tokenizer):
    corpus = tmp_path / "corpus.jsonl"
    lines = [GOOD, BAD_CASES["invalid_json"][0], GOOD, BAD_CASES["missing_field"][0], BAD_CASES["not_utf8"][0], GOOD]
    corpus.write_bytes(b"".join(lines))
    out = tmp_path / "data"
    summary = prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, skip_bad=True, val_fraction=0.0,
                               verbose=False)
    assert summary["skipped_records"] == 3 and load_meta(out)["skipped_records"] == 3
    skipped = (out / "skipped.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split("\t")[0].split(" ")[0] for line in skipped] == [f"{corpus}:{n}" for n in (2, 4, 5)]
    assert all("\t" in line and line.split("\t")[1] for line in skipped)
    assert decode_documents(split_tokens(out, "train"), review_tokenizer) == ["好的一行"] * 3


def test_existing_output_directory(tmp_path, review_tokenizer_dir, documents):
    corpus = write_corpus(tmp_path / "c.jsonl", documents[:20], "jsonl")
    out = tmp_path / "data"
    prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, verbose=False)
    with pytest.raises(TowerGPTError, match="--overwrite"):
        prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, verbose=False)
    prepare_pretrain([corpus], review_tokenizer_dir, out, workers=1, overwrite=True, seed=5, verbose=False)
    assert load_meta(out)["seed"] == 5

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("别删我", encoding="utf-8")
    with pytest.raises(TowerGPTError, match="meta.json"):  # 不是 prepare 写出的目录：拒绝删除
        prepare_pretrain([corpus], review_tokenizer_dir, precious, workers=1, overwrite=True, verbose=False)
    assert (precious / "notes.txt").exists()

    inside = write_corpus(out / "inside.jsonl", documents[:5], "jsonl")
    with pytest.raises(TowerGPTError, match="--out"):  # 语料在输出目录里：覆盖会删掉它
        prepare_pretrain([inside], review_tokenizer_dir, out, workers=1, overwrite=True, verbose=False)
    assert inside.exists()


def test_argument_errors(tmp_path, review_tokenizer_dir, documents):
    corpus = write_corpus(tmp_path / "c.jsonl", documents[:5], "jsonl")
    with pytest.raises(TowerGPTError, match="preference record lacks prompt, chosen, rejected"):
        prepare("dpo", inputs=[corpus], tokenizer_dir=review_tokenizer_dir, out_dir=tmp_path / "s")
    with pytest.raises(TowerGPTError, match="val-fraction"):
        prepare_pretrain([corpus], review_tokenizer_dir, tmp_path / "v", val_fraction=1.0, verbose=False)
    with pytest.raises(TowerGPTError, match="file not found"):
        prepare_pretrain([tmp_path / "missing.jsonl"], review_tokenizer_dir, tmp_path / "m", verbose=False)
    with pytest.raises(TowerGPTError, match="tokenizer not found"):
        prepare_pretrain([corpus], tmp_path / "no_tokenizer", tmp_path / "t", verbose=False)
    with pytest.raises(TowerGPTError, match="no non-empty documents"):
        empty = write_corpus(tmp_path / "empty.jsonl", ["", " "], "jsonl")
        prepare_pretrain([empty], review_tokenizer_dir, tmp_path / "e", verbose=False)
    assert not [p.name for p in tmp_path.iterdir() if p.name not in {"c.jsonl", "empty.jsonl"}]


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------

def test_cli_prepare_success_and_one_line_error(tmp_path, review_tokenizer_dir, documents):
    corpus = write_corpus(tmp_path / "c.jsonl", documents[:50], "jsonl")
    out = tmp_path / "data"
    result = run_cli("data", "prepare", "--input", corpus, "--tokenizer", review_tokenizer_dir, "--out", out,
                     "--workers", "2", "--val-fraction", "0.1")
    assert result.returncode == 0, result.stderr
    assert "documents" in result.stdout and load_meta(out)["train"]["documents"] > 0

    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(GOOD + b"{broken\n")
    result = run_cli("data", "prepare", "--input", bad, "--tokenizer", review_tokenizer_dir,
                     "--out", tmp_path / "bad_out")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("错误") and f"{bad}:2" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "bad_out").exists()
