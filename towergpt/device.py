"""计算设备（训练和推理共用）：选哪个设备，以及怎样把批次快一点送上去。"""

from __future__ import annotations

import torch

from towergpt.errors import TowerGPTError


def pick_device(name: str = "auto") -> torch.device:
    """auto：有 CUDA 用 CUDA，有 Apple MPS 用 MPS，否则 CPU。指定了却不可用时给出清楚的错误。"""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TowerGPTError(f"设备 {name} 不可用：这台机器没有 CUDA / no CUDA available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TowerGPTError(f"无法识别的设备 / unknown device: {name}") from None


def pin_memory(batch):
    """把批次（张量，或张量组成的 tuple / list / dict）放进锁页内存（pinned memory）；其余值原样返回。

    为什么？只有锁页内存里的张量才能真正异步地拷到 GPU：目标函数里的 .to(device, non_blocking=True)
    于是不等拷贝完成就返回，CPU 可以接着安排前向的计算、准备下一个微批次，GPU 按顺序执行。
    取批次本身只是从内存映射的分片里切几行 token（微秒级），不需要再开后台线程预取。只对 CUDA 有用。
    """
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, (tuple, list)):
        return type(batch)(pin_memory(item) for item in batch)
    if isinstance(batch, dict):
        return {key: pin_memory(value) for key, value in batch.items()}
    return batch
