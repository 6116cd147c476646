"""quickstart 的续写示例该用什么解码设置：数一数每种设置下有多少条续写在打转（demo/samples.find_loop）。

    python bench/sample_loops.py RUN_DIR [RUN_DIR ...]

RUN_DIR 是预训练的运行目录（例如 bench/quickstart_sweep.py 的 WORK/runs/NAME/pretrain）。
对 16 个开头（新闻和评论各半），每种设置续写 60 个 token；采样的设置用 3 个种子。
输出每种设置“打转的条数 / 总条数”，结果写进 docs/training.md。
"""

from __future__ import annotations

import argparse

from towergpt.checkpoint import load
from towergpt.demo.samples import PROMPTS, continue_prompts

MORE_PROMPTS = PROMPTS + [
    "据新华社报道，", "经济发展", "记者从有关部门获悉，", "在新的一年里，", "外交部发言人",
    "这家酒店", "房间很干净，", "质量太差了", "物流很快，", "服务员的态度", "电脑用了一个月", "总的来说，",
]
SETTINGS = {
    "greedy": dict(temperature=0.0),
    "greedy_rp1.2": dict(temperature=0.0, repetition_penalty=1.2),
    "greedy_rp1.3": dict(temperature=0.0, repetition_penalty=1.3),
    "greedy_rp1.5": dict(temperature=0.0, repetition_penalty=1.5),
    "greedy_nr3": dict(temperature=0.0, no_repeat_ngram=3),
    "greedy_rp1.2_nr3": dict(temperature=0.0, repetition_penalty=1.2, no_repeat_ngram=3),
    "greedy_rp1.3_nr3": dict(temperature=0.0, repetition_penalty=1.3, no_repeat_ngram=3),
    "greedy_rp1.2_nr2": dict(temperature=0.0, repetition_penalty=1.2, no_repeat_ngram=2),
    "top_p0.9": dict(temperature=0.8, top_p=0.9),
    "top_p0.9_rp1.1": dict(temperature=0.8, top_p=0.9, repetition_penalty=1.1),
    "top_p0.9_rp1.1_nr3": dict(temperature=0.8, top_p=0.9, repetition_penalty=1.1, no_repeat_ngram=3),
}
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    args = parser.parse_args()
    for run in args.runs:
        model, tokenizer = load(run)
        print(run)
        for name, settings in SETTINGS.items():
            seeds = SEEDS if settings["temperature"] > 0 else (None,)
            decoding = {f"{name}@{seed}": dict(settings, seed=seed) for seed in seeds}
            rows = continue_prompts(model, tokenizer, MORE_PROMPTS, decoding)
            loops = sum(len(row["loops"]) for row in rows)
            total = len(rows) * len(decoding)
            example = next((row[row["loops"][0]] for row in rows if row["loops"]), "")
            print(f"  {name:16s} {loops:2d}/{total} 打转 / loop   {example[:40]}")


if __name__ == "__main__":
    main()
