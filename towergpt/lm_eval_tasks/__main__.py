"""`python -m towergpt.lm_eval_tasks`：打印任务目录，供 `lm_eval --include_path "$(...)"` 使用。

标准输出只有这一行路径，这样才能直接放进 $(...)；用法提示写到标准错误。
"""

import sys

from towergpt.lm_eval_tasks import include_path

if __name__ == "__main__":
    print(include_path())
    if sys.stderr.isatty():
        print("用法 / usage: lm_eval --model hf --model_args pretrained=DIR "
              "--include_path \"$(python -m towergpt.lm_eval_tasks)\" --tasks towergpt_sentiment",
              file=sys.stderr)
