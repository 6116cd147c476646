"""数据工具 convert / merge / shuffle / clean / dedup 的测试：小语料都写在 tmp_path 里。"""

from __future__ import annotations

import json
import random

import pytest

from conftest import run_cli
from towergpt.data import shuffle as shuffle_module
from towergpt.data.clean import CleanOptions, clean, count_classes, normalize_text
from towergpt.data.convert import chunk_paragraphs, convert, split_long_paragraph
from towergpt.data.dedup import MinHashIndex, choose_bands, dedup
from towergpt.data.merge import merge
from towergpt.data.shuffle import shuffle
from towergpt.errors import TowerGPTError

HAN = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"


def random_text(rng: random.Random, length: int) -> str:
    """一段随机的“中文”（从常用字里随机取），两段不同的随机文本几乎没有共同的 5 字片段。"""
    return "".join(rng.choice(HAN) for _ in range(length))


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def error_of(function, *args, **kwargs) -> str:
    with pytest.raises(TowerGPTError) as info:
        function(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------
# 共用：原子写出、覆盖保护、坏记录
# ---------------------------------------------------------------------------

def test_refuses_to_overwrite_and_to_write_over_its_input(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "你好"}])
    out = tmp_path / "out.jsonl"
    out.write_text("旧内容\n", encoding="utf-8")
    assert "--overwrite" in error_of(convert, str(source), str(out))
    assert out.read_text(encoding="utf-8") == "旧内容\n"
    assert "同一个文件" in error_of(convert, str(source), str(source), overwrite=True)
    assert "同一个文件" in error_of(merge, [str(source)], str(tmp_path / "." / "a.jsonl"), overwrite=True)
    convert(str(source), str(out), overwrite=True)
    assert read_jsonl(out) == [{"text": "你好"}]


def test_failure_leaves_existing_output_untouched_and_no_temp_file(tmp_path):
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "第一条"}\n{"text": "第二条"\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    out.write_text("旧内容\n", encoding="utf-8")
    message = error_of(convert, str(source), str(out), overwrite=True)
    assert f"{source}:2" in message and "JSON" in message
    assert out.read_text(encoding="utf-8") == "旧内容\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "out.jsonl"]


def test_skip_bad_counts_malformed_lines(tmp_path):
    source = tmp_path / "a.jsonl"
    source.write_text('{"text": "第一条"}\nnot json\n{"text": "第三条"}\n', encoding="utf-8")
    report = clean([str(source)], str(tmp_path / "out.jsonl"), skip_bad=True)
    assert report.kept == 2
    assert report.dropped == {"坏记录 / bad record": 1}
    assert f"{source}:2" in report.summary()


# ---------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------

def test_json_array_and_jsonl_round_trip_keeps_unicode_and_fields(tmp_path):
    records = [{"text": "中文 and English", "id": 1, "meta": {"来源": "新闻"}}, {"text": "第二条😀", "id": 2}]
    array = tmp_path / "a.json"
    array.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    convert(str(array), str(tmp_path / "b.jsonl"))
    raw = (tmp_path / "b.jsonl").read_text(encoding="utf-8")
    assert "中文 and English" in raw and "\\u" not in raw        # ensure_ascii=False
    assert read_jsonl(tmp_path / "b.jsonl") == records
    convert(str(tmp_path / "b.jsonl"), str(tmp_path / "c.json"))
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == records


def test_rename_fields_and_refuse_to_overwrite_a_field(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"content": "你好", "title": "标题", "id": 1}, {"id": 2}])
    report = convert(str(source), str(tmp_path / "b.jsonl"), renames=["content=text", "title=标题"])
    assert read_jsonl(tmp_path / "b.jsonl") == [{"text": "你好", "标题": "标题", "id": 1}, {"id": 2}]
    assert "content -> text: 1" in report.summary()
    message = error_of(convert, str(source), str(tmp_path / "c.jsonl"), renames=["content=id"])
    assert f"{source}:1" in message and "'id'" in message
    assert "OLD=NEW" in error_of(convert, str(source), str(tmp_path / "c.jsonl"), renames=["content"])


def test_txt_paragraphs_are_merged_up_to_max_chars_without_splitting(tmp_path):
    paragraphs = ["第一段，十个字左右。", "第二段也差不多长。", "第三段。", "第四段比较长一些，有二十来个字的样子吧。"]
    source = tmp_path / "a.txt"
    source.write_text("\n\n".join(paragraphs) + "\n", encoding="utf-8")
    convert(str(source), str(tmp_path / "a.jsonl"), max_chars=25)
    chunks = [record["text"] for record in read_jsonl(tmp_path / "a.jsonl")]
    assert chunks == ["第一段，十个字左右。\n\n第二段也差不多长。", "第三段。", "第四段比较长一些，有二十来个字的样子吧。"]
    assert all(len(chunk) <= 25 for chunk in chunks)


def test_long_paragraph_is_split_at_sentence_ends():
    paragraph = "这是第一句。这是第二句！这是第三句？“引号里的一句。”最后一句没有句号"
    pieces = split_long_paragraph(paragraph, 14)
    assert "".join(pieces) == paragraph
    assert pieces[:3] == ["这是第一句。这是第二句！", "这是第三句？", "“引号里的一句。”"]
    assert all(len(piece) <= 14 for piece in pieces)
    # 一句话就超过上限：最后才硬切
    assert split_long_paragraph("一" * 25, 10) == ["一" * 10, "一" * 10, "一" * 5]
    # 不超长的段落原样通过，行号指向块的第一段
    assert list(chunk_paragraphs([(1, "甲"), (3, "乙")], 100)) == [(1, "甲\n\n乙")]


def test_parquet_to_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": ["第一行", "第二行", None, "第四行"], "score": [1.5, 2.0, 3.0, 4.0],
                      "tags": [["新闻"], [], ["a", "b"], ["c"]]})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=2)
    report = convert(str(tmp_path / "a.parquet"), str(tmp_path / "a.jsonl"), renames=["score=分数"])
    assert report.kept == 4
    assert read_jsonl(tmp_path / "a.jsonl")[2] == {"text": None, "分数": 3.0, "tags": ["a", "b"]}


# ---------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------

def test_merge_concatenates_formats_in_order_with_source(tmp_path):
    first = write_jsonl(tmp_path / "a.jsonl", [{"text": "甲"}, {"text": "乙", "id": 7}])
    second = tmp_path / "b.json"
    second.write_text(json.dumps([{"text": "丙"}], ensure_ascii=False), encoding="utf-8")
    third = tmp_path / "c.txt"
    third.write_text("丁段\n\n戊段\n", encoding="utf-8")
    report = merge([str(first), str(second), str(third)], str(tmp_path / "all.jsonl"), source_field="source")
    assert read_jsonl(tmp_path / "all.jsonl") == [
        {"text": "甲", "source": str(first)}, {"text": "乙", "id": 7, "source": str(first)},
        {"text": "丙", "source": str(second)}, {"text": "丁段", "source": str(third)},
        {"text": "戊段", "source": str(third)}]
    assert report.kept == 5
    message = error_of(merge, [str(first)], str(tmp_path / "x.jsonl"), source_field="id")
    assert f"{first}:2" in message and "--source-field" in message


# ---------------------------------------------------------------------------
# shuffle
# ---------------------------------------------------------------------------

@pytest.fixture
def numbered_jsonl(tmp_path):
    """2 万条记录（约 1.3 MB）：每条有一个编号和一点中文。"""
    rng = random.Random(1)
    return write_jsonl(tmp_path / "numbers.jsonl",
                       [{"n": i, "text": random_text(rng, 15)} for i in range(20_000)])


def test_shuffle_is_a_deterministic_permutation_within_a_tiny_memory_budget(tmp_path, numbered_jsonl):
    report = shuffle([str(numbered_jsonl)], str(tmp_path / "a.jsonl"), seed=3, memory_mb=0.1)
    order = [record["n"] for record in read_jsonl(tmp_path / "a.jsonl")]
    assert sorted(order) == list(range(20_000))            # 一条不多、一条不少
    assert order != sorted(order)
    assert report.kept == 20_000
    # 内存有界：1.3 MB 的文件、0.1 MB 的预算 -> 十几个桶，每个桶都在预算之内
    assert report.details["buckets"] >= 13
    assert report.details["largest_bucket_bytes"] <= 100_000
    shuffle([str(numbered_jsonl)], str(tmp_path / "b.jsonl"), seed=3, memory_mb=0.1)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    shuffle([str(numbered_jsonl)], str(tmp_path / "c.jsonl"), seed=4, memory_mb=0.1)
    assert (tmp_path / "a.jsonl").read_bytes() != (tmp_path / "c.jsonl").read_bytes()
    assert not list(tmp_path.glob(".shuffle-*"))           # 临时桶文件都删掉了


def test_shuffle_splits_oversized_buckets_again(tmp_path, numbered_jsonl, monkeypatch):
    # 最多只许开 2 个桶：第一趟的桶一定太大，必须递归地再分
    monkeypatch.setattr(shuffle_module, "MAX_BUCKETS", 2)
    report = shuffle([str(numbered_jsonl)], str(tmp_path / "a.jsonl"), seed=0, memory_mb=0.1)
    order = [record["n"] for record in read_jsonl(tmp_path / "a.jsonl")]
    assert sorted(order) == list(range(20_000))
    assert report.details["largest_bucket_bytes"] <= 100_000
    assert report.details["buckets"] >= 13


def test_shuffle_bad_line_names_it_and_leaves_no_temporary_files(tmp_path):
    source = tmp_path / "a.jsonl"
    source.write_text('{"n": 1}\n{"n": 2}\n[1, 2]\n', encoding="utf-8")
    message = error_of(shuffle, [str(source)], str(tmp_path / "b.jsonl"), memory_mb=0.00001)
    assert f"{source}:3" in message and "array" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_shuffle_single_bucket_when_it_fits(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"n": i} for i in range(100)])
    report = shuffle([str(source)], str(tmp_path / "b.json"), seed=0)
    assert report.details["buckets"] == 1
    records = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))
    assert sorted(record["n"] for record in records) == list(range(100))


# ---------------------------------------------------------------------------
# clean
# ---------------------------------------------------------------------------

def test_normalize_keeps_words_and_removes_only_noise():
    text = "  New   York\tis big.\u200b 纽约\u3000\u3000很大\x07。 \r\n\r\n\r\n\r\n第二段 \u2028第三行\ufeff  "
    assert normalize_text(text) == "New York is big. 纽约 很大。\n\n第二段\n第三行"
    assert normalize_text("Hello, world") == "Hello, world"          # 原项目会变成 Hello,,world
    assert normalize_text("ＡＢＣ１２３，你好") == "ＡＢＣ１２３，你好"      # 默认不做 NFKC
    assert normalize_text("ＡＢＣ１２３，你好", nfkc=True) == "ABC123,你好"
    assert normalize_text("迈向 充满 希望 的 new world", join_cjk_spaces=True) == "迈向充满希望的 new world"
    assert normalize_text("def f():\n    return 1", keep_whitespace=True) == "def f():\n    return 1"


def test_character_classes_are_counted_over_visible_characters():
    counts = count_classes("中文，。 abc é 1★😀\ufffd\ue000")
    assert counts["visible"] == 13                           # 4 个空格不算
    assert (counts["han"], counts["cjk"], counts["latin"], counts["digit"]) == (2, 4, 4, 1)
    assert counts["letter"] == 6                               # 汉字也是字母
    assert counts["symbol"] == 4                               # ★ 😀 替换字符 私用区；标点不算


def test_clean_filters_with_reasons(tmp_path):
    records = [
        {"text": "这是一段正常的中文文本，长度足够。", "id": 1},
        {"text": "太短"},
        {"text": "This is an English sentence without Chinese at all."},
        {"text": "中文很好的一段文本呢★★★■■■"},
        {"text": "  \u200b  "},
        {"text": "这一段也很正常，会被留下来的。" * 20},
    ]
    source = write_jsonl(tmp_path / "a.jsonl", records)
    options = CleanOptions(min_chars=5, max_chars=200, min_ratio=0.5, max_symbol_ratio=0.2)
    report = clean([str(source)], str(tmp_path / "b.jsonl"), options)
    assert read_jsonl(tmp_path / "b.jsonl") == [records[0]]
    assert report.kept == 1
    assert sum(report.dropped.values()) == 5
    reasons = " ".join(report.dropped)
    for word in ("too short", "too few cjk", "too many symbols", "empty", "too long"):
        assert word in reasons


def test_clean_dialogue_messages_and_passes_other_fields_through(tmp_path):
    records = [
        {"messages": [{"role": "user", "content": " 你好 \u200b吗？ "}, {"role": "assistant", "content": "很好。"}],
         "id": "x1", "score": 0.5},
        {"prompt": "问题\t\t一", "chosen": "好  回答", "rejected": "坏回答", "extra": [1, 2]},
        {"conversations": [{"from": "human", "value": "\u200b"}, {"from": "gpt", "value": "回答"}]},
    ]
    source = write_jsonl(tmp_path / "a.jsonl", records)
    report = clean([str(source)], str(tmp_path / "b.jsonl"))
    assert read_jsonl(tmp_path / "b.jsonl") == [
        {"messages": [{"role": "user", "content": "你好 吗？"}, {"role": "assistant", "content": "很好。"}],
         "id": "x1", "score": 0.5},
        {"prompt": "问题 一", "chosen": "好 回答", "rejected": "坏回答", "extra": [1, 2]},
    ]
    assert "a message became empty" in " ".join(report.dropped)


def test_clean_record_without_text_is_a_clear_error(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "有字"}, {"body": "字段名不对"}])
    message = error_of(clean, [str(source)], str(tmp_path / "b.jsonl"))
    assert f"{source}:2" in message and "'body'" in message and "--field" in message
    report = clean([str(source)], str(tmp_path / "b.jsonl"), CleanOptions(field="body"), skip_bad=True)
    assert read_jsonl(tmp_path / "b.jsonl") == [{"body": "字段名不对"}]
    assert report.kept == 1 and report.dropped == {"坏记录 / bad record": 1}


# ---------------------------------------------------------------------------
# dedup
# ---------------------------------------------------------------------------

def test_dedup_exact_and_near_duplicates_keep_the_first(tmp_path):
    rng = random.Random(0)
    originals = [random_text(rng, 300) for _ in range(30)]
    one_char_edit = originals[3][:150] + "变" + originals[3][151:]
    records = [{"text": text, "id": i} for i, text in enumerate(originals)]
    records += [
        {"text": "  " + originals[5].replace(originals[5][10], originals[5][10] + " ", 1), "id": "space"},
        {"text": one_char_edit, "id": "edit"},
        {"text": originals[7], "id": "exact"},
    ]
    source = write_jsonl(tmp_path / "a.jsonl", records)
    report = dedup([str(source)], str(tmp_path / "b.jsonl"), pairs=str(tmp_path / "pairs.jsonl"))
    assert [record["id"] for record in read_jsonl(tmp_path / "b.jsonl")] == list(range(30))
    assert report.dropped == {"完全重复 / exact duplicate": 1, "近似重复 / near duplicate": 2}
    pairs = {pair["dropped"]: pair for pair in read_jsonl(tmp_path / "pairs.jsonl")}
    assert pairs[f"{source}:32"]["kept"] == f"{source}:4" and pairs[f"{source}:32"]["kind"] == "near"
    assert pairs[f"{source}:32"]["similarity"] > 0.9
    assert pairs[f"{source}:33"] == {"dropped": f"{source}:33", "kept": f"{source}:8", "kind": "exact",
                                     "similarity": 1.0}


def test_dedup_exact_only_keeps_near_duplicates(tmp_path):
    rng = random.Random(1)
    text = random_text(rng, 200)
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": text}, {"text": text[:-1] + "变"}, {"text": f"  {text} "}])
    report = dedup([str(source)], str(tmp_path / "b.jsonl"), exact_only=True)
    assert report.kept == 2 and report.dropped == {"完全重复 / exact duplicate": 1}


def test_dedup_dialogues_compare_whole_conversations(tmp_path):
    def dialogue(answer):
        return {"messages": [{"role": "user", "content": "今天天气怎么样？"}, {"role": "assistant", "content": answer}]}

    source = write_jsonl(tmp_path / "a.jsonl", [dialogue("晴天，适合出门散步。"), dialogue("下大雨，记得带伞，别出门了。"),
                                                dialogue("晴天，适合出门散步。")])
    report = dedup([str(source)], str(tmp_path / "b.jsonl"))
    assert report.kept == 2 and sum(report.dropped.values()) == 1


def test_minhash_similarity_estimate_and_band_choice():
    rng = random.Random(2)
    index = MinHashIndex(num_perm=256, ngram=5, threshold=0.3, seed=0)
    first = random_text(rng, 400)
    index.add(first, 0)
    assert index.query(random_text(rng, 400)) is None
    number, similarity = index.query(first[:200] + random_text(rng, 100) + first[300:])
    true_jaccard = 292 / 500   # 改掉 100 个字：104 片瓦片变了，共有 292 片，并集 500 片
    assert number == 0 and abs(similarity - true_jaccard) < 0.1
    bands, rows = choose_bands(0.8, 128)
    assert bands * rows <= 128
    # 相似度 0.95 的一对几乎必然成为候选，0.3 的几乎不会
    assert 1 - (1 - 0.95 ** rows) ** bands > 0.99
    assert 1 - (1 - 0.3 ** rows) ** bands < 0.01
    assert "--threshold" in error_of(dedup, ["x.jsonl"], "y.jsonl", threshold=1.5)


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------

def test_cli_runs_the_tools_and_reports(tmp_path):
    source = write_jsonl(tmp_path / "a.jsonl", [{"text": "你好  世界"}, {"text": "你好 世界"}, {"text": ""}])
    result = run_cli("data", "clean", "--input", source, "--out", tmp_path / "b.jsonl")
    assert result.returncode == 0, result.stderr
    assert "保留 / kept 2" in result.stdout and "empty" in result.stdout
    result = run_cli("data", "dedup", "--input", tmp_path / "b.jsonl", "--out", tmp_path / "b.jsonl")
    assert result.returncode == 2
    assert result.stderr.startswith("错误 / error:") and "Traceback" not in result.stderr
