"""各章画图共用的小工具：中文字体、统一的尺寸、保存。不是一张图，所以没有 FIGURES。"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "WenQuanYi Zen Hei", "Source Han Sans SC", "SimHei",
             "Microsoft YaHei", "PingFang SC")


def setup() -> None:
    """有中文字体就用它（没有时汉字显示成方框，数字和曲线不受影响）。"""
    installed = {font.name for font in font_manager.fontManager.ttflist}
    chosen = [name for name in CJK_FONTS if name in installed]
    plt.rcParams["font.sans-serif"] = chosen + ["DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False


def figure(width: float = 6.4, height: float = 3.6):
    setup()
    return plt.subplots(figsize=(width, height), dpi=100)


def save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
