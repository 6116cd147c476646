"""TowerGPT：从零训练并读懂一个中文 GPT。

    from towergpt import load
    model, tokenizer = load("runs/quickstart")   # 运行目录或检查点目录
"""

__version__ = "0.1.0"


def load(path, device="cpu"):
    """载入检查点，返回 (model, tokenizer)。path 可以是运行目录（取最新检查点）或检查点目录。"""
    from towergpt.checkpoint import load as load_checkpoint

    return load_checkpoint(path, device)


__all__ = ["load", "__version__"]
