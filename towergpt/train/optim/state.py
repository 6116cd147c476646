"""优化器状态：它占多少内存，以及续训时状态与优化器对不上怎么报错。"""

from __future__ import annotations

import torch

from towergpt.errors import TowerGPTError


def optimizer_state_bytes(optimizer, params=None) -> int:
    """优化器状态占多少字节：optimizer.state 里所有张量之和（含 GaLore 的投影矩阵）。
    给了 params 就只数这些参数的状态。"""
    wanted = None if params is None else {id(param) for param in params}
    return sum(_tensor_bytes(value) for param, values in optimizer.state.items()
               if wanted is None or id(param) in wanted for value in values.values())


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(item) for item in value.values())
    if hasattr(value, "ortho_matrix"):  # GaLore 的投影器：一个 Python 对象，里面存着投影矩阵
        return _tensor_bytes(value.ortho_matrix)
    return 0


def state_mismatch_error(name: str, error: Exception | str) -> TowerGPTError:
    """检查点里的优化器状态载不进 optim.name 指定的优化器时的报错（GaLore 和 Muon 共用）。"""
    return TowerGPTError(
        f"检查点里的优化器状态与 optim.name={name} 不符（保存时用的是别的优化器？续训时请保持 optim.name 不变）/ "
        f"the checkpoint's optimizer state does not fit optim.name={name}: {error}"
    )
