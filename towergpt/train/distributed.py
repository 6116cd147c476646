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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from towergpt.device import pick_device
from towergpt.errors import TowerGPTError


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


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, context: DistributedContext, device: torch.device,
               compile_model: bool = False) -> torch.nn.Module:
    """返回训练时做前向用的模型：按需 torch.compile，多进程时再包成 DDP 或 FSDP2。

    参数始终是 model 自己的那一份：DDP 和 compile 只是外壳；FSDP2 则是原地把参数换成分片。
    """
    if context.enabled and context.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        # 先按 Transformer 块分片（每块是一个通信单元），最后把剩下的（词向量、输出头、最终归一化）分片
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return torch.compile(model) if compile_model else model
    forward_model = torch.compile(model) if compile_model else model
    if context.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # broadcast_buffers=False：我们唯一的 buffer 是固定的 RoPE 表，不需要每次前向都同步
        forward_model = DistributedDataParallel(
            forward_model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    return forward_model


def full_model_state(model: torch.nn.Module, context: DistributedContext) -> dict:
    """FSDP：把分散在各进程的参数分片收集成完整的 state_dict（放到 CPU，只有 rank 0 拿到内容）。"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer, context: DistributedContext) -> dict:
    """FSDP：同上，收集完整的优化器状态。"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(model, optimizer, model_state: dict, optimizer_state: dict) -> None:
    """FSDP：把完整的 state_dict 切回各进程自己的分片（任意进程数都能载入同一个检查点）。"""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))


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
