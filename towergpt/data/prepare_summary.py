"""prepare 结束时打印的摘要：几行中英文，让人一眼看出数据写了多少、丢了多少、为什么 / The summary.

三种数据各有各的数字（预训练数文档和字符，对话数对话和助手 token，偏好数据数对），
但结尾两行共用：跳过的坏记录在哪里（skipped.txt），用了多久、多快。
摘要里的数字全部来自 meta.json（外加用时），所以打印的和存下的永远一致。
"""

from __future__ import annotations

from pathlib import Path

from towergpt.data.data_format import SKIPPED_FILE


def format_summary(summary: dict) -> str:
    """把摘要排成几行给人看的中英文（预训练数据和对话数据各有各的数字）。"""
    describe = {"sft": _sft_summary_lines, "dpo": _dpo_summary_lines}.get(summary.get("kind"), _pretrain_summary_lines)
    lines = describe(summary)
    if summary["skipped_records"]:
        lines.append(f"  跳过的坏记录 / skipped bad records: {summary['skipped_records']:,}"
                     f"（清单见 / listed in {Path(summary['out_dir']) / SKIPPED_FILE}）")
    if "elapsed_s" in summary:
        lines.append(f"  用时 / time:        {summary['elapsed_s']:.1f} s，{summary['mb_per_s']:.1f} MB/s"
                     f"（{summary['workers']} 个{_workers_noun(summary)}）")
    return "\n".join(lines)


def _workers_noun(summary: dict) -> str:
    """预训练用线程分词，对话和偏好数据用进程（见 data/pipeline.py）。"""
    if summary.get("kind") in ("sft", "dpo"):
        return "分词进程 / tokenizer processes"
    return "分词线程 / tokenizer threads"


def _pretrain_summary_lines(summary: dict) -> list[str]:
    train, val = summary["train"], summary["val"]
    documents = train["documents"] + val["documents"]
    tokens = train["tokens"] + val["tokens"]
    characters = train["characters"] + val["characters"]
    per_char = tokens / characters if characters else 0.0
    lines = [
        f"数据已写好 / data written: {summary['out_dir']}",
        f"  文档 / documents:   {documents:,}（训练 train {train['documents']:,} / 验证 val {val['documents']:,}）",
        f"  token:              {tokens:,}（训练 train {train['tokens']:,} / 验证 val {val['tokens']:,}；含 bos/eos）",
        f"  字符 / characters:  {characters:,}（每字符 {per_char:.3f} 个 token / tokens per character）",
        f"  分片 / shards:      训练 train {len(train['shards'])} 个，验证 val {len(val['shards'])} 个，{summary['dtype']}",
    ]
    if summary["empty_documents"]:
        lines.append(f"  空文档（未写入）/ empty documents (not written): {summary['empty_documents']:,}")
    return lines


def _sft_summary_lines(summary: dict) -> list[str]:
    train, val = summary["train"], summary["val"]
    conversations = train["conversations"] + val["conversations"]
    tokens = train["tokens"] + val["tokens"]
    assistant = train["assistant_tokens"] + val["assistant_tokens"]
    share = assistant / tokens if tokens else 0.0
    formats = "，".join(f"{name} {count:,}" for name, count in summary["formats"].items()) or "-"
    lines = [
        f"对话数据已写好 / dialogue data written: {summary['out_dir']}",
        f"  对话 / conversations: {conversations:,}（训练 train {train['conversations']:,}"
        f" / 验证 val {val['conversations']:,}）",
        f"  token:              {tokens:,}，其中算损失的助手 token / assistant (loss) tokens {assistant:,}"
        f"（{share:.1%}）",
        f"  格式 / formats:     {formats}",
        f"  每段至多 / at most: max_seq_len + 1 = {summary['max_seq_len'] + 1} 个 token",
    ]
    if summary["truncated_conversations"]:
        lines.append(f"  截断 / truncated:   {summary['truncated_conversations']:,} 段对话丢掉了最早的"
                     f" {summary['dropped_messages']:,} 条消息（整轮丢弃，system 保留）"
                     f" / conversations lost their oldest messages")
    if summary["too_long_conversations"]:
        lines.append(f"  太长而跳过 / too long, skipped: {summary['too_long_conversations']:,}（连最后一轮都放不下，"
                     f"清单见 / listed in {Path(summary['out_dir']) / SKIPPED_FILE}；可调大 --max-seq-len）")
    return lines


def _dpo_summary_lines(summary: dict) -> list[str]:
    train, val = summary["train"], summary["val"]
    pairs = train["pairs"] + val["pairs"]
    tokens = train["tokens"] + val["tokens"]
    answer = train["assistant_tokens"] + val["assistant_tokens"]
    share = answer / tokens if tokens else 0.0
    lines = [
        f"偏好数据已写好 / preference data written: {summary['out_dir']}",
        f"  偏好对 / pairs:     {pairs:,}（训练 train {train['pairs']:,} / 验证 val {val['pairs']:,}）",
        f"  token:              {tokens:,}（两条序列合计），其中算对数概率的回答 token / answer tokens {answer:,}"
        f"（{share:.1%}）",
        f"  每条至多 / at most: max_seq_len + 1 = {summary['max_seq_len'] + 1} 个 token",
    ]
    if summary["truncated_pairs"]:
        lines.append(f"  截断提示 / prompt cut: {summary['truncated_pairs']:,} 对丢掉了提示里最早的"
                     f" {summary['dropped_messages']:,} 条消息 / pairs lost their oldest prompt messages")
    if summary["truncated_answers"]:
        lines.append(f"  截短回答 / answers cut: {summary['truncated_answers']:,} 对的回答从末尾截短"
                     f" / pairs had their answers shortened")
    if summary["too_long_pairs"]:
        lines.append(f"  太长而跳过 / too long, skipped: {summary['too_long_pairs']:,}（清单见 / listed in "
                     f"{Path(summary['out_dir']) / SKIPPED_FILE}；可调大 --max-seq-len）")
    return lines
