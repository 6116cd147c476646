"""`data prepare` 的快路径与慢路径写出同样的东西（issue 18 第 3 条）/ The fast path changes nothing but speed.

快路径有三处，每处都能单独关掉，关掉就是以前的做法：
    1. orjson 解析 JSONL（readers/fast_json.py；AVAILABLE = False 就只用 json）；
    2. SentencePiece 直接交回 numpy 数组（Tokenizer.encode_batch_arrays；_NUMPY_OUTPUT = False 就退回 int 列表）；
    3. 预训练用线程而不是进程并行（TextEncoder.RUNS_IN_THREADS = False 就用进程池）。
这里让“全开”和“全关”（再加 workers=1）各准备一遍同一份刁钻的语料：分片逐字节相同、meta.json 除时间外相同，
而且与“逐篇 Tokenizer.encode、加上 bos/eos”算出来的 id 一致。坏记录的报错和 --skip-bad 的清单也逐字相同。
"""

import json
import sys

import numpy as np
import pytest

from towergpt.data import encoders as encoders_module
from towergpt.data.prepare import load_meta, prepare_pretrain, validation_mask
from towergpt.data.readers import fast_json, iter_texts
from towergpt.errors import TowerGPTError
from towergpt.tokenizer import SPACE_MARKER
from towergpt.tokenizer import core as tokenizer_core

# 一份什么都有一点的语料：转义、成对的代理项（emoji）、“▁”、空白文档、CRLF、BOM、别的字段里的大整数和嵌套……
TEXTS = [
    "第一篇：普通的中文，带标点。", "English words 和 数字 2026", "表情😀和生僻字𠀀", "换行\n保留\n\n两个",
    f"真正的{SPACE_MARKER}字符和  两个空格", "\t制表符\u3000全角空格", "转义的引号\"和反斜杠\\", "", "   ",
    "零宽\u200b字符与 NUL\x00", "很长的一篇：" + "我们今天去公园散步，天气很好。" * 300,
]


def write_tricky_jsonl(path):
    lines = []
    for index, text in enumerate(TEXTS * 6):
        record = {"id": index, "text": text}
        if index % 5 == 1:
            record["big"] = 10 ** 30                    # 超过 64 位：orjson 给 float，json 给 int，只有数字本身不同
        if index % 7 == 2:
            record["meta"] = {"tags": [1, [2, [3]]]}    # 嵌套：走数括号的那条检查
        ensure_ascii = index % 2 == 0                   # 一半写成 \uXXXX 转义（含 emoji 的代理项对）
        lines.append(json.dumps(record, ensure_ascii=ensure_ascii))
    lines.insert(3, "")                                  # 空行
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode("utf-8") + b"\r\n")   # BOM + Windows 换行
    return path


def all_paths_off(monkeypatch):
    monkeypatch.setattr(fast_json, "AVAILABLE", False)
    monkeypatch.setattr(tokenizer_core, "_NUMPY_OUTPUT", False)
    monkeypatch.setattr(encoders_module.TextEncoder, "RUNS_IN_THREADS", False)


def written_files(out):
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.suffix == ".bin"}


def meta_without_time(out):
    meta = load_meta(out)
    meta.pop("created")
    return meta


def test_fast_and_slow_paths_write_identical_data(tmp_path, review_tokenizer_dir, review_tokenizer, monkeypatch):
    corpus = write_tricky_jsonl(tmp_path / "tricky.jsonl")
    monkeypatch.setattr("towergpt.data.pipeline.BATCH_DOCUMENTS", 7)   # 多分几批，让两个线程 / 进程真的并行
    fast = tmp_path / "fast"
    prepare_pretrain([corpus], review_tokenizer_dir, fast, workers=2, val_fraction=0.2, verbose=False)

    with monkeypatch.context() as patch:
        all_paths_off(patch)
        for workers in (1, 2):
            slow = tmp_path / f"slow_w{workers}"
            prepare_pretrain([corpus], review_tokenizer_dir, slow, workers=workers, val_fraction=0.2, verbose=False)
            assert written_files(slow) == written_files(fast)
            assert meta_without_time(slow) == meta_without_time(fast)

    # 与逐篇 encode 的结果对照：非空文档按顺序各占一个序号，哈希决定去 train 还是 val
    kept = [text for text in TEXTS * 6 if text and not text.isspace()]
    to_val = validation_mask(0, len(kept), 0, 0.2)
    assert to_val.any() and not to_val.all()
    meta = load_meta(fast)
    for split, wanted in (("train", False), ("val", True)):
        expected = [[review_tokenizer.bos_id, *review_tokenizer.encode(text), review_tokenizer.eos_id]
                    for text, side in zip(kept, to_val) if side == wanted]
        tokens = np.concatenate([np.fromfile(fast / shard["file"], dtype=meta["dtype"])
                                 for shard in meta[split]["shards"]])
        assert tokens.tolist() == [token for document in expected for token in document]
    assert meta["empty_documents"] == sum(1 for text in TEXTS * 6 if not text or text.isspace())


BAD_LINES = [
    '{"text": "孤立\\ud800代理"}',            # 孤立代理项：json 收下、TextField 报出字段；orjson 拒绝
    '{"text": "倒过来\\udc00\\ud800"}',
    '{"text": "ok", "other": "\\udfff"}',      # 别的字段里的孤立代理项：以前就不管，现在也不管
    '{"text": NaN}',                            # json 收下（值是 number），orjson 拒绝
    '{"text": "a", "n": 1e400}',                # json 给 inf，orjson 拒绝
    '{"text": "a", "n": ' + "9" * 5000 + "}",  # 超过 4300 位
    '{"text": 12345678901234567890123}',        # 超过 64 位、值不是字符串
    '{"text": "a"} {"text": "b"}',              # 多余的内容
    '{"text": "控制字符\x01"}',
    '["不是对象"]', "null", '{"title": "缺字段", "empty": null}',
    '{"text": "a", "deep": ' + "[" * 1020 + "]" * 1020 + "}",  # orjson 收（≤ 1024 层），json 拒（递归上限 1000）
    '{"text": "a", "deep": ' + "[" * 50 + "]" * 50 + "}",
    "\u3000", "\x0c", '\x0c{"text": "换页符开头"}', '{"text": "行尾的 \\\\u 只是文字"}',
]


def read_all(path):
    bad = []
    items = list(iter_texts(path, skip_bad=True, on_bad=lambda where, why: bad.append((where, why))))
    return items, bad


def test_bad_records_are_reported_the_same_with_and_without_orjson(tmp_path, monkeypatch):
    # 标准库 json 的嵌套上限就是 Python 的递归上限。torch.compile（inductor）会把它调到 2000 且不调回，
    # 所以在同一个 pytest 进程里跑过编译的测试之后，1020 层就不再“太深”了：这里固定成默认的 1000。
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    try:
        check_bad_records(tmp_path, monkeypatch)
    finally:
        sys.setrecursionlimit(limit)


def check_bad_records(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    not_utf8 = b'{"text": "\xff\xfe \xe4\xbd"}\n' + b'{"text": "\xed\xa0\x80"}\n'   # 坏字节；UTF-8 编出来的代理项
    path.write_bytes("\n".join(BAD_LINES).encode("utf-8") + b"\n" + not_utf8)
    fast = read_all(path)
    with monkeypatch.context() as patch:
        patch.setattr(fast_json, "AVAILABLE", False)
        slow = read_all(path)
    assert fast == slow
    items, bad = fast
    assert [number for number, _ in items] == [3, 5, 14, 18]   # 只有这四行是好记录（1e400 在 json 里是 inf）
    assert bad[0][0] == f"{path}:1 字段/field 'text'" and "代理项" in bad[0][1]
    assert any(where == f"{path}:13" and "嵌套太深" in why for where, why in bad)
    assert any(where == f"{path}:19" and "UTF-8" in why for where, why in bad)


def test_orjson_rejects_what_the_fast_path_relies_on_it_to_reject():
    # 快路径不再查孤立代理项，靠的是 orjson 拒绝它们（见 fast_json.py）：orjson 升级后改了行为，这里会先失败
    orjson = pytest.importorskip("orjson")
    for line in [b'{"t": "\\ud800"}', b'{"t": "\\udc00"}', b'{"t": "\\ud800\\u0041"}', b'{"t": "\\udc00\\ud800"}',
                 b'{"\\ud800": 1}', b'{"t": "\xed\xa0\x80"}', b'{"t": "\xff"}']:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(line)
    assert orjson.loads(b'{"t": "\\ud83d\\ude00"}') == {"t": "😀"}


def test_encode_batch_arrays_matches_encode(review_tokenizer, monkeypatch):
    texts = TEXTS + [SPACE_MARKER, SPACE_MARKER * 3 + "开头和结尾" + SPACE_MARKER]
    expected = [review_tokenizer.encode(text) for text in texts]
    assert [ids.tolist() for ids in review_tokenizer.encode_batch_arrays(texts)] == expected
    monkeypatch.setattr(tokenizer_core, "_NUMPY_OUTPUT", False)   # 旧版 sentencepiece：退回 int 列表
    arrays = review_tokenizer.encode_batch_arrays(iter(texts))
    assert [ids.dtype for ids in arrays] == [np.int32] * len(texts)
    assert [ids.tolist() for ids in arrays] == expected


def test_encode_batch_arrays_names_the_bad_character(review_tokenizer):
    with pytest.raises(TowerGPTError, match="第 3 个字符.*代理项"):
        review_tokenizer.encode_batch_arrays(["好", "孤立\ud800代理"])


def test_error_in_a_tokenizing_thread_leaves_nothing(tmp_path, review_tokenizer_dir, monkeypatch):
    corpus = write_tricky_jsonl(tmp_path / "tricky.jsonl")
    monkeypatch.setattr("towergpt.data.pipeline.BATCH_DOCUMENTS", 3)

    def broken(self, texts):
        raise TowerGPTError("线程里出错了 / failed in a thread")

    monkeypatch.setattr(encoders_module.TextEncoder, "__call__", broken)
    out = tmp_path / "out"
    with pytest.raises(TowerGPTError, match="线程里出错了"):
        prepare_pretrain([corpus], review_tokenizer_dir, out, workers=2, verbose=False)
    assert not out.exists() and list(tmp_path.iterdir()) == [corpus]
