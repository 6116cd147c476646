"""把 LoRA 装到一个 GPT 上、取出适配器、合并回普通模型。

    apply_lora(model, settings, base)   把选中的线性层换成 LoRALinear，冻结其余一切参数
    adapter_tensors(model)              只有 lora_A / lora_B 的 {名字: 张量}：LoRA 检查点里存的就是它
    load_adapter_tensors(model, tensors)  严格地把适配器读回（多一个、少一个、形状不对都报错）
    merge_lora(model)                   W' = W + (α/r)·B·A，换回普通的 nn.Linear：模型又是一个普通 GPT

哪些层可以装 LoRA（settings.targets）：每个 Block 里的五种矩阵，名字与 model.py 相同——
注意力的 qkv、out_proj，SwiGLU 的 gate_proj、up_proj、down_proj。词向量表（与输出头共享）
和 RMSNorm 保持冻结：词向量是一张查找表，“低秩修正”对它没有意义。

模型装上 LoRA 后多了一个属性 `model.lora`（LoRAInfo）：秩、α、目标层，以及底座检查点的路径和 sha256。
保存检查点时（checkpoint.py）据此只写适配器，并在 lora.json 里记下底座是谁。
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from towergpt.lora.layer import LoRALinear

TARGETS = ("qkv", "out_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_SUFFIXES = (".lora_A", ".lora_B")


@dataclass
class LoRAInfo:
    """一个 LoRA 模型（或 LoRA 检查点）的全部设置：lora.json 的内容。"""

    rank: int
    alpha: float
    dropout: float
    targets: list[str]
    base_checkpoint: str        # 底座检查点目录（绝对路径）
    base_sha256: str            # 底座 model.safetensors 的 sha256：底座被换掉时能发现

    def to_dict(self) -> dict:
        return asdict(self)


def parse_targets(text: str) -> list[str]:
    """"qkv,out_proj" → ["qkv", "out_proj"]；名字不认识时抛 ValueError（配置检查会把它变成一行错误）。"""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise ValueError(f"unknown LoRA target(s) {unknown or text!r}; choose from {', '.join(TARGETS)}")
    return names


def apply_lora(model: nn.Module, info: LoRAInfo, seed: int = 0) -> nn.Module:
    """原地把 model 里名字在 info.targets 中的 nn.Linear 换成 LoRALinear，冻结所有底座参数；返回 model。

    A 的随机初值只由 seed 决定（一个独立的随机数生成器，不动全局的随机状态）：同样的配置，两次运行逐位相同。
    """
    model.requires_grad_(False)                       # 先冻结一切（词向量、RMSNorm、所有矩阵）
    generator = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    for block in model.blocks:
        for parent in (block.attn, block.ffn):
            for name in info.targets:
                layer = getattr(parent, name, None)
                if isinstance(layer, nn.Linear) and not isinstance(layer, LoRALinear):
                    setattr(parent, name, LoRALinear(layer, info.rank, info.alpha, info.dropout, generator))
    model.lora = info
    return model


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(module, LoRALinear) for module in model.modules())


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """只取适配器：{"blocks.0.attn.qkv.lora_A": 张量, ...}（连续、在 CPU 上，可以直接写 safetensors）。"""
    return {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()
            if name.endswith(ADAPTER_SUFFIXES)}


def load_adapter_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    """把适配器严格地读进已经 apply_lora 过的 model；对不上时抛 ValueError，消息里说哪里不对。"""
    expected = {name: value.shape for name, value in model.state_dict().items() if name.endswith(ADAPTER_SUFFIXES)}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{source}: adapters do not match the LoRA settings "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    wrong = [name for name, shape in expected.items() if tuple(tensors[name].shape) != tuple(shape)]
    if wrong:
        raise ValueError(f"{source}: {wrong[0]} has shape {tuple(tensors[wrong[0]].shape)}, "
                         f"expected {tuple(expected[wrong[0]])} (different rank?)")
    model.load_state_dict(tensors, strict=False)


def merge_lora(model: nn.Module) -> nn.Module:
    """原地把每个 LoRALinear 换回合并后的 nn.Linear，去掉 model.lora；返回 model（参数仍是冻结的）。"""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    if hasattr(model, "lora"):
        del model.lora
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(可训练的参数个数, 全部参数个数)；共享的权重只数一次。"""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
