"""`towergpt export --ckpt RUN --format ollama --out DIR`：GGUF + Modelfile，给 Ollama 用。

Ollama 把一个模型描述成一个 Modelfile（纯文本，一行一条指令）：

    FROM ./model.gguf            权重和分词器（就是 --format gguf 写出的文件）
    TEMPLATE \"\"\"...\"\"\"           对话格式：Ollama 用 Go 的 text/template 语法把消息拼成一段文字
    PARAMETER stop "..."         生成到这些文字就停
    PARAMETER temperature 0.7    默认采样参数（与 towergpt chat 的默认值相同）
    PARAMETER num_ctx 256        上下文长度：模型只在这么长的序列上训练过，更长 RoPE 就出了训练范围

模板必须与 TowerGPT 训练时的对话格式（chat_template.render_chat）逐 token 相同：

    <s><|im_start|>system\\n…<|im_end|>\\n<|im_start|>user\\n…<|im_end|>\\n<|im_start|>assistant\\n

Ollama 的做法（也是测试里核对的规则）：把 TEMPLATE 渲染成文字，再用 GGUF 里的分词器编码——
文字里的 <|im_start|>、<|im_end|> 被认成特殊 token，开头的 <s> 由分词器按 add_bos_token 自动加上。
所以模板里不写 <s>。系统提示（SYSTEM 指令或请求里的 system 消息）在 .Messages 里是 role 为
system 的一条，与其他消息同样处理。

导入并运行：

    ollama create towergpt -f DIR/Modelfile
    ollama run towergpt "这条评论是正面还是负面？质量很好"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.llamacpp.export_gguf import _run_name, parse_dtype, write_gguf
from towergpt.output_dir import check_out_dir, staged_output
from towergpt.tokenizer import EOS_PIECE, IM_END_PIECE, IM_START_PIECE

GGUF_NAME = "model.gguf"

# Go 模板：{{ range .Messages }} 逐条消息，{{ .Role }} / {{ .Content }} 是这条消息的角色和正文。
# "{{-" 删掉它前面的空白；这里只用在开头，模板里的换行都是对话格式的一部分，一个也不能多、不能少。
TEMPLATE = (
    "{{- range .Messages }}" + IM_START_PIECE + "{{ .Role }}\n{{ .Content }}" + IM_END_PIECE + "\n{{ end }}"
    + IM_START_PIECE + "assistant\n"
)
# 停止词：助手一轮结束（<|im_end|>），或模型开始替用户说话（<|im_start|>），或文档结束（</s>）
STOP_WORDS = (IM_END_PIECE, IM_START_PIECE, EOS_PIECE)
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "repeat_penalty": 1.1}   # towergpt chat 的默认值


def main(args: argparse.Namespace) -> None:
    out, notes = export_ollama(args.ckpt, args.out, dtype=args.dtype or "f16", overwrite=args.overwrite)
    for note in notes:
        print(note)
    print(f"已导出 Ollama 模型 / exported: {out}（{GGUF_NAME} + Modelfile）")
    print(f"  ollama create {out.name} -f {out / 'Modelfile'}")
    print(f"  ollama run {out.name}")


def export_ollama(ckpt: str | Path, out: str | Path, dtype: str = "f16",
                  overwrite: bool = False) -> tuple[Path, list[str]]:
    """写出 DIR/model.gguf 和 DIR/Modelfile。返回 (目录, 提示)。"""
    dtype = parse_dtype(dtype)
    out = Path(out)
    directory = resolve_checkpoint(ckpt)
    check_out_dir(out, overwrite, "--out", inputs=[directory], marker="Modelfile")
    model, tokenizer = load(directory)
    with staged_output(out) as staging:
        notes = write_gguf(model, tokenizer, (directory / "tokenizer.model").read_bytes(),
                           staging / GGUF_NAME, dtype, name=_run_name(directory))
        (staging / "Modelfile").write_text(modelfile(model.config.max_seq_len), encoding="utf-8")
    return out, notes


def modelfile(context_length: int) -> str:
    """Modelfile 的全文。TEMPLATE 用三引号，里面的换行原样保留。"""
    lines = [
        "# TowerGPT 导出 / exported by `towergpt export --format ollama`",
        "# 用法 / usage: ollama create NAME -f Modelfile && ollama run NAME",
        f"FROM ./{GGUF_NAME}",
        f'TEMPLATE """{TEMPLATE}"""',
        *(f'PARAMETER stop "{word}"' for word in STOP_WORDS),
        *(f"PARAMETER {name} {value}" for name, value in SAMPLING.items()),
        f"PARAMETER num_ctx {context_length}",
    ]
    return "\n".join(lines) + "\n"

