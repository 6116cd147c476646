"""激活检查点（activation checkpointing，也叫“重计算”）：用一点算力换大块显存。`train.activation_checkpointing: true`

为什么要它
    反向传播要用到前向时的中间结果（“激活值”）：RMSNorm 的输入、q/k/v、SwiGLU 中间那几个 F 维的张量……
    autograd 在前向时把它们一一存下，等反向用完才释放。每个 Block 每个 token 存下约 9·C + 4·F 个 fp32 数
    （推导见 train/memory_estimate.py），乘上 B·T 和层数，序列一长、批一大，它就是显存里最大的一块。

它做什么
    每个 Block 只存它的输入 x（每个 token C 个数），块里的中间结果一个也不存。反向传到这个块时，
    先用存下的 x 把这个块的前向重算一遍，中间结果就又有了，随即做这个块的反向、用完就丢。
    显存：n_layer 份“整块的中间结果”  →  n_layer 份块输入 + 同一时刻只有 1 份整块的中间结果。
    代价：每个块多做一次前向。前向约占一步计算的 1/3，所以一步多花约 1/3 的时间。

怎么做（选型；PyTorch 2.13 上逐个试过）
    torch.utils.checkpoint.checkpoint(函数, *输入, use_reentrant=False)：把“函数(*输入)”这一段标成
    “反向时重算”。要决定的只是怎样把它套到每个块上，同时不改变参数名（检查点、推理、导出都按名字找权重）：
      1. checkpoint_wrapper（torch.distributed.algorithms._checkpoint）：把每个块包进一个新模块，
         参数名多出一段 `_checkpoint_wrapped_module.`。名字变了，不用。
      2. torch.distributed._composable.checkpoint：用前向钩子，名字不变；但在 torch.compile 下
         重算出的张量与前向时对不上（CheckpointError），而且它在 torch.distributed 里。不用。
      3. 本模块的做法：给每个块的**实例**换一个 forward，里面用 checkpoint 调用类上原来的 Block.forward。
         模块树、参数、state_dict 的名字一个都不变；torch.compile 把 checkpoint 认成一段整体编译的区域；
         DDP 与 FSDP2 的钩子挂在块的 __call__ 上（FSDP2 前向后把参数切回分片，反向前再收集），
         重算发生在块的反向里、参数已经收集好之后，所以它们照常工作。
    必须在 torch.compile / DDP / FSDP2 之前装上（train/loop.py 里紧挨着 wrap_model 之前）：
    编译要看见 checkpoint 才会把它编进图里，FSDP2 换了块的类以后 type(块).forward 仍是 Block.forward。

随机数（dropout）
    use_reentrant=False 默认 preserve_rng_state=True：前向时记下 CPU（和输入所在 CUDA 设备）的随机数状态，
    重算前先恢复，于是 dropout 丢掉的还是同样那些位置，损失和梯度与不开时逐位相同
    （tests/test_activation_checkpointing.py 在 dropout > 0 时核对这一点）。

什么时候不重算
    不求梯度时（验证、GRPO 采样、DPO 的参考模型）没有反向，也就没有什么可省，照常前向；
    带 KV 缓存时（生成）也照常前向：重算会把同一段键值再写进缓存一次，而缓存的长度此时已经往后挪了。
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint

from towergpt.model import KVCache


def checkpoint_blocks(model: torch.nn.Module) -> int:
    """给 model.blocks 里的每个 Transformer 块装上“只存输入、反向时重算”；返回装了几个块。

    原地修改，参数和 state_dict 的名字不变；对同一个模型调用两次与调用一次相同。
    """
    for block in model.blocks:
        # 绑定到这个块的方法（而不是闭包）：copy.deepcopy(model) 时会跟着绑到拷贝出来的块上
        block.forward = types.MethodType(_checkpointed_forward, block)
    return len(model.blocks)


def _checkpointed_forward(block: torch.nn.Module, *args, **kwargs):
    """块的新 forward：参数原样交给类上原来的 forward（Block.forward），需要反向时经过 checkpoint。"""
    plain_forward = type(block).forward   # 类上的那个函数；实例上的 forward 就是本函数自己
    with_cache = any(isinstance(value, KVCache) for value in (*args, *kwargs.values()))
    if with_cache or not torch.is_grad_enabled():
        return plain_forward(block, *args, **kwargs)
    return checkpoint(plain_forward, block, *args, use_reentrant=False, **kwargs)
