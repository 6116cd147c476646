"""给 lm-evaluation-harness（`pip install lm-eval`）用的本地任务定义。

    towergpt_sentiment/   quickstart 的情感任务：留出的 1000 条评论，二选一（“正面” / “负面”）

lm-eval 不认识 TowerGPT；它只读一个目录里的任务 YAML。把这个目录交给它：

    lm_eval --model hf --model_args pretrained=导出的目录 \\
        --include_path "$(python -m towergpt.lm_eval_tasks)" --tasks towergpt_sentiment

`python -m towergpt.lm_eval_tasks` 只打印这个目录的路径（装在 site-packages 里时不用自己去找）。
这里的文件只有 lm-eval 会读；TowerGPT 本身不依赖 lm-eval。详见 docs/evaluate.md。
"""

from __future__ import annotations

from pathlib import Path


def include_path() -> Path:
    """交给 `lm_eval --include_path` 的目录：lm-eval 会在下面递归地找所有任务 YAML。"""
    return Path(__file__).resolve().parent
