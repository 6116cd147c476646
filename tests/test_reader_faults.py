"""读取器遇到“刁钻”输入时的测试（issue 12 第 3、6、8 条）。

- .json 数组里不成对的代理项转义（"\\ud800"）：报出记录号，--skip-bad 时只跳过那一条；
- .txt 里没有换行的超长行：边读边切，切开的几段拼回去与原文一字不差，内存有上限；
- 极端的 JSON 值（5000 位的整数、十万层嵌套）：.jsonl 报出 文件:行，.json 报出记录号，
  --skip-bad 时只跳过那一条，而不是 traceback。
每一条都经过真正的命令行（`towergpt data prepare`、`towergpt tokenizer train`）验证一次。
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from conftest import reader_error as error_of
from towergpt.data.readers import json_array as json_array_reader
from towergpt.data.readers import txt as txt_reader
from towergpt.data.readers import iter_records, iter_texts


def read_skipping(path, **kwargs) -> tuple[list, list[str]]:
    """skip_bad=True 读完，返回 (好记录, 坏记录的位置)。"""
    reports: list[str] = []
    items = list(iter_texts(path, skip_bad=True, on_bad=lambda where, why: reports.append(where), **kwargs))
    return items, reports


def write_json_array(path: Path, elements: list[str]) -> Path:
    """把每个元素的 JSON 原文（可以是坏的）拼成一个 JSON 数组文件。"""
    path.write_text("[\n" + ",\n".join(elements) + "\n]\n", encoding="utf-8")
    return path


def cli_error_line(result) -> str:
    """命令行失败时：退出码 2，stderr 只有一行以“错误”开头的消息，没有 traceback。"""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("错误")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def prepared_texts(out: Path) -> list[str]:
    """把 prepare 写出的 token 解码回一篇篇文档（bos ... eos 之间）。"""
    import numpy as np

    from towergpt.data.data_format import load_meta
    from towergpt.tokenizer import Tokenizer

    meta = load_meta(out)
    tokenizer = Tokenizer.load(out / "tokenizer")
    tokens = np.concatenate([np.fromfile(out / shard["file"], dtype=np.dtype(meta["dtype"]).newbyteorder("<"))
                             for split in ("train", "val") for shard in meta[split]["shards"]]).tolist()
    texts, start = [], 0
    for position, token in enumerate(tokens):
        if token == tokenizer.bos_id:
            start = position + 1
        elif token == tokenizer.eos_id:
            texts.append(tokenizer.decode(tokens[start:position]))
    return texts


def skipped_locations(out: Path) -> list[str]:
    """skipped.txt 里每一行的位置（制表符之前）。"""
    return [line.split("\t")[0] for line in (out / "skipped.txt").read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------
# 第 3 条：.json 数组里不成对的代理项转义
# ---------------------------------------------------------------------------

LONE_SURROGATES = [r'{"text": "a\ud800 b"}', r'{"text": "a\ud800\ud800b"}', r'{"text": "x\udfff"}']


@pytest.mark.parametrize("element", LONE_SURROGATES)
def test_json_array_lone_surrogate_names_the_record(tmp_path, element):
    path = write_json_array(tmp_path / "a.json", [r'{"text": "好\ud83d\ude00"}', element, '{"text": "尾"}'])
    message = error_of(path)
    assert f"{path} 记录/record 2" in message and "surrogate" in message
    # 跳过的只有那一条；成对的转义（emoji）原样保留，既没有变成 "?" 也没有报错
    items, reports = read_skipping(path)
    assert items == [(1, "好😀"), (3, "尾")]
    assert reports == [f"{path} 记录/record 2 字段/field 'text'"]


def test_json_array_lone_surrogate_survives_for_dialogue_checks(tmp_path):
    # 对话数据取整条记录：孤立代理项必须原样交给 dialogue.py（它会检查并报错），而不是被悄悄改成 "?"
    path = write_json_array(tmp_path / "a.json", [r'{"prompt": "a\ud800", "response": "x\udfff"}'])
    assert list(iter_records(path)) == [(1, {"prompt": "a\ud800", "response": "x\udfff"})]


def test_cli_json_lone_surrogates_prepare_and_tokenizer(tmp_path, review_tokenizer_dir):
    elements = ['{"text": "第一条好的"}', *LONE_SURROGATES, '{"text": "最后一条好的"}']
    corpus = write_json_array(tmp_path / "corpus.json", elements)
    common = ["data", "prepare", "--input", corpus, "--tokenizer", review_tokenizer_dir, "--val-fraction", "0"]

    line = cli_error_line(run_cli(*common, "--out", tmp_path / "strict"))
    assert f"{corpus} 记录/record 2" in line and "surrogate" in line
    assert not (tmp_path / "strict").exists()

    result = run_cli(*common, "--out", tmp_path / "out", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert skipped_locations(tmp_path / "out") == [f"{corpus} 记录/record {n} 字段/field 'text'" for n in (2, 3, 4)]
    assert prepared_texts(tmp_path / "out") == ["第一条好的", "最后一条好的"]

    line = cli_error_line(run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", "300",
                                  "--out", tmp_path / "tok"))
    assert f"{corpus} 记录/record 2" in line and "surrogate" in line


# ---------------------------------------------------------------------------
# 第 8 条：极端的 JSON 值（超长整数、超深嵌套）
# ---------------------------------------------------------------------------

HUGE_INTEGER = '{"text": "数字", "n": ' + "9" * 5000 + "}"
DEEP_NESTING = "[" * 100_000 + "]" * 100_000


def test_jsonl_extreme_values_name_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(['{"text": "一"}', HUGE_INTEGER, DEEP_NESTING, '{"text": "四"}']) + "\n",
                    encoding="utf-8")
    message = error_of(path)
    assert f"{path}:2" in message and "4300" in message
    items, reports = read_skipping(path)
    assert items == [(1, "一"), (4, "四")]
    assert reports == [f"{path}:2", f"{path}:3"]
    path.write_text('{"text": "一"}\n' + DEEP_NESTING + "\n", encoding="utf-8")
    assert f"{path}:2" in error_of(path) and "nested too deeply" in error_of(path)


def test_json_array_extreme_values_name_the_record(tmp_path):
    path = write_json_array(tmp_path / "a.json", ['{"text": "一"}', HUGE_INTEGER, DEEP_NESTING, '{"text": "四"}'])
    message = error_of(path)
    assert f"{path} 记录/record 2" in message and "4300" in message
    items, reports = read_skipping(path)
    assert items == [(1, "一"), (4, "四")]
    assert reports == [f"{path} 记录/record 2", f"{path} 记录/record 3"]
    path = write_json_array(tmp_path / "b.json", ['{"text": "一"}', DEEP_NESTING])
    assert f"{path} 记录/record 2" in error_of(path) and "nested too deeply" in error_of(path)


def test_cli_extreme_values_prepare_and_tokenizer(tmp_path, review_tokenizer_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\n".join(['{"text": "第一行好的"}', HUGE_INTEGER, DEEP_NESTING, '{"text": "第四行好的"}']) + "\n",
                      encoding="utf-8")
    common = ["data", "prepare", "--input", corpus, "--tokenizer", review_tokenizer_dir, "--val-fraction", "0"]

    line = cli_error_line(run_cli(*common, "--out", tmp_path / "strict"))
    assert f"{corpus}:2" in line and "4300" in line

    result = run_cli(*common, "--out", tmp_path / "out", "--skip-bad")
    assert result.returncode == 0, result.stderr
    assert skipped_locations(tmp_path / "out") == [f"{corpus}:2", f"{corpus}:3"]
    assert prepared_texts(tmp_path / "out") == ["第一行好的", "第四行好的"]

    line = cli_error_line(run_cli("tokenizer", "train", "--input", corpus, "--vocab-size", "300",
                                  "--out", tmp_path / "tok"))
    assert f"{corpus}:2" in line and "4300" in line


# ---------------------------------------------------------------------------
# .json 数组：流式读取在任何切块位置都正确，坏记录只跳过那一条
# ---------------------------------------------------------------------------

TRICKY_ELEMENTS = [
    {"text": "引号\"、反斜杠\\、换行\n和 \\\" 都在字符串里", "id": 1},
    {"text": "括号 [ ] { } 和逗号 , 也在字符串里", "nested": {"a": [1, 2.5, -3e2, True, False, None]}},
    "一个字符串元素",
    12345678901234567890,
    [],
    {"text": "emoji 😀 与生僻字 𠀀", "tags": ["甲", "乙"]},
]


@pytest.mark.parametrize("read_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
@pytest.mark.parametrize("style", ["compact", "indented", "crlf", "ascii"])
def test_json_array_reader_handles_any_chunk_boundary(tmp_path, monkeypatch, read_bytes, style):
    # 每次只读几个字节：字符串、数字、汉字（3 个字节）、\r\n 都会被切在两块之间
    text = json.dumps(TRICKY_ELEMENTS, ensure_ascii=style == "ascii", indent=None if style == "compact" else 2)
    if style == "crlf":
        text = text.replace("\n", "\r\n")
    path = tmp_path / "a.json"
    path.write_bytes(text.encode("utf-8"))
    monkeypatch.setattr(json_array_reader, "_JSON_READ_BYTES", read_bytes, raising=False)
    assert [record for _, record in iter_records(path, skip_bad=True)] == [
        record for record in TRICKY_ELEMENTS if isinstance(record, dict)]
    reports: list[str] = []
    list(iter_records(path, skip_bad=True, on_bad=lambda where, why: reports.append(where)))
    assert reports == [f"{path} 记录/record {n}" for n in (3, 4, 5)]   # 不是对象的三个元素


@pytest.mark.parametrize("read_bytes", [3, 1 << 20])
def test_json_array_bad_record_inside_is_skipped_alone(tmp_path, monkeypatch, read_bytes):
    monkeypatch.setattr(json_array_reader, "_JSON_READ_BYTES", read_bytes, raising=False)
    bad = ['{"text": "尾逗号",}', '{"text" "少冒号"}', '{"text": "a"} {"text": "b"}', '{"text": "控制字符\x01"}']
    path = write_json_array(tmp_path / "a.json", ['{"text": "好"}', *bad, '{"text": "也好"}'])
    message = error_of(path)
    assert f"{path} 记录/record 2" in message and "JSON" in message and "line 3" in message
    items, reports = read_skipping(path)
    assert items == [(1, "好"), (6, "也好")]
    assert reports == [f"{path} 记录/record {n}" for n in (2, 3, 4, 5)]


def test_json_array_invalid_utf8_names_the_record(tmp_path):
    path = tmp_path / "gbk.json"
    path.write_bytes(b'[{"text": "ok"},\n {"text": "' + "坏".encode("gbk") + b'"},\n {"text": "ok2"}]')
    message = error_of(path)
    assert f"{path} 记录/record 2" in message and "UTF-8" in message and "line 2" in message
    items, reports = read_skipping(path)
    assert items == [(1, "ok"), (3, "ok2")] and reports == [f"{path} 记录/record 2"]


@pytest.mark.parametrize("data, expected", [
    (b'[{"text": "a"}, {"text": "b"', "never ends"),
    (b'[{"text": "a"}, {"text": "b"]}]', "mismatched bracket"),
    (b'[{"text": "a"}]\n[{"text": "b"}]', "extra data"),
    (b'[{"text": "a"},\n {\'text\': "b"}]', "unexpected character"),
])
def test_json_array_broken_structure_stops_even_with_skip_bad(tmp_path, data, expected):
    # 结构坏了（括号、引号不配对）：下一条记录从哪里开始已经说不清，只能停下来，说清楚在哪里
    path = tmp_path / "a.json"
    path.write_bytes(data)
    for skip_bad in (False, True):
        message = error_of(path, skip_bad=skip_bad)
        assert f"{path} 记录/record 1 之后" in message and expected in message and "line" in message


# ---------------------------------------------------------------------------
# 第 6 条：.txt 里的超长行边读边切
# ---------------------------------------------------------------------------

def small_limits(monkeypatch, max_chars: int, read_bytes: int) -> None:
    """把“每段最多几个字”和“一次读几个字节”调得很小，用几十个字就能试出切分逻辑。"""
    monkeypatch.setattr(txt_reader, "MAX_TXT_BLOCK_CHARS", max_chars)
    # raising=False：修复前的代码没有这个常量（整行一次读进来），测试照样能跑，并且因为段太长而失败
    monkeypatch.setattr(txt_reader, "_TXT_READ_BYTES", read_bytes, raising=False)


@pytest.mark.parametrize("read_bytes", [4, 7, 16, 1 << 20])
@pytest.mark.parametrize("newline", ["\n", "\r\n", ""])
def test_long_txt_line_is_split_without_losing_anything(tmp_path, monkeypatch, read_bytes, newline):
    small_limits(monkeypatch, 20, read_bytes)
    line = "今天天气很好。我们去公园散步吧！好啊😀，走吧？" * 5 + "没有标点的一长串汉字一直写下去没有尽头" * 3
    path = tmp_path / "long.txt"
    path.write_bytes(("开头一段\n\n" + line + newline + (newline + "下一段" + newline if newline else "")).encode())
    items = list(iter_texts(path))
    pieces = [text for number, text in items if number == 3]
    assert items[0] == (1, "开头一段") and (items[-1] == (5, "下一段") if newline else True)
    assert "".join(pieces) == line                                  # 一字不差
    assert all(0 < len(piece) <= 20 for piece in pieces[:-1])        # 每段有上限
    assert len(pieces[-1]) <= 20 + read_bytes
    assert all("\r" not in piece for piece in pieces)                # \r\n 即使被切在两片之间也去掉了
    if read_bytes >= len(line.encode()):
        assert pieces == [line]            # 一片就读完的行不在行内切（与以前一样，在行尾分段）
    else:
        assert pieces[0][-1] in "。！？"   # 优先在句末切


def test_cut_point_prefers_sentence_end_then_space_then_hard_cut(monkeypatch):
    monkeypatch.setattr(txt_reader, "MAX_TXT_BLOCK_CHARS", 10)
    assert txt_reader._cut_point("一二三。”四五六七八九十", 5) == (10, 10)     # 窗口 [5, 10) 里没有句末和空白：硬切
    assert txt_reader._cut_point("一二三四五六。”八九十", 5) == (8, 8)          # 句末连同后引号留在前一段
    assert txt_reader._cut_point("one two three", 5) == (8, 8)                 # 没有句末：在空白之后切
    assert txt_reader._cut_point("一二三四五\n七八九十", 4) == (5, 6)           # 换行处切，换行本身不要


def test_multibyte_character_is_never_split_between_reads(tmp_path, monkeypatch):
    small_limits(monkeypatch, 6, 4)   # 4 个字节的片：每个汉字（3 字节）、emoji（4 字节）都会跨片
    line = "汉😀字" * 10
    path = tmp_path / "a.txt"
    path.write_bytes(line.encode())
    pieces = [text for _, text in iter_texts(path)]
    assert "".join(pieces) == line and all(len(piece) <= 6 + 4 for piece in pieces)


def test_long_line_with_bad_utf8_reports_line_and_byte(tmp_path, monkeypatch):
    small_limits(monkeypatch, 20, 8)
    path = tmp_path / "a.txt"
    path.write_bytes("第一段\n\n".encode() + ("好" * 30).encode() + b"\xff" + "坏行剩下的部分".encode() + "\n\n最后一段\n".encode())
    message = error_of(path)
    assert f"{path}:3" in message and "byte 91" in message     # 30 个汉字 = 90 字节，坏字节是第 91 个
    items, reports = read_skipping(path)
    assert reports == [f"{path}:3"]
    assert items[0] == (1, "第一段") and items[-1] == (5, "最后一段")
    kept = "".join(text for number, text in items if number == 3)   # 坏字节所在那一片之前的部分已经交出
    assert kept and ("好" * 30).startswith(kept) and len(kept) >= 30 - 8


def long_line_file(path: Path, megabytes: int) -> Path:
    """写一个 megabytes MB、没有一个换行的纯英文文件（英文按空格切，分词后 token 最多，最吃内存）。"""
    words = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    path.write_bytes(words * (megabytes * 1_000_000 // len(words)))
    return path


def peak_rss_mb(code: str, *args) -> float:
    """在一个干净的子进程里跑 code，返回它自己和它等待过的子进程里最大的峰值内存（MB）。

    为什么不直接用 getrusage(RUSAGE_SELF)？Linux 上子进程是从 pytest 进程 fork 出来的，
    exec 之后 ru_maxrss 仍然记着 fork 那一刻父进程的大小（pytest 本身就有几十 MB）。
    /proc/self/status 的 VmHWM 只算 exec 之后这个进程自己的峰值。
    """
    if not Path("/proc/self/status").exists():
        pytest.skip("需要 Linux 的 /proc / needs Linux /proc")
    probe = (
        "import resource, sys\n" + code + "\n"
        "own = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmHWM'))\n"
        "print('PEAK_KB', max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))"
    )
    result = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split("PEAK_KB")[-1]) / 1024


def test_reading_a_one_line_file_uses_bounded_memory(tmp_path):
    # 以前整行读进来：40 MB 的字节 + 40 MB 的字符串，峰值 100 MB 以上；现在每次只有一片（1 MiB）和一段（1M 字）
    path = long_line_file(tmp_path / "one_line.txt", 40)
    code = ("from towergpt.data.readers import iter_texts\n"
            "total = sum(len(text) for _, text in iter_texts(sys.argv[1]))\n"
            "assert total == __import__('os').path.getsize(sys.argv[1]), total")
    assert peak_rss_mb(code, path) < 64


def test_prepare_on_a_50mb_one_line_file_stays_under_500mb(tmp_path, review_tokenizer_dir):
    # 修复前：同样的文件（纯英文、没有换行）峰值约 2.8 GB；有换行的同一份文本约 120 MB
    path = long_line_file(tmp_path / "one_line.txt", 50)
    code = ("import subprocess\n"
            "subprocess.run([sys.executable, '-m', 'towergpt', 'data', 'prepare', '--input', sys.argv[1],"
            " '--tokenizer', sys.argv[2], '--out', sys.argv[3]], check=True, capture_output=True)")
    assert peak_rss_mb(code, path, review_tokenizer_dir, tmp_path / "out") < 500
