"""可选的快速 JSON 解析（orjson）：它拿得准的行才用它，其余交给 json / Optional fast JSON with orjson.

为什么要它？`json.loads` 要先把一行字节解码成 str，再在 Python 的解析器里走一遍；
orjson（Rust 写的，wheel 约 130 KB，装好约 0.4 MB，没有别的依赖）直接解析 UTF-8 字节，
一次扫描同时完成 UTF-8 检查和 JSON 解析，实测读 JSONL 快一倍左右。它是可选依赖：没装时一切照旧，只是慢一点。

唯一的规则：**orjson 说“好”才用它的结果；它说“不”，这一行原样交给以前的慢路径**
（逐行严格解码、`json.loads`），于是报错的文字、位置（文件、行号、列号、字段）和 --skip-bad 的行为
与以前逐字相同。orjson 拒绝的东西比 json 多，这正合适，它们全都走慢路径：
    - 孤立代理项转义 "\\ud800"：json 收下，再由 TextField 查出来、报出字段（见 records.py）。
      orjson 的文档写明它对 UTF-8 是严格的，一律拒绝（tests/test_prepare_speed_path.py 也核对了），
      所以凡是 orjson 收下的记录里一定没有孤立代理项，快路径上不必再查；
    - 不是合法 UTF-8 的字节：慢路径的逐行解码会说出是第几个字节；
    - NaN、Infinity、超出 double 范围的数字、行首的 BOM、记录后面多余的内容……

两边都收下时结果一样吗？字符串、键、null、true/false 逐个相同（重复的键都取最后一个）；差别只有两处：
    1. 超过 64 位的整数：orjson 给 float，json 给 int。所以只在预训练的文本字段读取（TextField）里用它：
       它只看“是不是对象、有没有这个字段、值是不是字符串”，数字是 int 还是 float 都报“值是 number”。
       对话、偏好数据要用整条记录，仍然只用 json。（超过 4300 位、json 会拒绝的整数一定超出 double，
       orjson 也拒绝。）
    2. 嵌套深度：orjson 最多 1024 层，json 在约 990 层时（取决于 Python 的递归上限和当时的调用深度）
       报“嵌套太深”。只有一层的对象（最常见的 {"text": ...}）一眼就能看出来；其余的，一行里 [ 和 {
       加起来不到 NESTING_GUARD 个就不可能嵌套那么深，超过的（不管括号在不在字符串里）交给 json，由它说了算。
"""

from __future__ import annotations

try:
    import orjson
except ImportError:   # 可选依赖：pip install orjson（或 pip install -e ".[fast]"）
    orjson = None

# orjson 是否可用。测试里可以把它设成 False，检查慢路径与快路径写出的结果相同。
AVAILABLE = orjson is not None

# 一行里 "[" 与 "{" 的总数达到这么多，就不用 orjson 的结果（见模块说明第 2 条）。
# 正常的语料一行只有个位数的括号；远低于 json 的深度上限（约 990），又远高于正常记录。
NESTING_GUARD = 500

# “orjson 拿不准，请走慢路径”。不能用 None 表示：一行 `null` 解析出来就是 None（一条坏记录，但要由取值步骤来说）。
UNSURE = object()


def parse_line(raw: bytes):
    """用 orjson 解析一行原始字节（可以带着行尾的 \\n / \\r\\n）；拿不准时返回 UNSURE。"""
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return UNSURE
    # 深度：最常见的记录 {"text": "...", "id": 3} 只有一层，一眼看完；里面还有数组、对象的，才去数括号
    if isinstance(record, dict) and not any(isinstance(value, (dict, list)) for value in record.values()):
        return record
    if raw.count(b"[") + raw.count(b"{") >= NESTING_GUARD:
        return UNSURE
    return record
