"""多卡 / 多机训练：用 `torchrun` 启动，用 PyTorch 自己的 DDP / FSDP2，不造轮子。

    torchrun --nproc_per_node 4 -m towergpt pretrain --config base

torchrun 为每张卡起一个进程，并通过环境变量告诉它：RANK（全局编号）、LOCAL_RANK（本机编号）、
WORLD_SIZE（总进程数）、MASTER_ADDR/MASTER_PORT（大家在哪里碰头）。

两种并行方式（`train.distributed`）：
    ddp   数据并行（默认）。每个进程一份完整模型，各读不同的数据；反向传播时把梯度在所有进程间求平均
          （all-reduce），于是每个进程做完全相同的更新，模型始终一致。
    fsdp  完全分片数据并行（FSDP2 的 fully_shard）。参数、梯度、优化器状态都切成 N 份分给 N 个进程，
          前向/反向时按层临时收集完整参数，用完即丢。单卡放不下的模型用它。

梯度累积时，只有最后一个微批次需要做 all-reduce：前面几次先在本地累加（DDP 的 no_sync），
省掉 (grad_accum - 1) 次通信。

训练循环（train/loop.py）里凡是“单进程、DDP、FSDP 做法不同”的地方，都在这里各有一个函数，
循环每次只调用一个函数，不用自己分情况：
    验证用哪个模型        evaluation_model / end_forward_only
    保存什么              optimizer_state / model_for_saving
    续训怎么载入          load_newest
    进程间求和、求平均    sum_over_ranks / mean_over_ranks / all_reduce_sum / any_rank

按需导入：FSDP 用的 torch.distributed.fsdp 和 torch.distributed.checkpoint 只在 FSDP 的分支里导入。
它们会连带导入 DTensor 等一大串模块（开发机上约 0.7–0.9 秒），在不带分布式支持的 PyTorch 构建
（torch.distributed.is_available() 为 False）上还会导入失败；单进程和 DDP 训练不该为它们付出这些。
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from towergpt.checkpoint import unwrap_model
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.train.checkpointing import load_newest_intact
from towergpt.train.objective import ResultSums


@dataclass
class DistributedContext:
    """本进程在分布式训练中的身份。单进程训练时 world_size=1，一切照旧。"""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    strategy: str = "ddp"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """只有主进程（rank 0）写日志、打印进度、保存检查点。"""
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """参数是否分片在各进程（FSDP）：是的话，任何一个进程手里都没有完整的模型。"""
        return self.enabled and self.strategy == "fsdp"


def rank_and_world() -> tuple[int, int]:
    """在构造 Trainer 之前也能用（例如切分数据时）：torchrun 设置的 RANK 和 WORLD_SIZE。"""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """只有 0 号进程返回 True（单进程训练时就是它自己）。"""
    return rank_and_world()[0] == 0


def setup(device_name: str, strategy: str) -> tuple[DistributedContext, torch.device]:
    """读 torchrun 的环境变量，初始化进程组，返回 (身份, 本进程使用的设备)。"""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistributedContext(strategy=strategy), pick_device(device_name)
    context = DistributedContext(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world_size,
                                 strategy)
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)   # 每个进程用本机上自己的那张卡
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # GPU 之间用 NCCL（走 NVLink/InfiniBand）；CPU 上用 gloo
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=timedelta(minutes=30))
    return context, device


def check_optimizer(context: DistributedContext, optimizer_name: str) -> None:
    """FSDP 下每个进程只有矩阵的一片，而 GaLore / Muon 要对完整的矩阵做分解或正交化。"""
    if context.sharded and optimizer_name != "adamw":
        raise TowerGPTError("train.distributed=fsdp 目前只支持 optim.name=adamw（GaLore / Muon 需要完整矩阵）/ "
                            "FSDP supports only adamw")


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device,
               compile_model: bool = False) -> torch.nn.Module:
    """返回训练时做前向用的模型：按需 torch.compile，多进程时再包成 DDP 或 FSDP2。

    参数始终是 model 自己的那一份：DDP 和 compile 只是外壳；FSDP2 则是原地把参数换成分片。
    """
    if context.enabled and context.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard  # 只有 FSDP 才导入，原因见模块开头“按需导入”

        # 先按 Transformer 块分片（每块是一个通信单元），最后把剩下的（词向量、输出头、最终归一化）分片
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return torch.compile(model) if compile_model else model
    forward_model = torch.compile(model) if compile_model else model
    if context.enabled:
        # broadcast_buffers=False：我们唯一的 buffer 是固定的 RoPE 表，不需要每次前向都同步
        forward_model = DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    return forward_model


# ---- 验证、保存、续训：单进程 / DDP / FSDP 各自的做法 ------------------------------

def evaluation_model(forward_model: torch.nn.Module, context: DistributedContext) -> torch.nn.Module | None:
    """验证时用来做前向的模型；返回 None 表示本进程不参与验证。

    单进程 / DDP：只有 rank 0 评估，用去掉 DDP 外壳的模型（DDP 的前向会为梯度同步做准备，评估不需要通信），
    也去掉 torch.compile 的外壳：编译过的模型换到 eval 模式、不求梯度时要整个重新编译一遍（CPU 上 20 多秒，
    比几次验证本身加起来还久），而只做前向的验证从编译里得到的好处很少。
    FSDP：参数分散在各进程，前向需要所有进程一起收集参数，所以每个进程都评估同样的批次，只有 rank 0 记录。
    """
    if context.sharded:
        return forward_model
    if not context.is_main:
        return None
    return unwrap_model(forward_model)


def end_forward_only(model: torch.nn.Module, context: DistributedContext) -> None:
    """只做了前向（验证）之后调用。FSDP2 的根模块在只有前向、没有反向时会一直保留“收集好的完整参数”；
    手动切回分片，否则之后取优化器状态时参数对不上号。其余情况什么都不用做。"""
    if context.sharded:
        model.reshard()


def optimizer_state(model: torch.nn.Module, optimizer, context: DistributedContext) -> dict:
    """写进检查点的优化器状态。FSDP：把各进程的分片收集成完整的状态（放到 CPU），任意进程数都能载入。"""
    if not context.sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict  # 按需导入

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def model_for_saving(model: torch.nn.Module, model_class: type, context: DistributedContext):
    """要保存的模型。单进程 / DDP：就是 model。FSDP：所有进程一起把分片收集成完整权重，
    rank 0 把它放进 CPU 上的一个新模型（model_class，即 FSDP 换类之前的 GPT）再保存，其余进程返回 None。"""
    if not context.sharded:
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict  # 按需导入

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not context.is_main:
        return None
    cpu_model = model_class(model.config)
    cpu_model.load_state_dict(full)
    return cpu_model


def load_newest(run_dir: Path, model: torch.nn.Module, model_class: type, optimizer, context: DistributedContext,
                warn: Callable[[str], None]) -> tuple[Path, dict]:
    """续训：载入最新的完好检查点的权重和优化器状态，返回 (检查点目录, trainer_state)。

    FSDP：先把完整权重读进 CPU 上的一个新模型，再由 set_state_dict 切成本进程的分片。
    """
    if not context.sharded:
        directory, state = load_newest_intact(run_dir, model, warn)
        optimizer.load_state_dict(state["optimizer"])
        return directory, state
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict  # 按需导入

    full_model = model_class(model.config)
    directory, state = load_newest_intact(run_dir, full_model, warn)
    set_state_dict(model, optimizer, model_state_dict=full_model.state_dict(), optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True))
    return directory, state


# ---- 梯度同步与进程间通信 ----------------------------------------------------------

def skip_gradient_sync(model: torch.nn.Module, context: DistributedContext, skip: bool):
    """梯度累积的非最后一个微批次：不做梯度 all-reduce（返回一个上下文管理器）。"""
    if not (context.enabled and skip):
        return contextlib.nullcontext()
    if context.strategy == "ddp":
        return model.no_sync()
    return _fsdp_no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def all_reduce_sum(value: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """所有进程的 value 相加（原地），单进程时原样返回。"""
    if context.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def mean_over_ranks(value: float, context: DistributedContext, device: torch.device) -> float:
    """所有进程的 value 的平均（一个数）；单进程时原样返回。"""
    if not context.enabled:
        return value
    total = torch.tensor([float(value)], device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total.item() / context.world_size


def sum_over_ranks(sums: ResultSums, context: DistributedContext, device: torch.device) -> ResultSums:
    """把各进程的一步结果之和加成全局之和，放回 Python 数（on_host=True），只做一次通信。

    所有数打包进一个张量：[Σloss×w, W, tokens, Σ指标×w ...]（指标按名字排序，各进程顺序一致），
    一次 all-reduce 比每个数各通信一次快得多。单进程时只是把张量搬回 CPU。
    """
    names = sorted(sums.weighted_metrics)
    values = [sums.weighted_loss, sums.weight, sums.tokens, *(sums.weighted_metrics[name] for name in names)]
    packed = torch.stack([torch.as_tensor(value, dtype=torch.float32, device=device) for value in values])
    loss, weight, tokens, *metrics = all_reduce_sum(packed, context).tolist()
    return replace(sums, on_host=True, weighted_loss=loss, weight=round(weight), tokens=round(tokens),
                   weighted_metrics=dict(zip(names, metrics)))


def any_rank(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """只要有一个进程的 flag 为真就返回真（例如某个进程收到了 SIGTERM：大家要在同一步停下）。"""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def gather_objects(obj, context: DistributedContext) -> list:
    """收集每个进程的一个 Python 对象，返回按 rank 排列的列表（所有进程都拿到）。"""
    if not context.enabled:
        return [obj]
    gathered = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def check_ranks_agree(description: dict, context: DistributedContext) -> None:
    """启动时核对所有进程的配置和数据是否一致；不一致就清楚地报错，而不是之后卡死或悄悄算错。"""
    if not context.enabled:
        return
    digest = hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()
    digests = gather_objects(digest, context)
    if len(set(digests)) > 1:
        differing = [rank for rank, d in enumerate(digests) if d != digests[0]]
        raise TowerGPTError(
            f"各进程的配置或数据不一致（与 rank 0 不同的进程：{differing}）：请确认所有机器用的是同一份配置文件、"
            f"同一个数据目录和同一个分词器 / ranks disagree on config or data"
        )


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
