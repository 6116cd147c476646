"""预训练入口：`towergpt pretrain --config FILE`。

目标函数就是语言模型最朴素的任务：给定前面的 token，预测下一个
（language_model_objective，定义在 train/objective.py：SFT 和 `towergpt eval` 也用它）。
数据是把所有文档首尾相接、切成固定长度窗口的“打包流”（见 data/pretrain_dataset.py），
没有一个 token 被浪费在 padding 上。
"""

from __future__ import annotations

from pathlib import Path

import torch

from towergpt.config import RunConfig
from towergpt.data.data_format import TOKENIZER_SUBDIR, load_meta
from towergpt.data.pretrain_dataset import PackedPretrainData
from towergpt.data.tokenizer_match import check_data_tokenizer
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.tokenizer import Tokenizer
from towergpt.train.distributed import is_main_process, rank_and_world
from towergpt.train.loop import Trainer
from towergpt.train.memory_estimate import report_memory
from towergpt.train.objective import language_model_objective


def resolve_vocab_size(config: RunConfig, tokenizer) -> None:
    """model.vocab_size = 0 表示“跟随分词器”：取分词器词表大小并向上取到 64 的倍数
    （矩阵维度是 64 的倍数时 GPU 上的矩阵乘更快；多出的几个 id 从不出现，无害）。"""
    if config.model.vocab_size == 0:
        config.model.vocab_size = 64 * -(-tokenizer.vocab_size // 64)
    elif config.model.vocab_size < tokenizer.vocab_size:
        raise TowerGPTError(
            f"model.vocab_size={config.model.vocab_size} 小于分词器词表 {tokenizer.vocab_size} / "
            f"smaller than the tokenizer's vocabulary (use 0 to follow the tokenizer)"
        )


def build_model(config: RunConfig, verbose: bool = True) -> GPT:
    """按配置和种子构造随机初始化的模型，并打印它有多大。"""
    torch.manual_seed(config.train.seed)
    model = GPT(config.model)
    model.loss_chunk_tokens = config.train.loss_chunk_tokens   # 输出头 + 交叉熵分块算（见 chunked_loss.py）
    if verbose:
        print(f"模型参数 / parameters: {model.num_params() / 1e6:.2f}M "
              f"（不含词向量 / non-embedding {model.num_params(exclude_embedding=True) / 1e6:.2f}M）")
    return model


def run_pretrain(config: RunConfig, resume: bool = False) -> dict:
    """准备数据、模型和训练循环，训练并返回摘要。"""
    if not config.data.path:
        raise TowerGPTError("data.path 未设置：请指向 `towergpt data prepare` 的输出目录 / data.path is not set")
    data_dir = Path(config.data.path)
    seq_len, seed = config.model.max_seq_len, config.train.seed
    rank, world_size = rank_and_world()   # 多进程时每个进程读训练数据里互不重叠的一份
    train_data = PackedPretrainData(data_dir, "train", seq_len, seed=seed, rank=rank, world_size=world_size)
    val_data = PackedPretrainData(data_dir, "val", seq_len, seed=seed)
    # 预训练用数据目录里的分词器副本；先确认它就是 prepare 时用的那个（副本可能被人换过），
    # 否则词表变小时第一步就会 IndexError，词表一样大时则悄悄学错字。
    tokenizer_dir = data_dir / TOKENIZER_SUBDIR
    tokenizer = Tokenizer.load(tokenizer_dir)
    check_data_tokenizer(data_dir, load_meta(data_dir, "pretrain"), tokenizer, tokenizer_dir)
    resolve_vocab_size(config, tokenizer)
    model = build_model(config, verbose=is_main_process())
    tokens_per_step = config.train.micro_batch_size * config.train.grad_accum * seq_len * world_size
    if is_main_process():
        print(f"每步 / per step: {tokens_per_step:,} tokens（微批次 × 累积 × {world_size} 个进程）；"
              f"训练集一轮 / one epoch: {train_data.num_windows * seq_len:,} tokens")
    report_memory(config, "pretrain")   # 开训前的内存估计（只在主进程打印；见 train/memory_estimate.py）
    trainer = Trainer(config, model, tokenizer, language_model_objective, train_data, val_data)
    return trainer.run(resume=resume)
