"""检视器：看一个训练好的模型“里面”在做什么（`towergpt inspect`，以及 `towergpt serve` 的 /inspect 网页）。

    tokens.py     文本 / 对话 → token 表（piece、id、种类、在原文的位置、是不是模板 token）
    walk.py       用模型自己的子模块一层层走一遍，留下残差流和显式的注意力权重
    report.py     组装成一个 JSON 对象：下一词预测与惊讶度、注意力、logit lens（格式见 docs/inspect.md）
    terminal.py   在终端里把它读出来
    cli.py        `towergpt inspect` 命令

检视器只读模型，不改模型、不挂 hook，也不需要训练器：推理那一侧的东西（见 docs/architecture.md）。
"""

from towergpt.inspect.report import SCHEMA, inspect_chat, inspect_text

__all__ = ["SCHEMA", "inspect_chat", "inspect_text"]
