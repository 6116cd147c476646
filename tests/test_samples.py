"""quickstart 的续写示例：打转检测认得出真实见过的圈，也不冤枉正常的文字；示例用的是该用的解码设置。"""

import pytest

from conftest import tiny_gpt
from towergpt.demo.samples import DECODING, continue_prompts, find_loop


@pytest.mark.parametrize("text", [
    "中国人民的中国人民的中国人民的中国人民",          # 一个词组反复（quickstart 真的出现过）
    "阿尔斯斯斯斯斯斯斯斯斯斯斯斯斯斯",                # 一个字反复
    "政府、政府、政府、政府、政府、政府、",            # 带标点的词反复
    "今天上午，国务院今天上午，国务院今天上午，国务院",  # 较长的单元
    "艺术艺术艺术创作",                              # 一个词接连三次（第一次新用户运行里出现过）
])
def test_loops_seen_in_real_runs_are_found(text):
    assert find_loop(text)


@pytest.mark.parametrize("text", [
    "新华社北京1月1日电 今天上午，国务院总理李鹏在人民大会堂会见了外宾。",
    "很好！！！！！",                    # 评论里常见的几个感叹号，太短，不算打转
    "哈哈哈",                           # 一个字三次：还不算
    "…………",                           # 标点、数字的重复不算
    "１９９８年１１１１",
    "质量不错，物流很快，下次还来。质量不错。",  # 一句话重复一次不算圈
])
def test_ordinary_text_is_not_called_a_loop(text):
    assert find_loop(text) is None


def test_a_short_unit_does_not_hide_a_longer_loop_at_the_same_place():
    # 从开头起，单字单元“的”只连续 3 次（太短）；同一处开始的 4 字单元却转了 4 圈
    assert find_loop("的的的好的的的好的的的好的的的好") == "的的的好的的的好的的的好的的的好"


def test_samples_use_a_repetition_penalty_and_top_p():
    assert DECODING["greedy"]["temperature"] == 0 and DECODING["greedy"]["repetition_penalty"] > 1
    assert DECODING["sampled"]["top_p"] < 1 and DECODING["sampled"]["temperature"] > 0


class CharTokenizer:
    """每个字一个 id 的玩具分词器（够 continue_prompts 用）。"""

    bos_id, eos_id = 1, 2
    chars = "中国人民新年伊始，今天上午务院这本书的内容"
    vocab_size = 3 + len(chars)

    def encode(self, text):
        return [3 + self.chars.index(c) for c in text]

    def decode(self, ids):
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


def test_continue_prompts_marks_which_settings_looped():
    model = tiny_gpt(vocab_size=CharTokenizer.vocab_size)
    rows = continue_prompts(model, CharTokenizer(), prompts=["中国"], new_tokens=30,
                            decoding={"plain": dict(temperature=0.0), "penalised": dict(temperature=0.0,
                                                                                        repetition_penalty=1.3)})
    row = rows[0]
    assert row["plain"].startswith("中国") and row["penalised"].startswith("中国")
    assert "plain" in row["loops"]   # 随机初始化的小模型，贪心解码只会重复同一个字
    assert row["loops"] == [name for name in ("plain", "penalised") if find_loop(row[name][2:])]
