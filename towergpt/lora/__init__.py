"""LoRA：冻结底座，只训练每个矩阵旁边的一对低秩小矩阵（为什么能行、怎样初始化，见 layer.py）。

    layer.py      LoRALinear：y = W·x + (α/r)·B·A·x；B 从 0 开始；可以合并
    adapters.py   装到 GPT 上、取出 / 读回适配器、合并回普通模型
    merge.py      `towergpt lora merge --ckpt RUN --out DIR`：LoRA 运行 → 普通检查点

配置（sft / dpo / grpo 都认）：

    lora:
      rank: 8          # 0 = 不用 LoRA（默认），全量微调
      alpha: 16
      dropout: 0.0
      targets: qkv,out_proj,gate_proj,up_proj,down_proj

检查点里只存适配器（model.safetensors 里只有 lora_A / lora_B），外加 lora.json 记下底座检查点的路径和 sha256；
generate、chat、serve、eval、export、inspect 载入时自动找到底座、装上适配器并合并（checkpoint.py）。
"""

from towergpt.lora.adapters import (
    TARGETS, LoRAInfo, adapter_tensors, apply_lora, count_parameters, has_lora, load_adapter_tensors, merge_lora,
    parse_targets,
)
from towergpt.lora.layer import LoRALinear

__all__ = [
    "TARGETS", "LoRAInfo", "LoRALinear", "adapter_tensors", "apply_lora", "count_parameters", "has_lora",
    "load_adapter_tensors", "merge_lora", "parse_targets",
]
