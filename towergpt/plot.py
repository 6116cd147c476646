"""`towergpt plot`：把一个或几个运行的训练曲线画在同一张图上。

    towergpt plot runs/vocab2500 runs/vocab6000 --out compare.png              # 默认：验证集 bpc，横轴 token 数
    towergpt plot runs/tiny --metric loss --out tiny.png                       # 训练损失 + 验证损失

数据来自每个运行目录里的 metrics.jsonl（训练循环写的，一行一个 JSON）：
    训练行  {"step": 10, "tokens": 20480, "loss": 7.1, ...}
    评估行  {"step": 30, "val_loss": 6.3, "val_ppl": 545.0, "val_bpc": 8.4}     ← 没有 tokens
评估行没有 tokens，就用训练行里“第几步时见过多少 token”换算（两次记录之间按线性插值）。

为什么横轴默认用“见过的 token 数”而不是步数？两次运行的批大小可能不同，
同样的第 100 步，一个看了 10 万个 token，另一个看了 100 万个；按 token 数比才公平。
为什么比较不同分词器时要看 val_bpc 而不是 val_loss？见 docs/evaluate.md。

中文标签需要中文字体：找到了就用中文，找不到就用英文标签并提示安装哪个包。
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from towergpt.errors import TowerGPTError, where

METRICS_FILE = "metrics.jsonl"

# 常见的中文字体（matplotlib 里的字体族名），按偏好排列
CJK_FONT_NAMES = [
    "Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Micro Hei",
    "WenQuanYi Zen Hei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Hiragino Sans GB", "SimHei",
    "Sarasa Gothic SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "AR PL UMing CN", "Arial Unicode MS",
]
# 字体文件名里的这些片段说明它很可能是中文字体（刚装好、还没进 matplotlib 缓存的字体靠它找到）
CJK_FILE_HINTS = ("notosanscjk", "notoserifcjk", "notosanssc", "sourcehansans", "wqy", "wenquanyi", "msyh",
                  "simhei", "pingfang", "hiragino", "sarasa", "uming", "ukai", "droidsansfallback")

# 每种指标：(中文名, 英文名)；loss 同时画训练和验证两条线
METRICS = {
    "val_bpc": ("验证集每字符比特数 bpc", "validation bits per character"),
    "val_loss": ("验证集损失 (nat/token)", "validation loss (nats/token)"),
    "loss": ("损失 (nat/token)", "loss (nats/token)"),
    "reward": ("奖励（每个回答的平均）", "reward (mean per answer)"),
}
# 画两条线的指标：(训练行的键, 评估行的键)。强化学习的奖励：训练时是采样回答的平均，验证时是贪心作答的平均
PAIRED = {"loss": ("loss", "val_loss"), "reward": ("reward/mean", "val_reward/mean")}
X_AXES = {"tokens": ("见过的 token 数", "tokens seen"), "step": ("训练步数", "step")}


# ---------------------------------------------------------------------------
# 命令行
# ---------------------------------------------------------------------------

def main(args: argparse.Namespace) -> None:
    """命令行入口：读各运行的指标，画图，存到 --out。"""
    path = plot_runs(args.runs, args.out, metric=args.metric, x_axis=args.x, labels=args.labels, title=args.title)
    print(f"已保存 / saved: {path}")


# ---------------------------------------------------------------------------
# 读 metrics.jsonl
# ---------------------------------------------------------------------------

def metrics_path(run: str | Path) -> Path:
    """RUN 可以是运行目录，也可以直接是 metrics.jsonl 文件。"""
    run = Path(run)
    if not run.exists():
        raise TowerGPTError(f"找不到运行目录 / run directory not found: {run}")
    path = run if run.is_file() else run / METRICS_FILE
    if not path.is_file():
        raise TowerGPTError(f"{run} 里没有 {METRICS_FILE}，它不像是一个训练运行目录"
                            f" / no {METRICS_FILE} in {run}: not a training run directory")
    return path


def read_rows(path: Path) -> list[dict]:
    """逐行读 metrics.jsonl；坏行报出文件和行号。

    唯一的例外：最后一行没有换行符又解析不了——那是训练进程正写到一半（或写到一半被杀），
    跳过它并提醒一句，而不是让一张正在训练的运行的图画不出来。
    """
    rows = []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not text.endswith("\n"):
                print(f"警告 / warning: {where(path, number)} 只写了一半，已跳过 / incomplete last line skipped",
                      file=sys.stderr)
                continue
            raise TowerGPTError(f"{where(path, number)}: 不是合法的 JSON / invalid JSON: {err.msg}") from None
        if not isinstance(row, dict):
            raise TowerGPTError(f"{where(path, number)}: 每行应是一个 JSON 对象 / each line must be a JSON object")
        if not isinstance(row.get("step"), int):
            raise TowerGPTError(f"{where(path, number, 'step')}: 缺少整数的 step / missing integer 'step'")
        rows.append(row)
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def curve(rows: list[dict], key: str, x_axis: str) -> tuple[list[float], list[float]]:
    """取出一条曲线的 (横坐标, 纵坐标)，按步数排序；值为 null / NaN 的点跳过。

    x_axis="tokens" 时，行里没有 tokens（评估行）就用训练行换算，见 tokens_at。
    """
    points = sorted((row["step"], row[key], row.get("tokens")) for row in rows if _finite(row.get(key)))
    if x_axis == "step":
        return [step for step, _, _ in points], [value for _, value, _ in points]
    known = sorted({(row["step"], row["tokens"]) for row in rows if _finite(row.get("tokens"))})
    xs = [tokens if _finite(tokens) else tokens_at(step, known) for step, _, tokens in points]
    return xs, [value for _, value, _ in points]


def tokens_at(step: int, known: list[tuple[int, float]]) -> float:
    """第 step 步时见过多少 token：在已知的 (步数, token 数) 之间线性插值（第 0 步是 0 个）。

    训练行每 log_every 步才记一行，评估行的步数不一定恰好有记录；每步的 token 数通常是常数，
    插值就是精确值。超出最后一行的部分按最后一行的“每步 token 数”外推。
    """
    if not known:
        raise TowerGPTError("指标里没有训练行，无法知道每一步见过多少 token；请用 --x step"
                            " / no training rows with 'tokens': use --x step")
    previous = (0, 0.0)
    for point in known:
        if point[0] >= step:
            low, high = previous, point
            if high[0] == low[0]:
                return float(high[1])
            return low[1] + (high[1] - low[1]) * (step - low[0]) / (high[0] - low[0])
        previous = point
    last_step, last_tokens = known[-1]
    return last_tokens / last_step * step if last_step else float(last_tokens)


# ---------------------------------------------------------------------------
# 画图
# ---------------------------------------------------------------------------

def plot_runs(runs: list, out: str | Path, metric: str = "val_bpc", x_axis: str = "tokens",
              labels: list[str] | None = None, title: str | None = None) -> Path:
    """把每个运行的 metric 曲线画在一张图上，存到 out，返回 out 的 Path。"""
    if metric not in METRICS:
        raise TowerGPTError(f"未知的指标 / unknown metric {metric!r}: {', '.join(METRICS)}")
    if labels is not None and len(labels) != len(runs):
        raise TowerGPTError(f"--labels 给了 {len(labels)} 个名字，但有 {len(runs)} 个运行"
                            f" / {len(labels)} labels for {len(runs)} runs")
    out = Path(out)
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise TowerGPTError(f"--out {out}: 请用 .png、.svg 或 .pdf 结尾 / must end in .png, .svg or .pdf")
    paths = [metrics_path(run) for run in runs]
    labels = labels or default_labels(paths)
    series = _collect(paths, labels, metric, x_axis)
    _draw(series, out, metric, x_axis, title)
    return out


def default_labels(paths: list[Path]) -> list[str]:
    """图例名默认是运行目录名；重名时（例如 a/pretrain 和 b/pretrain）带上上一级目录。"""
    directories = [path.resolve().parent for path in paths]
    names = [directory.name for directory in directories]
    if len(set(names)) == len(names):
        return names
    return [f"{directory.parent.name}/{directory.name}" for directory in directories]


def _collect(paths: list[Path], labels: list[str], metric: str, x_axis: str) -> list[dict]:
    """读出每个运行要画的线：loss 指标画训练和验证两条，其余只画一条。"""
    keys = list(zip(PAIRED[metric], ("train", "val"))) if metric in PAIRED else [(metric, "val")]
    series, seen_keys = [], set()
    for path, label in zip(paths, labels):
        rows = read_rows(path)
        seen_keys.update(key for row in rows for key in row)
        lines = []
        for key, kind in keys:
            xs, ys = curve(rows, key, x_axis)
            if xs:
                lines.append({"kind": kind, "x": xs, "y": ys})
        if lines:
            series.append({"label": label, "lines": lines})
        else:
            print(f"警告 / warning: {path} 里没有 {metric}，这个运行不画 / has no {metric}, skipped",
                  file=sys.stderr)
    if not series:
        available = ", ".join(sorted(key for key in seen_keys if key in METRICS)) or "无 / none"
        hint = "（没有评估行？训练时设 train.eval_every > 0）" if metric.startswith("val_") else ""
        raise TowerGPTError(f"所有运行里都没有 {metric}{hint}；可用的指标：{available}"
                            f" / no run has {metric}; metrics present: {available}")
    return series


def _draw(series: list[dict], out: Path, metric: str, x_axis: str, title: str | None) -> None:
    chinese = _use_cjk_font()
    pick = 0 if chinese else 1
    # 直接用 Figure 对象而不是 pyplot：不需要显示器，也不改动全局的绘图后端（服务器、CI、笔记本里都一样）
    figure = Figure(figsize=(7.5, 4.5), dpi=110)
    axes = figure.add_subplot()
    for index, run in enumerate(series):
        color = f"C{index}"
        for line in run["lines"]:
            if line["kind"] == "train":   # 训练损失每个批次都在抖：画细、画淡，验证曲线才是重点
                name = ("训练", "train")[pick]
                axes.plot(line["x"], line["y"], color=color, alpha=0.35, linewidth=1.0,
                          label=f"{run['label']} · {name}")
            else:
                name = ("验证", "val")[pick]
                suffix = f" · {name}" if metric in PAIRED else ""
                axes.plot(line["x"], line["y"], color=color, linewidth=2.0, marker="o", markersize=3.5,
                          label=f"{run['label']}{suffix}")
    axes.set_xlabel(X_AXES[x_axis][pick])
    axes.set_ylabel(METRICS[metric][pick])
    if x_axis == "tokens":
        axes.xaxis.set_major_formatter(FuncFormatter(_short_number))
    default_title = ("越低越好；bpc 不受分词器影响，可以直接比较", "lower is better; bpc is comparable across tokenizers")
    better = ("越高越好", "higher is better") if metric == "reward" else ("越低越好", "lower is better")
    axes.set_title(title or (default_title[pick] if metric == "val_bpc" else better[pick]))
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out)
    except OSError as err:
        raise TowerGPTError(f"{out}: 无法写入 / cannot write: {err.strerror or err}") from None


def _short_number(value: float, _position=None) -> str:
    """坐标轴刻度：1500000 -> 1.5M，20000 -> 20K。"""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def find_cjk_font() -> str | None:
    """找一个装好的中文字体，返回 matplotlib 的字体族名；没有就返回 None。

    matplotlib 把系统字体列表缓存在 ~/.cache/matplotlib 里，缓存建立之后新装的字体它看不见。
    所以缓存里找不到时，再扫一遍系统字体目录，把文件名像中文字体的加进来。
    """
    def installed() -> str | None:
        names = {entry.name for entry in font_manager.fontManager.ttflist}
        return next((name for name in CJK_FONT_NAMES if name in names), None)

    found = installed()
    if found:
        return found
    for path in font_manager.findSystemFonts():
        if any(hint in Path(path).name.lower().replace("-", "").replace("_", "") for hint in CJK_FILE_HINTS):
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError):
                continue
    return installed()


def _use_cjk_font() -> bool:
    """有中文字体就设为默认字体并返回 True；没有就提醒一句、返回 False（图里改用英文）。"""
    font = find_cjk_font()
    if font is None:
        print("警告 / warning: 没有找到中文字体，图中文字改用英文。要显示中文请安装一个："
              "Debian/Ubuntu `sudo apt-get install fonts-noto-cjk`（或 fonts-wqy-microhei），"
              "macOS `brew install --cask font-noto-sans-cjk-sc` / no CJK font found, labels are in English",
              file=sys.stderr)
        return False
    matplotlib.rcParams["font.sans-serif"] = [font, *matplotlib.rcParams["font.sans-serif"]]
    matplotlib.rcParams["font.family"] = "sans-serif"
    matplotlib.rcParams["axes.unicode_minus"] = False   # 不少中文字体没有数学减号“−”，用普通连字符
    return True
