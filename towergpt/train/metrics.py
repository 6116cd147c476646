"""训练指标：每行一个 JSON 的 metrics.jsonl，加上 TensorBoard 事件文件。

metrics.jsonl 人和程序都容易读（`towergpt plot` 就读它）；TensorBoard 适合边训边看曲线：
    tensorboard --logdir runs/
续训时，把“最后一个检查点之后”被中断的那次运行写下的行删掉，曲线不会出现重复的步。
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

try:
    from torch.utils.tensorboard import SummaryWriter
except ImportError:  # tensorboard 是依赖，但可能被单独卸掉：没有它照样训练，只是不写 TensorBoard 日志
    SummaryWriter = None

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """写 metrics.jsonl 和 TensorBoard；只在主进程（rank 0）上创建。"""

    def __init__(self, run_dir: Path, resume_step: int = 0):
        self.path = Path(run_dir) / METRICS_FILE
        truncate_after(self.path, resume_step)
        self.file = open(self.path, "a", encoding="utf-8")
        self.tensorboard = _open_tensorboard(Path(run_dir) / "tensorboard", resume_step)

    def log(self, row: dict) -> None:
        """写一行；非有限的浮点数（NaN/inf）写成 null，保证文件始终是合法 JSON。"""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self.file.write(json.dumps(clean, ensure_ascii=False) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            step = row["step"]
            for key, value in clean.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def truncate_after(path: Path, step: int) -> None:
    """删掉 step 之后的行（续训时用）；step=0 表示新的运行，整个文件清空。"""
    if not path.exists():
        return
    kept = []
    if step > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # 被 kill 时写了一半的行
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def read_metrics(path: Path) -> list[dict]:
    """读 metrics.jsonl（跳过写了一半的最后一行）。"""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _open_tensorboard(directory: Path, resume_step: int):
    if SummaryWriter is None:
        warnings.warn("未安装 tensorboard，跳过 TensorBoard 日志 / tensorboard not installed", stacklevel=2)
        return None
    # purge_step：续训时丢弃该步之后的旧事件，避免曲线重复
    return SummaryWriter(str(directory), purge_step=resume_step + 1 if resume_step else None)
