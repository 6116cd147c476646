"""语料读取器的测试：四种格式都能读，每种坏数据都报出正确的位置和原因。"""

from __future__ import annotations

import json

import pytest

from conftest import reader_error as error_of
from towergpt.data.readers import iter_texts
from towergpt.errors import TowerGPTError


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------
# 正常读取
# ---------------------------------------------------------------------------

def test_txt_blocks_separated_by_blank_lines(tmp_path):
    path = write_bytes(
        tmp_path / "a.txt",
        "第一段第一行\n第一段第二行\n\n\n  \n第二段，只有一行\r\n\r\n第三段\n  缩进保留\n".encode("utf-8"),
    )
    assert list(iter_texts(path)) == [
        (1, "第一段第一行\n第一段第二行"),
        (6, "第二段，只有一行"),
        (8, "第三段\n  缩进保留"),
    ]


def test_txt_strips_utf8_bom(tmp_path):
    path = write_bytes(tmp_path / "bom.txt", b"\xef\xbb\xbf" + "你好".encode("utf-8"))
    assert list(iter_texts(path)) == [(1, "你好")]


def test_jsonl_reads_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "一"}\n\n{"text": ""}\n{"text": "三\\n行"}\n', encoding="utf-8")
    # 空字符串照常产出，由调用者决定怎么处理
    assert list(iter_texts(path)) == [(1, "一"), (3, ""), (4, "三\n行")]


def test_custom_field(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"content": "甲", "id": 1}, {"content": "乙"}])
    assert [text for _, text in iter_texts(path, field="content")] == ["甲", "乙"]


def test_json_array_is_streamed(tmp_path, monkeypatch):
    records = [{"text": f"第{i}条"} for i in range(1, 2001)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")

    # 流式的证据：读取器绝不调用 json.load / json.loads 解析整个文件
    def forbidden(*args, **kwargs):
        raise AssertionError("json array must be streamed, not parsed as a whole")

    monkeypatch.setattr(json, "load", forbidden)
    monkeypatch.setattr(json, "loads", forbidden)
    items = iter_texts(path)
    assert next(items) == (1, "第1条")
    rest = list(items)
    assert rest[-1] == (2000, "第2000条") and len(rest) == 1999


def test_json_array_with_bom_and_whitespace(tmp_path):
    path = write_bytes(tmp_path / "a.json", b"\xef\xbb\xbf \n " + json.dumps([{"text": "好"}]).encode())
    assert list(iter_texts(path)) == [(1, "好")]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "a.parquet"
    table = pa.table({"body": [f"文本{i}" for i in range(3000)], "n": list(range(3000))})
    pq.write_table(table, path, row_group_size=700)
    items = list(iter_texts(path, field="body"))
    assert len(items) == 3000
    assert items[0] == (1, "文本0") and items[-1] == (3000, "文本2999")


def test_extension_is_case_insensitive(tmp_path):
    path = write_bytes(tmp_path / "A.TXT", "大写扩展名".encode())
    assert list(iter_texts(path)) == [(1, "大写扩展名")]


# ---------------------------------------------------------------------------
# 坏输入：一行消息，指明文件、行号、字段
# ---------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(TowerGPTError, match="找不到文件.*nope.jsonl"):
        iter_texts(tmp_path / "nope.jsonl")  # 调用时立即报错，不必等到迭代


def test_unknown_extension(tmp_path):
    path = write_bytes(tmp_path / "a.csv", b"text\n1\n")
    with pytest.raises(TowerGPTError) as info:
        iter_texts(path)
    assert "a.csv" in str(info.value) and ".csv" in str(info.value) and ".jsonl" in str(info.value)


def test_directory_is_rejected(tmp_path):
    folder = tmp_path / "dir.txt"
    folder.mkdir()
    with pytest.raises(TowerGPTError, match="目录"):
        iter_texts(folder)


def test_invalid_json_line_reports_line_number(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "ok"}\n{"text": "坏了",}\n', encoding="utf-8")
    message = error_of(path)
    assert f"{path}:4" in message and "JSON" in message


def test_record_not_an_object(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "ok"}\n["text"]\n', encoding="utf-8")
    message = error_of(path)
    assert f"{path}:2" in message and "array" in message


def test_missing_field_names_available_keys(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": "ok"}, {"content": "x", "id": 7}])
    message = error_of(path)
    assert f"{path}:2" in message and "'text'" in message
    assert "'content'" in message and "'id'" in message


def test_non_string_value_names_its_type(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"text": 12}])
    message = error_of(path)
    assert f"{path}:1" in message and "number" in message
    path = write_jsonl(tmp_path / "b.jsonl", [{"text": None}])
    assert "null" in error_of(path)


def test_non_utf8_bytes_report_line(tmp_path):
    path = write_bytes(tmp_path / "gbk.txt", "第一行\n\n".encode() + "第三行是 GBK".encode("gbk") + b"\n")
    message = error_of(path)
    assert f"{path}:3" in message and "UTF-8" in message
    path = write_bytes(tmp_path / "gbk.jsonl", b'{"text": "ok"}\n{"text": "' + "坏".encode("gbk") + b'"}\n')
    assert f"{path}:2" in error_of(path)


def test_json_array_bad_record_uses_record_number(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"text": "a"}, {"text": "b"}, {"txt": "c"}]), encoding="utf-8")
    message = error_of(path)
    assert "record 3" in message and "'txt'" in message


def test_json_array_syntax_error(tmp_path):
    path = write_bytes(tmp_path / "a.json", b'[{"text": "a"}, {"text": "b"}, oops]')
    message = error_of(path)
    assert "record 2" in message and "JSON" in message
    # 语法错误后无法找到下一条记录，skip_bad 也必须停下
    assert "record 2" in error_of(path, skip_bad=True)


def test_json_file_that_is_not_an_array(tmp_path):
    path = write_bytes(tmp_path / "lines.json", b'{"text": "a"}\n{"text": "b"}\n')
    assert ".jsonl" in error_of(path)
    assert "空" in error_of(write_bytes(tmp_path / "empty.json", b"  \n"))


def test_parquet_missing_column_and_nulls(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", None, "c"], "n": [1, 2, 3]}), path)
    assert "'body'" in error_of(path, field="body") and "'text'" in error_of(path, field="body")
    assert "int64" in error_of(path, field="n")
    assert "row 2" in error_of(path) and "null" in error_of(path)
    reports = []
    items = list(iter_texts(path, skip_bad=True, on_bad=lambda where, why: reports.append(where)))
    assert items == [(1, "a"), (3, "c")] and len(reports) == 1


def test_parquet_garbage_file(tmp_path):
    pytest.importorskip("pyarrow")
    path = write_bytes(tmp_path / "fake.parquet", b"not parquet at all")
    assert "Parquet" in error_of(path)


def test_skip_bad_collects_reports(tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        '{"text": "好1"}',
        "{坏 json",
        '{"text": 3}',
        '"只是字符串"',
        '{"other": "x"}',
        '{"text": "好2"}',
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "\xff"}\n')
    reports = []
    items = list(iter_texts(path, skip_bad=True, on_bad=lambda where, why: reports.append((where, why))))
    assert items == [(1, "好1"), (6, "好2")]
    assert [where.split(" ")[0] for where, _ in reports] == [f"{path}:{n}" for n in (2, 3, 4, 5, 7)]
    assert all(why for _, why in reports)
    # 不给回调也能跳过
    assert list(iter_texts(path, skip_bad=True)) == items


def test_lone_surrogate_escape_in_jsonl(tmp_path):
    path = tmp_path / "a.jsonl"
    # 成对的转义（emoji 😀）是合法的；孤立的 \ud800 无法编码成 UTF-8，应当在读取时就报出行号
    path.write_text('{"text": "\\ud83d\\ude00"}\n{"text": "坏\\ud800"}\n', encoding="utf-8")
    message = error_of(path)
    assert f"{path}:2" in message and "surrogate" in message
    assert list(iter_texts(path, skip_bad=True)) == [(1, "😀")]
