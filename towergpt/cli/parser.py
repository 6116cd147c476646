"""`towergpt` 的解析器：核心命令的参数在这里，其余命令的在 tools.py（都只用标准库）。

每个子命令用 set_defaults(handler="模块:函数") 记下它的实现；读懂一个命令做什么，去看那个函数即可。
"""

from __future__ import annotations

import argparse

from towergpt.cli import insight, tools


# ---------------------------------------------------------------------------
# 参数定义
# ---------------------------------------------------------------------------

def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """generate / chat / serve 共用的采样参数。"""
    parser.add_argument("--max-new-tokens", type=int, default=200, help="最多生成多少个 token / max new tokens")
    parser.add_argument("--temperature", type=float, default=0.8, help="温度；0 表示贪心解码 / 0 means greedy")
    parser.add_argument("--top-k", type=int, default=None, help="只在概率最高的 k 个 token 里采样")
    parser.add_argument("--top-p", type=float, default=None, help="核采样：累计概率达到 p 为止")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="重复惩罚，>1 抑制重复")
    parser.add_argument("--seed", type=int, default=None, help="随机种子，使采样可复现 / sampling seed")
    parser.add_argument("--device", default="auto", help="cpu / cuda / mps / auto")
    parser.add_argument("--compile", action="store_true",
                        help="用 torch.compile 加速逐 token 生成（首次编译约半分钟）/ compile the model for decoding")


def add_training_args(parser: argparse.ArgumentParser) -> None:
    """pretrain / sft / dpo 共用的参数。"""
    parser.add_argument("--config", required=True, help="YAML 配置文件或预设名（tiny / small / base）")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="覆盖配置中的一项，可重复，例如 --set train.max_steps=100")
    parser.add_argument("--resume", action="store_true", help="从运行目录的最新检查点继续 / resume from latest")
    parser.add_argument("--dry-run", action="store_true",
                        help="只打印内存估计（权重、梯度、优化器、激活、logits、峰值）就退出，不训练"
                             " / print the memory estimate and exit without training")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="towergpt",
        description="TowerGPT：从零训练并读懂一个中文 GPT / train a Chinese GPT from nothing",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    # towergpt tokenizer train ...
    tok = commands.add_parser("tokenizer", help="训练分词器 / train the SentencePiece tokenizer")
    tok_commands = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    tok_commands.required = True
    tok_train = tok_commands.add_parser("train", help="从 txt / jsonl / json 训练 BPE 分词器")
    tok_train.add_argument("--input", nargs="+", required=True, help="语料文件（.txt .jsonl .json .parquet）")
    tok_train.add_argument("--vocab-size", type=int, required=True, help="词表大小，例如 8000")
    tok_train.add_argument("--out", required=True, help="输出目录 / output directory")
    tok_train.add_argument("--field", default="text", help="JSON 记录里文本字段名，默认 text")
    tok_train.add_argument("--max-sentences", type=int, default=2_000_000,
                           help="最多抽样多少行参与训练（限制内存）/ sentences sampled at most")
    tok_train.add_argument("--character-coverage", type=float, default=0.9995,
                           help="字符覆盖率；其余字符走字节回退 / character coverage")
    tok_train.add_argument("--overwrite", action="store_true",
                           help="替换已有的分词器目录（用旧分词器准备的数据要重新 prepare）"
                                " / replace an existing tokenizer (then prepare its data again)")
    tok_train.set_defaults(handler="towergpt.cli.handlers:tokenizer_train")

    # towergpt data prepare --input F... --tokenizer DIR --out DIR [--format pretrain] ...
    data = commands.add_parser("data", help="语料处理 / corpus processing")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    data_commands.required = True
    prep = data_commands.add_parser("prepare", help="把语料分词、存成 token 分片 / tokenise a corpus into shards")
    prep.add_argument("--input", nargs="+", required=True, help="语料文件（.txt .jsonl .json .parquet）")
    prep.add_argument("--tokenizer", required=True, help="分词器目录 / tokenizer directory")
    prep.add_argument("--out", required=True, help="输出目录 / output directory")
    prep.add_argument("--format", default="pretrain", choices=["pretrain", "sft", "dpo"],
                      help="数据种类：pretrain（长文本）、sft（对话）、dpo（偏好对 prompt/chosen/rejected）/ kind of data")
    prep.add_argument("--field", default=None, help="pretrain：JSON / Parquet 记录里文本字段名，默认 text")
    prep.add_argument("--max-seq-len", type=int, default=None,
                      help="sft / dpo：训练的序列长度，默认 1024；每段对话（每条提示+回答）至多 max_seq_len+1 个 token，"
                           "更长的整轮丢弃最早的对话（dpo 再截短回答）/ sft, dpo: training sequence length")
    prep.add_argument("--workers", type=int, default=None, help="分词的线程数（预训练）/ 进程数（对话、偏好数据），默认 CPU 核数；1 = 就在主进程里做 / tokenising workers")
    prep.add_argument("--val-fraction", type=float, default=0.01, help="划入验证集的文档（对话）比例，默认 0.01")
    prep.add_argument("--skip-bad", action="store_true", help="跳过坏记录并记到 skipped.txt / skip bad records")
    prep.add_argument("--shard-tokens", type=int, default=100_000_000, help="每个分片最多多少 token")
    prep.add_argument("--seed", type=int, default=0, help="划分验证集的种子 / seed of the train/val split")
    prep.add_argument("--overwrite", action="store_true", help="替换已有的数据目录 / replace an existing data dir")
    prep.set_defaults(handler="towergpt.cli.handlers:data_prepare")
    # towergpt data convert|merge|shuffle|clean|dedup ...
    tools.add_data_tools(data_commands)

    # towergpt quickstart [--out DIR] [--minutes M]
    quick = commands.add_parser("quickstart", help="一条命令跑通整条流水线（内置语料）/ the whole pipeline")
    quick.add_argument("--out", default="runs/quickstart", help="输出目录 / output directory")
    quick.add_argument("--minutes", type=float, default=8.0, help="预训练的分钟数 / minutes of pretraining")
    quick.add_argument("--sft-minutes", type=float, default=3.0, help="对话微调的分钟数 / minutes of SFT")
    quick.add_argument("--rl-minutes", type=float, default=0.0,
                       help="再做几分钟强化学习（GRPO，奖励 = 答对情感；0 = 不做）/ minutes of GRPO after SFT (0 = skip)")
    quick.add_argument("--device", default="auto", help="cpu / cuda / mps / auto")
    quick.set_defaults(handler="towergpt.cli.handlers:quickstart")

    # towergpt pretrain --config FILE [--set k=v ...] [--resume]
    pre = commands.add_parser("pretrain", help="在长文本上预训练 / pretrain on long text")
    add_training_args(pre)
    pre.set_defaults(handler="towergpt.cli.handlers:pretrain")

    # towergpt sft --config FILE [--set k=v ...] [--resume]
    sft = commands.add_parser("sft", help="对话微调（只在助手的话上算损失）/ dialogue fine-tuning")
    add_training_args(sft)
    sft.set_defaults(handler="towergpt.cli.handlers:sft")

    # towergpt dpo --config FILE [--set k=v ...] [--resume]
    dpo = commands.add_parser("dpo", help="偏好微调（DPO）/ preference tuning")
    add_training_args(dpo)
    dpo.set_defaults(handler="towergpt.cli.handlers:dpo")

    # towergpt grpo --config FILE [--set k=v ...] [--resume]
    grpo = commands.add_parser("grpo", help="强化学习（GRPO，程序判分的奖励）/ RL with checkable rewards")
    add_training_args(grpo)
    grpo.set_defaults(handler="towergpt.cli.handlers:grpo")

    # towergpt eval / plot / export / import / serve
    tools.add_tool_commands(commands)
    # towergpt inspect / doctor
    insight.add_insight_commands(commands)

    # towergpt generate ...
    gen = commands.add_parser("generate", help="用检查点续写文本 / continue a prompt")
    gen.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    gen.add_argument("--prompt", required=True, help="开头文本 / prompt text")
    add_sampling_args(gen)
    gen.add_argument("--no-repeat-ngram", type=int, default=0, metavar="N",
                     help="禁止任何连续 N 个 token 重复出现（0 = 不用；3 能止住“张家、张家、…”这样的打转）/ "
                          "never repeat an N-gram")
    gen.add_argument("--prompt-lookup", type=int, default=0, metavar="K",
                     help="贪心解码（--temperature 0）时从上下文里抄 K 个 token 当草稿、一次前向核对（结果不变，"
                          "续写会重复上下文的文字时更快；0 = 不用）/ prompt-lookup speculative decoding with K drafts")
    gen.set_defaults(handler="towergpt.generate:generate_cli")

    # towergpt chat ...
    chat = commands.add_parser("chat", help="多轮对话（流式）/ multi-turn streaming chat")
    chat.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    chat.add_argument("--system", default=None, help="系统提示词 / system prompt")
    chat.add_argument("--message", default=None, help="只问一句，答案打印到标准输出 / one exchange, then exit")
    add_sampling_args(chat)
    chat.set_defaults(handler="towergpt.chat:chat_cli", temperature=0.7, top_p=0.9, repetition_penalty=1.1)

    return parser
