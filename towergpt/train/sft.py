"""对话微调（SFT）入口：`towergpt sft --config FILE`。

与预训练用**同一个**训练循环（train/loop.py），只换了两样东西：
    数据     一行一段对话（data/sft_dataset.py），不同对话之间互不可见
    标签     只有助手说的话（和它的 <|im_end|>）有标签，其余位置是 -100，不计损失

模型结构取自 `init_from` 检查点（配置里的 model 节只有 dropout 生效），
分词器必须是准备数据时用的那一个（与 meta.json 记录的 sha256 指纹核对，见 data/tokenizer_match.py）。
"""

from __future__ import annotations

import functools
from pathlib import Path

from towergpt.checkpoint import MODEL_FILE, load_model_weights, read_model_config, resolve_checkpoint
from towergpt.config import RunConfig
from towergpt.data.data_format import load_meta
from towergpt.data.sft_dataset import SFTData
from towergpt.data.tokenizer_match import check_data_tokenizer, check_vocab_fits
from towergpt.errors import TowerGPTError
from towergpt.model import GPT
from towergpt.tokenizer import Tokenizer
from towergpt.train.distributed import is_main_process, rank_and_world
from towergpt.train.loop import Trainer
from towergpt.train.objective import language_model_objective


def make_sft_objective(pad_id: int):
    """SFT 的目标函数：就是预训练的交叉熵（IGNORE_INDEX 的位置自动忽略），只是 token 计数不含 padding。

    权重（参与损失的目标 token 数）只数助手说的话，所以梯度累积、验证都按助手 token 加权。
    返回的函数仍是训练循环要的 objective(model, batch, device) -> ObjectiveResult，pad_id 已经“绑”在里面。
    """
    return functools.partial(language_model_objective, pad_id=pad_id)


def load_initial_model(config: RunConfig, data_dir: Path):
    """从 init_from 载入模型与分词器，核对分词器与数据一致，并把模型结构写回 config.model。

    SFT 和 DPO 共用这个函数，所以两者的核对完全相同（见 data/tokenizer_match.py）。
    """
    if not config.init_from:
        raise TowerGPTError("init_from 未设置：需要从一个已有的检查点开始 / init_from is required")
    directory = resolve_checkpoint(config.init_from)
    model_config = read_model_config(directory)
    model_config.dropout = config.model.dropout          # 结构来自检查点，dropout 来自本次配置
    # 模型学的是检查点分词器的 id：数据必须是用它准备的（比 meta.json 记下的指纹），
    # 而且数据里最大的 id 要在模型的词向量表里。两项都只读小文件，在载入权重之前做完。
    tokenizer = Tokenizer.load(directory)
    meta = load_meta(data_dir)
    check_data_tokenizer(data_dir, meta, tokenizer, directory)
    check_vocab_fits(data_dir, meta, model_config.vocab_size, directory)
    model = GPT(model_config)
    load_model_weights(model, directory / MODEL_FILE)
    config.model = model_config
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
    trainer = Trainer(config, model, tokenizer, make_sft_objective(tokenizer.pad_id), train_data, val_data)
    return trainer.run(resume=resume)
