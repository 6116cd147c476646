"""lora.json：一个 LoRA 检查点“是在谁的基础上”的记录。

    {
      "format": "towergpt-lora", "version": 1,
      "rank": 8, "alpha": 16.0, "dropout": 0.0, "targets": ["qkv", "out_proj", ...],
      "base_checkpoint": "/abs/path/runs/sft/checkpoints/step_00000210",
      "base_sha256": "…底座 model.safetensors 的 sha256…"
    }

LoRA 检查点里的 model.safetensors 只有适配器（几十 KB 到几 MB），离开底座什么也不是。
为什么记 sha256 而不只记路径？底座所在的运行可能被续训、被覆盖：路径还在，内容却变了。
适配器是针对**那一份**底座权重学出来的，装到别的权重上会得到一个悄悄出错的模型，所以载入时核对。
底座目录记成绝对路径、而且是具体的检查点目录（不是运行目录），底座的运行继续训练也不影响。
"""

from __future__ import annotations

import json
from pathlib import Path

from towergpt.errors import TowerGPTError
from towergpt.lora.adapters import TARGETS, LoRAInfo

LORA_FILE = "lora.json"
LORA_FORMAT = "towergpt-lora"


def write_lora_info(directory: Path, info: LoRAInfo) -> None:
    body = {"format": LORA_FORMAT, "version": 1, **info.to_dict()}
    (Path(directory) / LORA_FILE).write_text(json.dumps(body, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def is_lora_checkpoint(directory: Path) -> bool:
    return (Path(directory) / LORA_FILE).is_file()


def read_lora_info(directory: Path) -> LoRAInfo:
    """读并检查 lora.json；任何一个字段不对都是一行指明文件和字段的错误。"""
    path = Path(directory) / LORA_FILE
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TowerGPTError(f"{path}: 无法读取 / unreadable: {error}") from None
    if not isinstance(body, dict) or body.get("format") != LORA_FORMAT:
        raise TowerGPTError(f"{path}: 不是 TowerGPT 的 LoRA 记录（format 应为 {LORA_FORMAT!r}）/ not a LoRA record")

    def field(name, kind, check=lambda value: True, rule=""):
        value = body.get(name)
        if isinstance(value, bool) or not isinstance(value, kind) or not check(value):
            raise TowerGPTError(f"{path} 字段/field '{name}': {rule or '类型不对 / wrong type'}，实际是 {value!r}")
        return value

    targets = field("targets", list, lambda v: v and all(t in TARGETS for t in v), f"应为 {', '.join(TARGETS)} 的子集")
    return LoRAInfo(
        rank=field("rank", int, lambda v: v >= 1, "应为 ≥ 1 的整数 / a positive integer"),
        alpha=float(field("alpha", (int, float), lambda v: v > 0, "应为正数 / positive")),
        dropout=float(field("dropout", (int, float), lambda v: 0 <= v < 1, "应在 [0, 1) / in [0, 1)")),
        targets=list(targets),
        base_checkpoint=field("base_checkpoint", str, bool, "应为底座检查点目录 / the base checkpoint dir"),
        base_sha256=field("base_sha256", str, lambda v: len(v) == 64, "应为 64 位十六进制 / a sha256 hex digest"),
    )
