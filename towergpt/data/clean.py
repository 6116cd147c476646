"""`towergpt data clean`：规整空白、去掉看不见的字符，按长度和字符比例过滤 / normalise and filter.

    towergpt data clean --input raw.jsonl --out clean.jsonl \\
        [--field text] [--min-chars 20] [--max-chars 100000] \\
        [--min-ratio 0.5 --char-class cjk] [--max-symbol-ratio 0.1] [--nfkc] [--join-cjk-spaces]

一、规整（默认就做，**不毁文本**）。常见错误是“清洗”时把每个空格都替换成逗号，英文句子 "New York" 变成了
"New,York"；这里只做下面这些改动，空格作为英文单词之间的分隔照常保留：
    1. （可选 --nfkc）Unicode NFKC 规范化：全角字母数字变半角、兼容字符变标准字符。
       注意：NFKC 也会把中文的全角标点 `，：；！？（）` 变成半角 `,:;!?()`，所以默认不开；
    2. 各种换行（\\r\\n、\\r、\\u2028 ……）统一成 \\n；
    3. 删掉控制字符（\\x00、\\x1b ……，但保留 \\n 和 \\t）和零宽字符（\\u200b、\\ufeff、软连字符 ……）：
       它们看不见，却会变成模型要学的 token，还会让两段看起来一样的文本“不相等”（去重失效）；
    4. 一行之内连续的空格、制表符、全角空格 \\u3000、不换行空格 \\xa0 …… 合成一个普通空格；
    5. 去掉每行首尾的空白，连续 3 个以上的换行压成 2 个（也就是最多一个空行），去掉全文首尾的空白。
   `--keep-whitespace` 关掉第 4、5 步（例如代码数据，缩进有意义）。
   `--join-cjk-spaces` 额外删掉两个汉字（或中文标点）之间的空格：分过词的语料（“迈向 充满 希望”）用得着。

二、过滤（默认只丢掉清洗后为空的记录；其余条件给了才生效）：
    --min-chars / --max-chars  清洗后的字数（字符数）；
    --min-ratio R              某类字符（--char-class，默认 cjk）至少占非空白字符的比例 R，
                               例如中文语料里混进来的整篇英文、乱码、代码，cjk 比例很低；
    --max-symbol-ratio R       “非文本符号”（Unicode 的 S* 类：数学符号、货币、表情、制表框线 ▲★■ 等，
                               以及私用区、未分配的码位、替换字符 �）最多占的比例，过滤掉乱码和排版垃圾。
    标点（，。、“”）不算符号：它们是文本的一部分。

三、作用在哪些文本上：记录里有 --field（默认 text）字段就只处理这个字段；否则按对话 / 偏好格式处理
每一段正文（prompt、response、instruction、input、output、chosen、rejected、system 的字符串，
messages / conversations 里每条消息的 content / value）。长度和比例按这些正文连起来算。
记录里的其他字段（id、来源、标签 ……）原样通过。什么文本都找不到的记录是坏记录：报错，或 --skip-bad 时跳过。
"""

from __future__ import annotations

import argparse
import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from towergpt.data.tool_io import RecordWriter, Report, check_inputs, iter_inputs_with_progress
from towergpt.errors import TowerGPTError

# 对话 / 偏好格式里，值是一段正文的字段；值是消息列表的字段；消息里放正文的字段
STRING_TEXT_KEYS = ("system", "prompt", "response", "instruction", "input", "output", "chosen", "rejected")
MESSAGE_LIST_KEYS = ("messages", "conversations", "prompt", "chosen", "rejected")
MESSAGE_TEXT_KEYS = ("content", "value")

# --- 规整用的正则 ---------------------------------------------------------
# 各种换行符 -> \n
_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# 看不见的字符：控制字符（保留 \t \n）、零宽字符、软连字符、双向文本控制符、BOM
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f"     # C0 / C1 控制字符
    "\u00ad\u180e\u200b-\u200f\u202a-\u202e"    # 软连字符、零宽空格 / 连接符、方向标记
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)
# 一行之内的“横向空白”：空格、制表符、不换行空格、各种宽度的空格、全角空格
_HORIZONTAL_SPACE = re.compile("[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]+")
_SPACE_AROUND_NEWLINE = re.compile(r" *\n *")
_MANY_NEWLINES = re.compile(r"\n{3,}")


# --- 字符类 -------------------------------------------------------------
# 汉字：CJK 统一表意文字及扩展 A、B…、兼容表意文字
HAN_RANGES = ((0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3134F))
# 中文标点（、。「」……，不含全角空格 \u3000）、全角字符（，！Ａ１）、竖排标点
CJK_PUNCTUATION_RANGES = ((0x3001, 0x303F), (0xFF00, 0xFFEF), (0xFE30, 0xFE4F))
# 注音、日文假名、韩文
CJK_OTHER_RANGES = ((0x3100, 0x312F), (0x3040, 0x30FF), (0x31F0, 0x31FF), (0x1100, 0x11FF), (0x3130, 0x318F),
                    (0xAC00, 0xD7AF))
# 拉丁字母：基本拉丁字母和 Latin-1 / 扩展 A、B 里的字母（é ü ß …，不含 × ÷）
LATIN_RANGES = ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x24F))

# 每个字符属于哪些类，用一个字节的各个位表示
SPACE, HAN, CJK, LATIN, LETTER, DIGIT, SYMBOL = (1 << bit for bit in range(7))
CHAR_CLASSES = {"cjk": CJK, "han": HAN, "latin": LATIN, "letter": LETTER, "digit": DIGIT}


def _char_class(ranges) -> str:
    """[(起, 止), ...] -> 正则字符类的内容，例如 \\U00004e00-\\U00009fff。"""
    return "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in ranges)


# 两个汉字（或中文标点）之间的空格（--join-cjk-spaces）
_CJK_TEXT = _char_class(HAN_RANGES + CJK_PUNCTUATION_RANGES)
_SPACE_BETWEEN_CJK = re.compile(f"(?<=[{_CJK_TEXT}]) (?=[{_CJK_TEXT}])")


def main(args: argparse.Namespace) -> None:
    options = CleanOptions(field=args.field, min_chars=args.min_chars, max_chars=args.max_chars,
                           min_ratio=args.min_ratio, char_class=args.char_class,
                           max_symbol_ratio=args.max_symbol_ratio, nfkc=args.nfkc,
                           keep_whitespace=args.keep_whitespace, join_cjk_spaces=args.join_cjk_spaces)
    report = clean(args.input, args.out, options, skip_bad=args.skip_bad, overwrite=args.overwrite)
    print(report.summary())


@dataclass
class CleanOptions:
    """clean 的全部选项；含义见模块说明。"""

    field: str = "text"
    min_chars: int = 1
    max_chars: int | None = None
    min_ratio: float | None = None
    char_class: str = "cjk"
    max_symbol_ratio: float | None = None
    nfkc: bool = False
    keep_whitespace: bool = False
    join_cjk_spaces: bool = False

    def check(self) -> None:
        if self.min_chars < 0 or (self.max_chars is not None and self.max_chars < self.min_chars):
            raise TowerGPTError(f"字数范围不对：--min-chars {self.min_chars} --max-chars {self.max_chars}"
                                f" / invalid length range")
        for name, value in (("--min-ratio", self.min_ratio), ("--max-symbol-ratio", self.max_symbol_ratio)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise TowerGPTError(f"{name} 必须在 0 到 1 之间，收到 {value} / {name} must be within [0, 1]")
        if self.char_class not in CHAR_CLASSES:
            raise TowerGPTError(f"--char-class 只能是 {sorted(CHAR_CLASSES)} / unknown character class")


def clean(inputs: list[str], out: str, options: CleanOptions | None = None, skip_bad: bool = False,
          overwrite: bool = False) -> Report:
    """清洗 inputs 的每条记录，通过过滤的写进 out。返回报告（保留、各种原因丢弃的条数）。"""
    options = options or CleanOptions()
    options.check()
    paths = check_inputs(inputs)
    report = Report("clean")
    modified = 0
    with RecordWriter(out, paths, overwrite) as writer:
        for _, location, record in iter_inputs_with_progress(paths, "清洗 / cleaning", options.field,
                                                             skip_bad, report):
            slots = find_text_slots(record, options.field, location, skip_bad, report)
            if slots is None:
                continue
            changed, emptied = _normalize_slots(slots, options)
            modified += changed
            if emptied and len(slots) > 1:  # 对话里一条消息空了，这段对话就不再合格
                reason = "有一条消息清洗后成了空的 / a message became empty after cleaning"
            else:
                reason = filter_reason(slots_text(slots), options)
            if reason is None:
                writer.write(record, location)
                report.keep()
            else:
                report.drop(reason, location)
    report.details["modified"] = modified
    report.note(f"规整时改动了 / normalisation changed: {modified:,} 条 / records")
    return report


# ---------------------------------------------------------------------------
# 记录里的正文在哪
# ---------------------------------------------------------------------------

@dataclass
class TextSlot:
    """记录里一段正文的位置：container[key] 是字符串；name 是给人看的字段名，如 messages[2].content。"""

    container: dict
    key: str
    name: str

    @property
    def text(self) -> str:
        return self.container[self.key]

    @text.setter
    def text(self, value: str) -> None:
        self.container[self.key] = value


def text_slots(record: dict, field: str = "text") -> list[TextSlot]:
    """找出一条记录里所有的正文（规则见模块说明第三条）。找不到时返回空列表。"""
    if isinstance(record.get(field), str):
        return [TextSlot(record, field, field)]
    slots = []
    for key, value in record.items():
        if key in STRING_TEXT_KEYS and isinstance(value, str):
            slots.append(TextSlot(record, key, key))
        elif key in MESSAGE_LIST_KEYS and isinstance(value, list):
            for index, message in enumerate(value):
                if not isinstance(message, dict):
                    continue
                for text_key in MESSAGE_TEXT_KEYS:
                    if isinstance(message.get(text_key), str):
                        slots.append(TextSlot(message, text_key, f"{key}[{index}].{text_key}"))
    return slots


def find_text_slots(record: dict, field: str, location: str, skip_bad: bool,
                    report: Report) -> list[TextSlot] | None:
    """text_slots，找不到正文时按坏记录处理：报错，或（--skip-bad）记进报告并返回 None。"""
    slots = text_slots(record, field)
    if slots:
        return slots
    keys = ", ".join(repr(key) for key in list(record)[:10]) or "（无 / none）"
    reason = (f"没有字段 {field!r}，也不是对话 / 偏好格式，找不到要处理的文本；这条记录的字段：{keys}"
              f"（可用 --field 指定）/ no field {field!r} and not a dialogue/preference record; fields: {keys}")
    if not skip_bad:
        raise TowerGPTError(f"{location}: {reason}")
    report.bad_record(location, reason)
    return None


def slots_text(slots: list[TextSlot]) -> str:
    """一条记录的全部正文连成一段（过滤、去重都按它算）。"""
    return slots[0].text if len(slots) == 1 else "\n".join(slot.text for slot in slots)


# ---------------------------------------------------------------------------
# 规整
# ---------------------------------------------------------------------------

def normalize_text(text: str, nfkc: bool = False, keep_whitespace: bool = False,
                   join_cjk_spaces: bool = False) -> str:
    """按模块说明第一条规整一段文本。英文单词之间的空格保留（只是多个合成一个）。"""
    if nfkc:
        text = unicodedata.normalize("NFKC", text)
    text = _LINE_BREAKS.sub("\n", text)
    text = _INVISIBLE.sub("", text)
    if not keep_whitespace:
        text = _HORIZONTAL_SPACE.sub(" ", text)
        text = _SPACE_AROUND_NEWLINE.sub("\n", text)
        text = _MANY_NEWLINES.sub("\n\n", text)
        text = text.strip()
    if join_cjk_spaces:
        text = _SPACE_BETWEEN_CJK.sub("", text)
    return text


def _normalize_slots(slots: list[TextSlot], options: CleanOptions) -> tuple[bool, bool]:
    """就地规整每一段正文；返回 (有没有改动, 有没有哪段原本有字、规整后成了空的)。"""
    changed = emptied = False
    for slot in slots:
        before = slot.text
        after = normalize_text(before, options.nfkc, options.keep_whitespace, options.join_cjk_spaces)
        if after != before:
            changed = True
            slot.text = after
            emptied = emptied or (before.strip() != "" and after.strip() == "")
    return changed, emptied


# ---------------------------------------------------------------------------
# 过滤
# ---------------------------------------------------------------------------

def filter_reason(text: str, options: CleanOptions) -> str | None:
    """这段文本该丢掉吗？该丢就返回原因（中文 / English），留下返回 None。"""
    length = len(text)
    if length == 0 and options.min_chars > 0:
        return "空文本 / empty"
    if length < options.min_chars:
        return f"太短 / too short (< {options.min_chars} chars)"
    if options.max_chars is not None and length > options.max_chars:
        return f"太长 / too long (> {options.max_chars} chars)"
    if options.min_ratio is None and options.max_symbol_ratio is None:
        return None
    counts = count_classes(text)
    visible = counts["visible"]   # 比例的分母：非空白字符
    if options.min_ratio is not None:
        ratio = counts[options.char_class] / visible if visible else 0.0
        if ratio < options.min_ratio:
            return f"{options.char_class} 字符比例太低 / too few {options.char_class} characters (< {options.min_ratio})"
    if options.max_symbol_ratio is not None and visible:
        if counts["symbol"] / visible > options.max_symbol_ratio:
            return f"符号太多 / too many symbols (> {options.max_symbol_ratio})"
    return None


def count_classes(text: str) -> dict[str, int]:
    """数一段文本里各类字符各有几个；visible 是非空白字符的个数（比例的分母）。

    做法：文本 -> 码位数组（numpy），在一张“码位 -> 类别位”的查找表里一次查出每个字符的类别，
    再数每一位有多少个 1。逐字调用 unicodedata.category 的 Python 循环要慢几十倍。
    """
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    flags = char_table()[codes]
    counts = {name: int(np.count_nonzero(flags & flag)) for name, flag in CHAR_CLASSES.items()}
    counts["visible"] = len(codes) - int(np.count_nonzero(flags & SPACE))
    counts["symbol"] = int(np.count_nonzero(flags & SYMBOL))
    return counts


@functools.lru_cache(maxsize=None)
def char_table():
    """全部 0x110000 个 Unicode 码位的类别表（numpy uint8 数组，1.1 MB），第一次用时建好（约 0.5 秒）。

    SYMBOL（“非文本符号”）是 Unicode 类别 S*（数学符号 Sm、货币 Sc、修饰符号 Sk、其他符号 So：表情、框线、★■、
    替换字符 U+FFFD），以及 Co（私用区）、Cn（未分配）、Cs（代理项）。LETTER 是类别 L*（汉字也是字母），
    DIGIT 是 Nd（十进制数字），SPACE 是 str.isspace() 为真的字符。
    """
    table = np.zeros(0x110000, dtype=np.uint8)
    for ranges, flag in ((HAN_RANGES, HAN | CJK), (CJK_PUNCTUATION_RANGES, CJK), (CJK_OTHER_RANGES, CJK),
                         (LATIN_RANGES, LATIN)):
        for low, high in ranges:
            table[low:high + 1] |= flag
    by_category = {"Nd": DIGIT, "Co": SYMBOL, "Cn": SYMBOL, "Cs": SYMBOL}
    from_category = bytearray(0x110000)   # 先填进 bytearray（逐项赋值比 numpy 数组快得多），最后一次并入
    for code in range(0x110000):
        char = chr(code)
        category = unicodedata.category(char)
        flag = LETTER if category[0] == "L" else SYMBOL if category[0] == "S" else by_category.get(category, 0)
        if char.isspace():
            flag |= SPACE
        from_category[code] = flag
    table |= np.frombuffer(bytes(from_category), dtype=np.uint8)
    return table
