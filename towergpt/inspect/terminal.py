"""在终端里读检视结果（report.py 的 dict）：三张表。

1. token 表：每个 token 一行——它是什么、模型在这个位置**原本期待**什么（前一个位置的 top-k），
   以及真正出现的它得到了多少概率、惊讶度几比特、排第几。读者一眼看出模型哪里有把握、哪里迷路。
2. 注意力摘要：T×T 的矩阵在终端里没法看，于是给每层每个头归个类——它的每一行（每个查询位置）
   最关注的是自己、前一个 token，还是开头的 <s>（许多头把 <s> 当“没事可看时的停靠点”，叫 attention sink）；
   再列出最后一个 token 最关注的几个 token。完整矩阵看网页或 --json。
3. logit lens：最后几个位置上，每一层“如果就此停下”会选哪个 token；看答案在第几层成形。
"""

from __future__ import annotations

import unicodedata

LENS_POSITIONS = 8      # logit lens 表只显示最后几个位置（终端放不下更多列）
ATTENDED_SHOWN = 3      # 最后一个 token 最关注的几个 token


def width(text: str) -> int:
    """终端里占几列：中文等全角字符占 2 列。"""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def pad(text: str, columns: int) -> str:
    return text + " " * max(columns - width(text), 0)


def clip(text: str, columns: int) -> str:
    """截到最多 columns 列（超出的用 … 表示）。"""
    if width(text) <= columns:
        return text
    while width(text) > columns - 1:
        text = text[:-1]
    return text + "…"


def shown(token: dict | None) -> str:
    """给人看的 token：换行、制表符写成转义，空格写成 ␠，免得表格错位。"""
    if token is None:
        return "—"
    text = token["text"]
    if token.get("kind") == "byte" and token["piece"] == "<0x0A>":
        text = "\\n"
    return text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␠") or "∅"


def render(report: dict, layer: int | None = None) -> str:
    """整份终端视图；layer（1 起）只摘要那一层的注意力。"""
    return "\n".join([_header(report), "", *_token_table(report), "", *_attention_summary(report, layer), "",
                      *_lens_table(report)])


def _header(report: dict) -> str:
    model = report["model"]
    gqa = f"，{model['n_kv_head']} 组键值（GQA）" if model["n_kv_head"] != model["n_head"] else ""
    return (f"模型 / model: {model['n_layer']} 层 × {model['n_head']} 头{gqa}，词表 {model['vocab_size']}；"
            f"{len(report['tokens'])} 个 token（{'对话模板' if report['mode'] == 'chat' else '文本'}）")


def _token_table(report: dict) -> list[str]:
    tokens, predictions = report["tokens"], report["predictions"]
    lines = ["1. token 与下一词预测 / tokens and next-token predictions",
             "   p = 模型给这个 token 的概率，bit = 惊讶度 -log₂p，# = 第几个 token，排名 = 它在模型的候选里排第几",
             f"   {pad('#', 4)}{pad('token', 12)}{pad('id', 7)}{pad('p', 10)}{pad('bit', 7)}{pad('排名', 6)}此处模型原本期待"]
    for token, before in zip(tokens, [None] + predictions[:-1]):
        mark = "·" if token.get("template") else " "
        if before is None:
            numbers = pad("", 30)
        else:
            got = before["next"]
            numbers = pad(f"{got['prob']:.4f}", 10) + pad(f"{got['surprisal_bits']:.2f}", 7) + pad(str(got["rank"]), 6)
        expected = "" if before is None else _candidate_list(before["top"])
        lines.append(f"  {mark}{pad(str(token['index']), 4)}{pad(shown(token), 12)}{pad(str(token['id']), 7)}"
                     f"{numbers}{expected}")
    lines.append(f"   接下来 / next: {_candidate_list(predictions[-1]['top'])}")
    if report["mode"] == "chat":
        lines.append("   · = 模板 token（对话模板加的，不是谁说的话）/ template token")
    total = sum(p["next"]["surprisal_bits"] for p in predictions if p["next"])
    lines.append(f"   整段的惊讶度合计 {total:.1f} bit，平均每个 token {total / max(len(predictions) - 1, 1):.2f} bit")
    return lines


def _candidate_list(top: list[dict]) -> str:
    return "  ".join(f"{shown(c)} {c['prob']:.3f}" for c in top)


def _attention_summary(report: dict, only_layer: int | None) -> list[str]:
    attention, tokens = report["attention"], report["tokens"]
    lines = ["2. 注意力（每个头最常看哪里；最后一个 token 最关注谁）/ attention, summarised"]
    for layer, heads in enumerate(attention["weights"], start=1):
        if only_layer is not None and layer != only_layer:
            continue
        for head, matrix in enumerate(heads):
            lines.append(f"   第 {layer} 层 头 {head}（键值组 {attention['head_group'][head]}）：{_head_habit(matrix)}；"
                         f"最后一个 token 看 {_most_attended(matrix[-1], tokens)}")
    return lines


def _head_habit(matrix: list[list[float]]) -> str:
    """数一数：每个查询位置（从第 2 个起）权重最大的键是自己、前一个、开头 <s>，还是别处。"""
    counts = {"前一个": 0, "自己": 0, "开头": 0, "别处": 0}
    for query, row in enumerate(matrix[1:], start=1):
        key = max(range(query + 1), key=row.__getitem__)
        counts["自己" if key == query else "前一个" if key == query - 1 else "开头" if key == 0 else "别处"] += 1
    total = max(sum(counts.values()), 1)
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return "，".join(f"{name} {count / total:.0%}" for name, count in ranked if count)


def _most_attended(row: list[float], tokens: list[dict]) -> str:
    best = sorted(range(len(row)), key=lambda j: -row[j])[:ATTENDED_SHOWN]
    return " ".join(f"「{shown(tokens[j])}」{row[j]:.2f}" for j in best)


def _lens_table(report: dict) -> list[str]:
    tokens, lens = report["tokens"], report["logit_lens"]
    positions = list(range(len(tokens)))[-LENS_POSITIONS:]
    cell = 13
    lines = ["3. logit lens（每一层如果就此停下，会在这个位置之后预测什么；最后一行就是模型的输出）/ logit lens",
             "   " + pad("", 11) + "".join(pad(clip(shown(tokens[p]), cell - 3) + "→", cell) for p in positions)]
    for entry in lens:
        cells = "".join(pad(f"{clip(shown(entry['top'][p][0]), cell - 7)} {entry['top'][p][0]['prob']:.2f}", cell)
                        for p in positions)
        lines.append("   " + pad(entry["name"], 11) + cells)
    return lines
