"""eval、plot、export、import、serve、lora merge 和五个数据工具的参数（只用标准库）。

取值范围和默认值（例如 plot 的指标名、dedup 的阈值）写在这里而不是从实现模块 import：
import 实现模块就要加载 torch、matplotlib……`towergpt --help` 会慢上好几秒。
测试 tests/test_cli.py 核对这里的默认值与实现模块里的常量一致，二者不会悄悄分叉。
"""

from __future__ import annotations

import argparse
import os

API_KEY_ENV = "TOWERGPT_API_KEY"
EXPORT_DTYPES = ("float32", "bfloat16", "float16", "f32", "f16", "q8_0")
# 每种导出格式是一个独立的模块（hf/、llamacpp/），这里只负责把 --format 分派过去
EXPORT_FORMATS = {
    "hf": "towergpt.hf.export:main",
    "gguf": "towergpt.llamacpp.export_gguf:main",
    "ollama": "towergpt.llamacpp.ollama:main",
}
PLOT_METRICS = ("val_bpc", "val_loss", "loss", "reward")
PLOT_X_AXES = ("tokens", "step")
CLEAN_CHAR_CLASSES = ("cjk", "digit", "han", "latin", "letter")
CONVERT_MAX_CHARS = 2000
SHUFFLE_MEMORY_MB = 256
DEDUP_THRESHOLD, DEDUP_NUM_PERM, DEDUP_NGRAM = 0.8, 128, 5


def add_tool_commands(commands) -> None:
    """towergpt eval / plot / export / import / serve / lora merge。"""
    _eval(commands.add_parser("eval", help="评估损失、困惑度、每字符比特或情感任务 / evaluate a checkpoint"))
    _plot(commands.add_parser("plot", help="画训练曲线 / plot training curves"))
    _export(commands.add_parser("export", help="导出为 Hugging Face 格式 / export to the Hugging Face format"))
    _import(commands.add_parser("import", help="从 Hugging Face Llama 检查点导入 / import a Llama-shaped HF checkpoint"))
    _serve(commands.add_parser("serve", help="OpenAI 兼容的 HTTP 服务和网页聊天 / OpenAI-compatible server + web chat"))
    lora = commands.add_parser("lora", help="LoRA 工具 / LoRA tools")
    lora_commands = lora.add_subparsers(dest="lora_command", metavar="ACTION")
    lora_commands.required = True
    _lora_merge(lora_commands.add_parser("merge", help="把 LoRA 运行合并成普通检查点 / merge a LoRA run"))


def add_data_tools(data_commands) -> None:
    """towergpt data convert / merge / shuffle / clean / dedup：每个工具一个模块 towergpt.data.<名字>。"""
    _convert(data_commands.add_parser("convert", help="格式转换：json↔jsonl、txt/parquet→jsonl、字段改名 / convert formats"))
    _merge(data_commands.add_parser("merge", help="合并多个语料文件 / merge corpus files"))
    _shuffle(data_commands.add_parser("shuffle", help="打乱记录（可大于内存）/ shuffle records, larger than memory"))
    _clean(data_commands.add_parser("clean", help="按长度、字符比例过滤并规整空白 / filter and normalise"))
    _dedup(data_commands.add_parser("dedup", help="去重：完全相同 + MinHash 近似重复 / exact and near-duplicate removal"))


# ---------------------------------------------------------------------------
# eval / plot / export / import / serve
# ---------------------------------------------------------------------------

def _eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    parser.add_argument("--data", nargs="+", default=None, metavar="DIR|FILE",
                        help="`data prepare` 写出的目录，或 .txt .jsonl .json .parquet 文件（可多个）；"
                             "--task sentiment 时是评论文件（默认内置语料的留出评论）")
    parser.add_argument("--task", default="lm", choices=["lm", "sentiment"],
                        help="lm：损失/困惑度/bpc（默认）；sentiment：quickstart 的情感任务")
    parser.add_argument("--split", default=None, choices=["train", "val"],
                        help="数据目录用哪个划分，默认 val / split of a prepared dir (default val)")
    parser.add_argument("--field", default="text", help="JSON / Parquet 记录里的文本字段，默认 text")
    parser.add_argument("--max-tokens", type=int, default=None, help="最多评估多少个 token / at most N tokens")
    parser.add_argument("--stride", type=int, default=None,
                        help="相邻窗口的起点间隔，默认 max_seq_len（不重叠）；更小 = 滑动窗口，更准更慢")
    parser.add_argument("--batch-size", type=int, default=8, help="每批几个窗口 / windows per batch")
    parser.add_argument("--device", default="auto", help="cpu / cuda / mps / auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"],
                        help="前向计算的精度，默认 float32（结果最可复现）")
    parser.add_argument("--out", default=None, help="把 JSON 结果另存到这个文件 / also write the JSON here")
    parser.set_defaults(handler="towergpt.evaluate:main")


def _plot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="运行目录（或其中的 metrics.jsonl），可多个")
    parser.add_argument("--out", required=True, help="输出图片（.png / .svg / .pdf）/ output image")
    parser.add_argument("--metric", default="val_bpc", choices=PLOT_METRICS,
                        help="val_bpc（默认，可跨分词器比较）、val_loss、loss（训练 + 验证损失），或 reward（GRPO 的奖励）")
    parser.add_argument("--x", default="tokens", choices=PLOT_X_AXES, help="横轴：tokens（默认）或 step")
    parser.add_argument("--labels", nargs="+", default=None, help="图例名，与 RUN 一一对应；默认用目录名")
    parser.add_argument("--title", default=None, help="图的标题 / figure title")
    parser.set_defaults(handler="towergpt.plot:main")


def _export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    parser.add_argument("--format", default="hf", choices=list(EXPORT_FORMATS),
                        help="hf：Hugging Face 目录（默认）；gguf：一个 llama.cpp 的 .gguf 文件；"
                             "ollama：目录，含 model.gguf 和 Modelfile / export format")
    parser.add_argument("--out", required=True, help="输出目录（gguf 是文件名）/ output directory (a file for gguf)")
    parser.add_argument("--dtype", default=None, choices=EXPORT_DTYPES,
                        help="权重精度。hf：float32（默认）/ bfloat16 / float16；gguf：f32（默认）/ f16 / q8_0；"
                             "ollama：f16（默认）/ f32 / q8_0 / weight dtype")
    parser.add_argument("--overwrite", action="store_true", help="替换已有的输出 / replace an existing --out")
    parser.set_defaults(handler="towergpt.cli.tools:export_main")


def export_main(args: argparse.Namespace) -> None:
    """towergpt export：按 --format 调用对应模块的 main（用到时才 import：gguf 包是可选依赖，缺了给一行安装提示）。"""
    from towergpt.cli import resolve_handler

    resolve_handler(EXPORT_FORMATS[args.format])(args)


def _import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-hf", required=True, dest="from_hf", help="HF 模型目录 / Hugging Face model dir")
    parser.add_argument("--out", required=True, help="要创建的运行目录 / run directory to create")
    parser.add_argument("--max-seq-len", type=int, default=None,
                        help="上下文长度，默认取 config.json 的 max_position_embeddings / context length")
    parser.add_argument("--overwrite", action="store_true", help="替换已有的非空运行目录 / replace a non-empty --out")
    parser.set_defaults(handler="towergpt.hf.import_hf:main")


def _serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="运行目录或检查点目录 / run or checkpoint dir")
    parser.add_argument("--host", default="127.0.0.1",
                        help="监听地址，默认只有本机能访问；0.0.0.0 = 所有网卡（请同时设 --api-key）/ bind address")
    parser.add_argument("--port", type=int, default=8000, help="端口 / port (default 8000)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"要求请求带 Authorization: Bearer <密钥>；默认取环境变量 {API_KEY_ENV} / "
                             f"require this bearer token (default: ${API_KEY_ENV})")
    parser.add_argument("--model-name", default=None,
                        help="API 里的模型名，默认取检查点所在运行目录的名字 / model id in the API")
    parser.add_argument("--device", default="auto", help="cpu / cuda / mps / auto")
    parser.add_argument("--compile", action="store_true",
                        help="用 torch.compile 加速逐 token 生成（启动后第一个请求要等编译，约半分钟）"
                             " / compile the model for decoding")
    parser.add_argument("--max-active", type=int, default=8,
                        help="同时生成的序列数（轮流各生成 1 个 token）/ sequences generated concurrently")
    parser.add_argument("--max-waiting", type=int, default=32,
                        help="槽位满时最多排队的请求数，再多回 503 / queued requests before 503")
    parser.add_argument("--max-tokens", type=int, default=1024,
                        help="单个请求 max_tokens 的上限 / upper bound of a request's max_tokens")
    parser.add_argument("--max-body-bytes", type=int, default=1_000_000,
                        help="请求体上限（字节），超过回 413 / request body limit in bytes")
    parser.set_defaults(handler="towergpt.server.launch:main")


def _lora_merge(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="LoRA 运行目录或它的检查点目录 / LoRA run or checkpoint dir")
    parser.add_argument("--out", required=True, help="输出的检查点目录 / output checkpoint directory")
    parser.add_argument("--overwrite", action="store_true", help="替换已有的非空输出目录 / replace a non-empty --out")
    parser.set_defaults(handler="towergpt.lora.merge:main")


# ---------------------------------------------------------------------------
# 数据工具
# ---------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser, tool: str, multiple_inputs: bool = True) -> None:
    """每个数据工具都有的参数：--input、--out、--overwrite、--skip-bad；实现是 towergpt.data.<tool>:main。"""
    if multiple_inputs:
        parser.add_argument("--input", nargs="+", required=True,
                            help="输入文件（.jsonl .json .parquet .txt），可以多个 / input files")
    else:
        parser.add_argument("--input", required=True, help="输入文件（.jsonl .json .parquet .txt）/ input file")
    parser.add_argument("--out", required=True, help="输出文件（.jsonl，或 .json 数组）/ output file")
    parser.add_argument("--overwrite", action="store_true", help="替换已存在的输出文件 / replace an existing output")
    parser.add_argument("--skip-bad", action="store_true",
                        help="跳过坏记录（计入报告）而不是报错停下 / skip bad records instead of stopping")
    parser.set_defaults(handler=f"towergpt.data.{tool}:main")


def _txt_field(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--field", default="text",
                        help="txt 输入时，文本写进哪个字段，默认 text / field that receives txt text")


def _convert(parser: argparse.ArgumentParser) -> None:
    _common(parser, "convert", multiple_inputs=False)
    parser.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                        help="把字段 OLD 改名为 NEW，可重复 / rename a field, repeatable")
    _txt_field(parser)
    parser.add_argument("--max-chars", type=int, default=CONVERT_MAX_CHARS,
                        help=f"txt 输入时每条记录最多多少字，默认 {CONVERT_MAX_CHARS} / max characters per txt chunk")


def _merge(parser: argparse.ArgumentParser) -> None:
    _common(parser, "merge")
    parser.add_argument("--source-field", default=None,
                        help="在每条记录里加这个字段，值是来源文件名 / add a field naming the source file")
    _txt_field(parser)


def _shuffle(parser: argparse.ArgumentParser) -> None:
    _common(parser, "shuffle")
    parser.add_argument("--seed", type=int, default=0, help="随机种子，相同的种子给出相同的顺序 / random seed")
    parser.add_argument("--memory-mb", type=float, default=SHUFFLE_MEMORY_MB,
                        help=f"打乱时最多用多少 MB 内存放一个桶，默认 {SHUFFLE_MEMORY_MB} / memory budget per bucket")
    parser.add_argument("--tmp-dir", default=None, help="临时桶文件放在哪里，默认输出文件所在的目录 / temp dir")
    _txt_field(parser)


def _clean(parser: argparse.ArgumentParser) -> None:
    _common(parser, "clean")
    parser.add_argument("--field", default="text",
                        help="要清洗的文本字段，默认 text；没有它的记录按对话 / 偏好格式处理 / text field")
    parser.add_argument("--min-chars", type=int, default=1, help="清洗后至少多少字，默认 1（只丢空记录）")
    parser.add_argument("--max-chars", type=int, default=None, help="清洗后最多多少字 / max characters")
    parser.add_argument("--min-ratio", type=float, default=None,
                        help="--char-class 类字符至少占非空白字符的比例，例如 0.5 / min ratio of a character class")
    parser.add_argument("--char-class", default="cjk", choices=CLEAN_CHAR_CLASSES,
                        help="--min-ratio 数哪一类字符，默认 cjk（汉字 + 中文标点 + 假名 + 韩文）")
    parser.add_argument("--max-symbol-ratio", type=float, default=None,
                        help="非文本符号（表情、框线、乱码 ……）最多占的比例 / max ratio of symbols")
    parser.add_argument("--nfkc", action="store_true",
                        help="做 NFKC 规范化（会把全角标点变半角）/ apply Unicode NFKC")
    parser.add_argument("--keep-whitespace", action="store_true",
                        help="不合并空格、不去行首行尾空白（代码数据）/ keep whitespace as is")
    parser.add_argument("--join-cjk-spaces", action="store_true",
                        help="删掉两个汉字之间的空格（分过词的语料）/ remove spaces between CJK characters")


def _dedup(parser: argparse.ArgumentParser) -> None:
    _common(parser, "dedup")
    parser.add_argument("--field", default="text",
                        help="按哪个字段去重，默认 text；没有它的记录按对话 / 偏好格式的全部正文 / text field")
    parser.add_argument("--threshold", type=float, default=DEDUP_THRESHOLD,
                        help=f"估计的 Jaccard 相似度达到多少算近似重复，默认 {DEDUP_THRESHOLD}")
    parser.add_argument("--num-perm", type=int, default=DEDUP_NUM_PERM,
                        help=f"MinHash 签名的长度（哈希函数个数），默认 {DEDUP_NUM_PERM}")
    parser.add_argument("--ngram", type=int, default=DEDUP_NGRAM, help=f"瓦片的字数，默认 {DEDUP_NGRAM}")
    parser.add_argument("--seed", type=int, default=0, help="MinHash 哈希函数的随机种子 / seed of the hash functions")
    parser.add_argument("--exact-only", action="store_true", help="只去完全相同的 / exact duplicates only")
    parser.add_argument("--pairs", default=None,
                        help="把重复对（被丢的、保留的、种类、相似度）写进这个 JSONL 文件 / write duplicate pairs")
