"""GaLore：梯度低秩投影（Zhao et al. 2024，galore-torch 包），以及让它的状态能存进检查点的补丁。

一个 m×n 的权重矩阵 W，AdamW 要为它存两个 m×n 的状态。GaLore 的观察：训练中梯度 G 近似低秩，
于是每隔 update_proj_gap 步对当前梯度做一次 SVD，取前 r 个奇异向量组成投影矩阵 P（n×r 或 m×r），
    低秩梯度  R = G·P          (m×r)   ← Adam 的两个状态也只有 m×r
    更新      ΔW = scale · Adam(R)·Pᵀ  (m×n)
权重本身仍是完整的 m×n（不同于 LoRA），只是“优化器看到的”梯度被压缩了。

galore-torch 的用法：参数组里带 rank / update_proj_gap / scale / proj_type 四个键，这一组才做投影；
不带 rank 的组就是普通 AdamW。常见错误：导入了 GaLore 却不给任何组设 rank，投影一次也没打开，
其实一直在跑 AdamW，内存一点没省。

galore-torch 是可选依赖（约 250 MB，连带 transformers 和 bitsandbytes）：只在真用到 GaLore 时才导入，
没装时给出一行安装命令。8 位版本（galore_adamw8bit）的 Adam 状态再量化成 8 位，只能在 CUDA 上用。
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings

import torch

from towergpt.config import OptimConfig
from towergpt.errors import TowerGPTError
from towergpt.train.optim.groups import NamedParams, split_by_decay, split_hidden_matrices
from towergpt.train.optim.state import state_mismatch_error

GALORE_PROJ_TYPES = ("std", "reverse_std", "left", "right", "full")
GALORE_INSTALL = 'pip install -e ".[galore]"'


# ---------------------------------------------------------------------------
# 1. 构造：隐藏层矩阵一组（带四个投影键），其余参数按权重衰减分两组
# ---------------------------------------------------------------------------

def build_galore(model: torch.nn.Module, config: OptimConfig, device: torch.device):
    """optim.name = galore_adamw / galore_adamw8bit 时的优化器（见模块开头）。"""
    eight_bit = config.name == "galore_adamw8bit"
    if eight_bit and device.type != "cuda":
        raise TowerGPTError(
            f"optim.name=galore_adamw8bit 需要 CUDA GPU（bitsandbytes 的 8 位优化器只在 GPU 上运行），"
            f"当前设备是 {device}；请改用 optim.name=galore_adamw / galore_adamw8bit needs a CUDA GPU and "
            f"bitsandbytes (device is {device}): use optim.name=galore_adamw"
        )
    try:
        optimizer_class = _galore_classes()[config.name]
    except ImportError as error:
        raise TowerGPTError(
            f"optim.name={config.name} 需要可选依赖 galore-torch：{GALORE_INSTALL}（导入失败：{error}）/ "
            f"optim.name={config.name} needs galore-torch: {GALORE_INSTALL}"
        ) from None
    hidden, rest = split_hidden_matrices(model)
    _check_galore_rank(hidden, config.galore_rank)
    groups = [
        {
            "name": "galore", "params": [param for _, param in hidden], "weight_decay": config.weight_decay,
            # 这四个键就是“打开投影”的开关（galore-torch 看到 "rank" 才投影）
            "rank": config.galore_rank, "update_proj_gap": config.galore_update_proj_gap,
            "scale": config.galore_scale, "proj_type": config.galore_proj_type,
        },
        *split_by_decay([param for _, param in rest], config.weight_decay),
    ]
    betas = (config.beta1, config.beta2)
    if eight_bit:
        return optimizer_class(groups, lr=config.lr, betas=betas, eps=config.eps)
    return optimizer_class(groups, lr=config.lr, betas=betas, eps=config.eps, no_deprecation_warning=True)


def _check_galore_rank(hidden: NamedParams, rank: int) -> None:
    """秩必须小于每个矩阵的短边，否则“投影”既不降维也不省内存，只是白做 SVD。"""
    name, param = min(hidden, key=lambda item: min(item[1].shape))
    if rank >= min(param.shape):
        raise TowerGPTError(
            f"optim.galore_rank={rank} 不小于最小矩阵 {name} {tuple(param.shape)} 的短边 {min(param.shape)}，"
            f"投影不会省任何内存；请设得更小（常用短边的 1/4 到 1/2）/ galore_rank must be smaller than "
            f"{min(param.shape)}, the short side of {name}"
        )


# ---------------------------------------------------------------------------
# 2. 导入 galore-torch（可选依赖）
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_import(logger_name: str):
    """导入 galore-torch 时，bitsandbytes 会在某些 CPU 上打一条与我们无关的日志警告，
    它依赖的代码还会发出 torch.jit 的弃用警告；导入期间把这些噪音压下去（真正的错误照常抛出）。"""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        logger.setLevel(level)


@functools.cache
def _galore_classes() -> dict[str, type]:
    """导入 galore-torch（只在真用到 GaLore 时才导入这个约 250 MB 的依赖），返回两个可保存的优化器类。"""
    with _quiet_import("bitsandbytes"):
        # 留在函数里：galore-torch 是可选依赖，默认不装（见 GALORE_INSTALL）
        import galore_torch  # 它的 __init__ 会连带导入 transformers 和 bitsandbytes
        from galore_torch.galore_projector import GaLoreProjector
    return {
        "galore_adamw": _saveable(galore_torch.GaLoreAdamW, "GaLoreAdamW", "galore_adamw", GaLoreProjector),
        "galore_adamw8bit": _saveable(galore_torch.GaLoreAdamW8bit, "GaLoreAdamW8bit", "galore_adamw8bit",
                                      GaLoreProjector),
    }


# ---------------------------------------------------------------------------
# 3. 让 GaLore 的状态能存进检查点
# ---------------------------------------------------------------------------

def _saveable(base: type, class_name: str, optim_name: str, projector_class: type) -> type:
    """给 galore-torch 的优化器补上“能存进检查点”的能力。

    galore-torch 把投影器（GaLoreProjector，一个普通 Python 对象）直接放在 optimizer.state 里。
    原样保存的话，torch.load(weights_only=True) 拒绝还原任意对象，续训就读不回来；
    丢掉它又会让续训后立刻用新梯度重算 SVD，与不中断的训练不再一致。
    所以保存时只存投影矩阵本身（一个张量，键 projector_matrix），读回时再装回投影器对象；
    投影器的其余设置（rank 等）本来就在参数组里。
    """

    class Saveable(base):
        def state_dict(self):
            state_dict = super().state_dict()
            state_dict["state"] = {index: _pack_projector(values) for index, values in state_dict["state"].items()}
            return state_dict

        def load_state_dict(self, state_dict):
            try:
                super().load_state_dict(state_dict)
            except (KeyError, ValueError) as error:
                raise state_mismatch_error(optim_name, error) from None
            for group in self.param_groups:
                if "rank" not in group:
                    continue
                for param in group["params"]:
                    values = self.state.get(param)
                    if values and "projector_matrix" in values:
                        projector = projector_class(group["rank"], update_proj_gap=group["update_proj_gap"],
                                                    scale=group["scale"], proj_type=group["proj_type"])
                        projector.ortho_matrix = _to_device(values.pop("projector_matrix"), param.device)
                        values["projector"] = projector

    Saveable.__name__ = Saveable.__qualname__ = class_name
    return Saveable


def _pack_projector(values: dict) -> dict:
    if "projector" not in values:
        return values
    packed = {key: value for key, value in values.items() if key != "projector"}  # 新 dict：不改动优化器本身
    packed["projector_matrix"] = values["projector"].ortho_matrix  # proj_type=full 时是两个矩阵的列表
    return packed


def _to_device(matrix, device):
    if isinstance(matrix, (list, tuple)):
        return [item.to(device) for item in matrix]
    return matrix.to(device) if matrix is not None else None
