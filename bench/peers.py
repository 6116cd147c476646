"""bench/ 各脚本共用的小工具：造一对“同尺寸、同权重”的模型，记录机器信息，交替计时，写结果。

同权重的做法：先随机初始化一个 TowerGPT 模型，再把它的权重原样拷进 transformers 的
LlamaForCausalLM（两者是同一种结构：RMSNorm、RoPE 前后半配对、GQA、SwiGLU、共享词向量）。
TowerGPT 把 q/k/v 融成了一个 `qkv` 矩阵，拷贝时按行切开即可。

计时的做法：两个实现在同一个进程里**交替**跑若干轮，每轮各计一次，取各自的中位数再相除。
共享机器的负载会起伏，交替测量让两边吃到同样的噪声，比值比绝对秒数可信得多。
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from towergpt.hf import llama_format
from towergpt.model import GPT, GPTConfig


def llama_config(config: GPTConfig):
    """与 TowerGPT 配置同尺寸的 transformers LlamaConfig：字段对应关系与 `towergpt export` 共用（hf/llama_format.py）。"""
    from transformers import LlamaConfig

    # 特殊 token 的编号在 TowerGPT 里是固定的（bos 1、eos 2、pad 3），不必为此载入分词器
    special_ids = SimpleNamespace(bos_id=1, eos_id=2, pad_id=3)
    return LlamaConfig.from_dict(llama_format.llama_config(config.to_dict(), special_ids, "float32"))


def llama_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """把 TowerGPT 的权重改名成 LlamaForCausalLM 的名字（qkv 按行切成 q/k/v），与 `towergpt export` 相同。"""
    return llama_format.to_llama_tensors(model.state_dict(), model.config)


def model_pair(config: GPTConfig, seed: int = 0):
    """(TowerGPT 模型, 同权重的 transformers Llama)，都在 CPU、fp32、训练模式。"""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    ours = GPT(config)
    peer = LlamaForCausalLM(llama_config(config))
    missing, unexpected = peer.load_state_dict(llama_state_dict(ours), strict=False)
    # 共享词向量时 lm_head 与 embed_tokens 是同一个张量，导出的字典里没有 lm_head（报它缺失无妨）；其余必须一一对上
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise RuntimeError(f"权重没对上 / weights do not match: missing={missing} unexpected={unexpected}")
    return ours, peer


def add_shape_args(parser, seq_help: str = "序列长度（也是模型的上下文长度）") -> None:
    """各 bench 脚本共用的模型形状参数；默认是 6 层、384 宽、6 头、词表 8000、序列 256。"""
    parser.add_argument("--preset", default=None, help="用预设（tiny / small / base）的模型形状，词表用 --vocab")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--d-model", type=int, default=384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--seq", type=int, default=256, help=seq_help)


def shape_from_args(args) -> GPTConfig:
    """--preset 给出模型形状（词表用 --vocab，序列用 --seq）；否则用各个单独的尺寸参数。"""
    if args.preset:
        from towergpt.config import load_config

        model = load_config(args.preset, []).model
        return GPTConfig(vocab_size=args.vocab, n_layer=model.n_layer, n_head=model.n_head,
                         n_kv_head=model.n_kv_head, d_model=model.d_model, ffn_hidden=model.ffn_hidden,
                         max_seq_len=args.seq)
    return GPTConfig(vocab_size=args.vocab, n_layer=args.layers, n_head=args.heads, n_kv_head=args.kv_heads,
                     d_model=args.d_model, max_seq_len=args.seq)


def alternate(measure_a, measure_b, rounds: int) -> tuple[list[float], list[float]]:
    """交替调用两个计时函数 rounds 轮（a b a b ...），返回两串结果。"""
    results_a, results_b = [], []
    for _ in range(rounds):
        results_a.append(measure_a())
        results_b.append(measure_b())
    return results_a, results_b


def timed(function) -> float:
    """function() 的墙钟秒数。"""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


def machine_info() -> dict:
    """写进每份结果的机器描述：谁重跑都能知道数字是在什么环境下量的。"""
    try:
        import transformers
        transformers_version = transformers.__version__
    except ImportError:
        transformers_version = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers_version,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def write_report(path: str, report: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"结果已写入 / written: {out}")


def print_table(headers: list[str], rows: list[list]) -> None:
    """打印一张 Markdown 表（可以直接贴进 docs/PERFORMANCE.md）。"""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(f"{cell:,.0f}" if isinstance(cell, float) and cell > 100 else
                                 f"{cell:.2f}" if isinstance(cell, float) else str(cell) for cell in row) + " |")
