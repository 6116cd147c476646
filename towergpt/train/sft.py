"""对话微调（SFT）入口：`towergpt sft --config FILE`。

与预训练用**同一个**训练循环（train/loop.py），只换了两样东西：
    数据     一行一段对话（data/sft_dataset.py），不同对话之间互不可见
    标签     只有助手说的话（和它的 <|im_end|>）有标签，其余位置是 -100，不计损失

模型结构取自 `init_from` 检查点（配置里的 model 节只有 dropout 生效），
分词器必须是准备数据时用的那一个（与 meta.json 记录的 sha256 指纹核对，见 data/tokenizer_match.py）。
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from towergpt.checkpoint import MODEL_FILE, load_model, load_model_weights, read_model_config, resolve_checkpoint
from towergpt.config import RunConfig
from towergpt.data.data_format import load_meta
from towergpt.data.sft_dataset import SFTData
from towergpt.data.tokenizer_match import check_data_tokenizer, check_vocab_fits
from towergpt.errors import TowerGPTError
from towergpt.lora.files import is_lora_checkpoint
from towergpt.model import GPT
from towergpt.tokenizer import Tokenizer
from towergpt.train.distributed import is_main_process, rank_and_world
from towergpt.train.lora_setup import attach_lora
from towergpt.train.loop import Trainer
from towergpt.train.memory_estimate import report_memory
from towergpt.train.objective import ObjectiveResult, language_model_objective


def make_sft_objective(pad_id: int):
    """SFT 的目标函数：就是预训练的交叉熵（IGNORE_INDEX 的位置自动忽略），只是 token 计数不含 padding，
    另外报告一个指标 mask_fraction（损失掩码盖住了多少，见 sft_objective）。

    权重（参与损失的目标 token 数）只数助手说的话，所以梯度累积、验证都按助手 token 加权。
    返回的函数仍是训练循环要的 objective(model, batch, device) -> ObjectiveResult，pad_id 已经“绑”在里面。
    """
    return functools.partial(sft_objective, pad_id=pad_id)


def sft_objective(model, batch, device, pad_id: int) -> ObjectiveResult:
    """语言模型的交叉熵，外加一个指标 mask_fraction = 目标 token 数 / 输入里不是 pad 的 token 数。

    它回答“损失掩码盖住了多少”：只有助手的话有标签，所以正常的对话在 0 和 1 之间（短回答、长提问时很小）。
    接近 0：几乎没有 token 在学（回答是空的、被截掉了）；接近 1：连用户的话也在学（掩码没起作用）。
    `towergpt doctor` 读它（见 docs/doctor.md）。

    注意它写进训练行时的含义：指标和损失一样按结果的权重（这里就是目标 token 数）加权平均，
    所以一行里的值是 Σ(各微批次的比例 × 目标数) / Σ目标数 —— grad_accum = 1 时恰好是这一批的比例；
    有多个微批次时偏向目标多的那几批（略高于“总目标数 / 总 token 数”）。判断“几乎为 0 / 几乎为 1”足够了。
    权重为 0 的批次（一个目标都没有）整个不计，它的比例也就不进平均。
    """
    result = language_model_objective(model, batch, device, pad_id=pad_id)
    fraction = torch.tensor(result.weight / max(result.tokens, 1))   # 两个数都是 CPU 上数好的整数：不必等 GPU
    return dataclasses.replace(result, metrics={**result.metrics, "mask_fraction": fraction})


def load_initial_model(config: RunConfig, data_dir: Path | None, lora: bool = True):
    """从 init_from 载入模型与分词器，核对分词器与数据一致，并把模型结构写回 config.model。

    SFT、DPO、GRPO 共用这个函数，所以它们的核对完全相同（见 data/tokenizer_match.py）。
    lora=True 且配置了 lora.rank 时顺便装上 LoRA；DPO 要先拷一份参考模型，所以传 False、拷完再装。
    """
    if not config.init_from:
        raise TowerGPTError("init_from 未设置：需要从一个已有的检查点开始 / init_from is required")
    directory = resolve_checkpoint(config.init_from)
    model_config = read_model_config(directory)
    model_config.dropout = config.model.dropout          # 结构来自检查点，dropout 来自本次配置
    # 模型学的是检查点分词器的 id：数据必须是用它准备的（比 meta.json 记下的指纹），
    # 而且数据里最大的 id 要在模型的词向量表里。两项都只读小文件，在载入权重之前做完。
    tokenizer = Tokenizer.load(directory)
    if data_dir is not None:   # GRPO 读的是提示词原文（用这个分词器现场编码），没有 token 分片可核对
        meta = load_meta(data_dir)
        check_data_tokenizer(data_dir, meta, tokenizer, directory)
        check_vocab_fits(data_dir, meta, model_config.vocab_size, directory)
    model = GPT(model_config)
    if is_lora_checkpoint(directory):   # 从一个 LoRA 运行接着训：它载入时已合并成普通模型，拷进带本次 dropout 的模型
        model.load_state_dict(load_model(directory).state_dict())
    else:
        load_model_weights(model, directory / MODEL_FILE)
    config.model = model_config
    # 输出头 + 交叉熵分块算（见 chunked_loss.py）；DPO / GRPO 的参考模型是它的拷贝，也跟着分块
    model.loss_chunk_tokens = config.train.loss_chunk_tokens
    if lora:
        attach_lora(model, config)
    return model, tokenizer


def run_sft(config: RunConfig, resume: bool = False) -> dict:
    """准备对话数据与初始模型，运行训练循环，返回摘要。"""
    if not config.data.path:
        raise TowerGPTError("data.path 未设置：请指向 `towergpt data prepare --format sft` 的输出 / data.path is not set")
    data_dir = Path(config.data.path)
    model, tokenizer = load_initial_model(config, data_dir)
    seq_len, seed = config.model.max_seq_len, config.train.seed
    rank, world_size = rank_and_world()   # 多进程时每个进程读互不重叠的一份对话
    train_data = SFTData(data_dir, "train", seq_len, seed=seed, rank=rank, world_size=world_size)
    has_val = load_meta(data_dir, "sft")["val"]["conversations"] > 0   # --val-fraction 0 时没有验证集
    val_data = SFTData(data_dir, "val", seq_len, seed=seed) if has_val else None
    if is_main_process():
        print(f"对话 / conversations: 训练 train {train_data.num_conversations:,}，"
              f"验证 val {val_data.num_conversations if val_data else 0:,}")
    report_memory(config, "sft")   # 开训前的内存估计（只在主进程打印）
    trainer = Trainer(config, model, tokenizer, make_sft_objective(tokenizer.pad_id), train_data, val_data)
    return trainer.run(resume=resume)
