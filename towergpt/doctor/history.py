"""被检查的东西：一次运行的配置，加上到目前为止的训练行和评估行。

离线的 `towergpt doctor` 从文件读出它（run_reader.py），训练中的 LiveDoctor 一行一行攒出它（live.py）；
所有检查函数只认这一个类型，所以两边用的是同一套判断。

metrics.jsonl 里有两种行（train/loop.py 写的）：
    训练行  step、tokens、loss、lr、grad_norm、tok_per_s、elapsed_s、step_s、目标函数的指标，
            这一步被跳过（损失或梯度非有限）时还有 "skipped": true；NaN/inf 写成 null（读出来是 None）
    评估行  step、val_loss，交叉熵目标还有 val_ppl、val_bpc，以及 val_<指标>
"""

from __future__ import annotations

from dataclasses import dataclass, field

# 只有这两种训练的损失是“每个目标 token 的交叉熵”：它应当一路往下走，不降就是有问题。
# DPO 的损失从 ln 2 出发、含义不同，由 checks_objective.py 单独判断。
CROSS_ENTROPY_KINDS = ("pretrain", "sft")


@dataclass
class RunHistory:
    """config 是解析后的完整配置（运行目录里的 config.yaml，或 RunConfig.to_dict()），按节嵌套的 dict。

    kind 是 pretrain / sft / dpo（或将来的别的名字）；kind_source 说它从哪来（见 run_kind.py）。
    """

    config: dict
    kind: str
    train: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    kind_source: str = ""

    @classmethod
    def from_rows(cls, config: dict, kind: str, rows: list[dict], kind_source: str = "") -> "RunHistory":
        """把 metrics.jsonl 的行分成训练行（有 loss 键）和评估行（有 val_loss 键）。"""
        return cls(config, kind, [row for row in rows if is_training_row(row)],
                   [row for row in rows if is_eval_row(row)], kind_source)

    def setting(self, section: str, key: str, default=None):
        """配置里的 section.key；缺了（旧的或手写的 config.yaml）就用 default，检查会因此跳过而不是出错。"""
        values = self.config.get(section)
        if not isinstance(values, dict):
            return default
        value = values.get(key, default)
        return default if value is None else value

    @property
    def is_cross_entropy(self) -> bool:
        return self.kind in CROSS_ENTROPY_KINDS


def is_training_row(row: dict) -> bool:
    return "loss" in row


def is_eval_row(row: dict) -> bool:
    return "val_loss" in row
