"""微调开始前给模型装上 LoRA（配置里 lora.rank > 0 时）：sft、dpo、grpo 的入口都调用它。

底座就是 init_from 指向的那个检查点：记下它的绝对路径和权重的 sha256（写进每个检查点的 lora.json），
以后载入这个 LoRA 运行时据此找到底座并核对它没有变（见 towergpt/lora/files.py）。
装上之后底座的参数全部 requires_grad=False，优化器只看得到适配器（optim/groups.py 只收可训练参数），
所以 AdamW 的两份状态也只为适配器而存——显存省在这里。
"""

from __future__ import annotations

from towergpt.checkpoint import resolve_checkpoint, weights_sha256
from towergpt.config import RunConfig
from towergpt.lora import LoRAInfo, apply_lora, count_parameters, parse_targets
from towergpt.train.distributed import is_main_process


def attach_lora(model, config: RunConfig):
    """config.lora.rank 为 0 时什么也不做；否则原地装上 LoRA 并打印可训练参数占比。返回 model。"""
    settings = config.lora
    if not settings.rank:
        return model
    base = resolve_checkpoint(config.init_from).resolve()
    info = LoRAInfo(rank=settings.rank, alpha=settings.alpha, dropout=settings.dropout,
                    targets=parse_targets(settings.targets), base_checkpoint=str(base),
                    base_sha256=weights_sha256(base))
    apply_lora(model, info, seed=config.train.seed)
    if is_main_process():
        trainable, total = count_parameters(model)
        print(f"LoRA: rank={info.rank} alpha={info.alpha:g} targets={','.join(info.targets)}；"
              f"可训练参数 / trainable {trainable:,} / {total:,}（{trainable / total:.2%}），底座 / base {base}")
    return model
