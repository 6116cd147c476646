"""`towergpt lora merge --ckpt RUN --out DIR`：把一个 LoRA 运行合并成一个普通检查点。

合并 = 每个装了 LoRA 的矩阵 W' = W + (α/r)·B·A（见 layer.py）。结果是一个完整的、不依赖底座的检查点：
可以拷到别的机器、发给别人、当作下一次训练的 init_from，与任何普通检查点没有区别。
（不合并也能直接用：generate / chat / serve / eval / export 载入 LoRA 运行时会自动合并，只是需要底座还在原处。）
"""

from __future__ import annotations

from pathlib import Path

from towergpt.checkpoint import load, resolve_checkpoint, save_model_files
from towergpt.errors import TowerGPTError
from towergpt.lora.files import is_lora_checkpoint
from towergpt.output_dir import check_out_dir, staged_output


def merge_checkpoint(ckpt: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """把 ckpt（LoRA 运行或它的一个检查点）合并后写到 out，返回 out。"""
    directory = resolve_checkpoint(ckpt)
    if not is_lora_checkpoint(directory):
        raise TowerGPTError(f"{directory} 不是 LoRA 检查点（没有 lora.json），本来就是普通检查点，不需要合并"
                            f" / not a LoRA checkpoint: nothing to merge")
    out = Path(out)
    check_out_dir(out, overwrite, "--out", inputs=[directory])
    model, tokenizer = load(directory)          # 载入时已找到底座、核对 sha256、合并
    with staged_output(out) as staging:
        save_model_files(model, tokenizer, staging)
    return out


def main(args) -> None:
    out = merge_checkpoint(args.ckpt, args.out, args.overwrite)
    print(f"已合并成普通检查点 / merged into an ordinary checkpoint: {out}")
