"""选择计算设备（训练和推理共用）。"""

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
