"""这是哪种训练：pretrain（从零预训练）、sft（对话微调）、dpo（偏好微调）还是 grpo（强化学习）？

有的检查只对一种训练有意义：初始损失 ≈ ln V 只对从随机初始化开始的预训练成立（SFT / DPO 从训练过的模型出发）；
损失掩码只有 SFT 有；卡在 ln 2 只有 DPO 会。所以医生先要知道种类。

可靠的来源是数据：三个入口各自只收一种数据（`data prepare --format ...` 写进 meta.json 的 "kind"，
读数据时就核对过）。但 config.yaml 里的 data.path 常是相对训练时工作目录的路径，数据也可能被挪走，
所以训练开始时把它抄一份到运行目录里：

    RUN/run.json   {"kind": "sft"}      由 LiveDoctor.for_run 写（训练循环开训时调用，只在主进程）

没有 run.json 的旧运行（或数据没有 meta 的运行，例如测试里的合成数据）只能猜，猜法按可靠程度排列：
    1. 训练行里有 rewards/margin        → dpo     （DPO 目标每一行都报这四个奖励指标）
    2. 训练行里有 mask_fraction         → sft     （SFT 目标每一行都报它；很旧的 SFT 运行还没有）
       训练行里有 reward/no_signal      → grpo    （GRPO 目标每一行都报它）
    3. 训练行里有别的、不认识的指标      → unknown （别的目标函数，例如强化学习：只做通用的检查）
    4. config.yaml 的 init_from 不为空   → sft     （预训练不读 init_from；DPO 已被第 1 条认出）
    5. 都不是                            → pretrain
种类不认识（unknown，或 run.json 里记着别的名字）时，只做不依赖目标函数的检查：NaN、发散、突增、预热、
过拟合、吞吐；“损失应当下降”“初始损失 ≈ ln V”这类只对交叉熵成立的检查都不做。
"""

from __future__ import annotations

import json
from pathlib import Path

from towergpt.errors import TowerGPTError

RUN_KIND_FILE = "run.json"

# 训练循环自己写的列（train/loop.py 的 train_step）与两个认识的目标函数的指标。除此之外还有别的列，
# 就是一个医生不认识的目标函数在报它自己的指标。
LOOP_COLUMNS = {"step", "tokens", "loss", "lr", "grad_norm", "tok_per_s", "elapsed_s", "step_s", "skipped"}
KNOWN_METRICS = {"mask_fraction", "rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"}
# GRPO（train/grpo.py）每一行都报组内“无信号”的比例
GRPO_METRIC = "reward/no_signal"


def record_run_kind(run_dir: str | Path, kind: str) -> None:
    """把种类写进 RUN/run.json；kind 为空（数据没有 meta，例如测试里的合成数据）时什么也不写。"""
    if kind:
        path = Path(run_dir) / RUN_KIND_FILE
        path.write_text(json.dumps({"kind": kind}, ensure_ascii=False) + "\n", encoding="utf-8")


def recorded_run_kind(run_dir: str | Path) -> str:
    """run.json 里记下的种类；没有这个文件时返回空串。文件坏了就报错（它是程序写的，坏了说明出了事）。"""
    path = Path(run_dir) / RUN_KIND_FILE
    if not path.is_file():
        return ""
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind", "")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise TowerGPTError(f"{path}: 不是合法的 JSON 对象（删掉它，医生会改用猜的）"
                            f" / not a JSON object (delete it and the doctor will guess the kind)") from None
    return kind if isinstance(kind, str) else ""


def detect_run_kind(recorded: str, config: dict, rows: list[dict]) -> tuple[str, str]:
    """返回 (种类, 来源)。来源是 "run.json" / "metrics"（看指标名猜的）/ "config"（看 init_from 猜的）。

    rows 是 metrics.jsonl 的行（训练行与评估行都行，只看训练行）。
    """
    if recorded:
        return recorded, RUN_KIND_FILE
    if any("rewards/margin" in row for row in rows):
        return "dpo", "metrics"
    if any("mask_fraction" in row for row in rows):
        return "sft", "metrics"
    if any(GRPO_METRIC in row for row in rows):
        return "grpo", "metrics"
    if any(set(row) - LOOP_COLUMNS - KNOWN_METRICS for row in rows if "loss" in row):
        return "unknown", "metrics"
    if config.get("init_from"):
        return "sft", "config"
    return "pretrain", "config"
