"""重新生成课程里的全部插图：python docs/course/make_figures.py [--out DIR]

每张图由 docs/course/figures/ 里某个模块的 FIGURES 字典给出：{"文件名.png": 函数(path)}，函数把图画到 path。
图都是小 PNG（约 640 像素宽），用包自己的公开 API 算出要画的东西，matplotlib 画出来。
中文标签需要系统里有中文字体；没有时 matplotlib 会用方框代替汉字，图的内容不受影响。
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

COURSE = Path(__file__).resolve().parent


def all_figures() -> dict:
    """{文件名: 画图函数}，来自 figures/ 下的每个模块；两个模块给出同名的图就报错。"""
    found = {}
    for module_path in sorted((COURSE / "figures").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"course_figures_{module_path.stem}", module_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        for name, draw in getattr(module, "FIGURES", {}).items():
            if name in found:
                raise ValueError(f"图 {name} 在两个模块里都有 / figure defined twice")
            found[name] = draw
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(COURSE / "images"), help="输出目录，默认 docs/course/images")
    parser.add_argument("--only", help="只画文件名包含它的图")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in all_figures().items():
        if args.only and args.only not in name:
            continue
        draw(out / name)
        print(f"{out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
