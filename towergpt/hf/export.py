"""`towergpt export --ckpt DIR --format hf --out DIR`：导出为 Hugging Face 格式。

导出的目录不需要任何自定义代码，`transformers` 直接就能用：

    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(目录)      # LlamaForCausalLM
    tokenizer = AutoTokenizer.from_pretrained(目录)

目录里的文件：
    config.json               模型结构（Llama 的字段名，见 hf/llama_format.py 的对照表）
    model.safetensors         权重（q/k/v 已从我们合并的 qkv 里切开）
    generation_config.json    生成时的默认值：遇到 </s> 或 <|im_end|> 停下
    tokenizer.json            HF 快速分词器的完整流水线（见 hf/tokenizer_files.py），id 与 TowerGPT 逐个相同
    tokenizer.model           SentencePiece 原文件：llama.cpp 的 convert_hf_to_gguf.py 读它
    tokenizer_config.json     特殊 token、对话模板（Jinja 的 chat_template）
    special_tokens_map.json   旧版 transformers 读的特殊 token 表

注意同名文件：TowerGPT 检查点里的 tokenizer.json 是我们自己的“分词器摘要”；
导出目录里的 tokenizer.json 是 HF 格式的分词器，两者不是一回事（摘要里的指纹
改存在 tokenizer_config.json 的 towergpt_tokenizer_sha256 里）。

先在一个临时目录里写好全部文件，最后一步改名：中途出错不会留下半个导出目录。
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.errors import TowerGPTError
from towergpt.hf.llama_format import llama_config, to_llama_tensors
from towergpt.hf.tokenizer_files import build_tokenizer_json, special_tokens_map, tokenizer_config
from towergpt.output_dir import apply_umask, check_out_dir, staged_output

DTYPES = ("float32", "bfloat16", "float16")
ALIASES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}   # 与 --format gguf 的写法通用


def main(args: argparse.Namespace) -> None:
    dtype = ALIASES.get(args.dtype, args.dtype) or "float32"
    out = export_hf(args.ckpt, args.out, dtype=dtype, overwrite=args.overwrite)
    print(f"已导出 Hugging Face 格式 / exported: {out}")
    print(f"  载入 / load: AutoModelForCausalLM.from_pretrained({str(out)!r})")


def export_hf(ckpt: str | Path, out: str | Path, dtype: str = "float32", overwrite: bool = False) -> Path:
    """把检查点导出成 HF Llama 目录，返回输出目录。所有用户能改正的问题抛 TowerGPTError。"""
    if dtype not in DTYPES:
        raise TowerGPTError(f"--dtype {dtype!r} 不支持，可选 / choose one of: {', '.join(DTYPES)}")
    out = Path(out)
    directory = resolve_checkpoint(ckpt)
    check_out_dir(out, overwrite, "--out", inputs=[directory])
    model, tokenizer = load(directory)
    with staged_output(out) as staging:
        write_hf_files(model, tokenizer, (directory / "tokenizer.model").read_bytes(), staging, dtype)
    return out


def write_hf_files(model, tokenizer, tokenizer_model_bytes: bytes, out: Path, dtype: str) -> None:
    """把模型和分词器的 HF 文件写进（已存在的）目录 out。"""
    config = model.config
    write_tokenizer_files(tokenizer, tokenizer_model_bytes, config.max_seq_len, out)  # 先做：分词器转不了就别写权重
    hf_config = llama_config(config.to_dict(), tokenizer, dtype)
    tensors = to_llama_tensors(model.state_dict(), config)
    tensors = {name: tensor.to(getattr(torch, dtype)) for name, tensor in tensors.items()}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})  # format=pt：transformers 要求
    apply_umask(out / "model.safetensors")
    _write_json(out / "config.json", hf_config)
    _write_json(out / "generation_config.json", {
        "bos_token_id": tokenizer.bos_id,
        # 普通续写到 </s> 结束；对话里助手一轮以 <|im_end|> 结束：两个都算“说完了”
        "eos_token_id": [tokenizer.eos_id, tokenizer.im_end_id],
        "pad_token_id": tokenizer.pad_id,
    })


def write_tokenizer_files(tokenizer, tokenizer_model_bytes: bytes, max_length: int, out: Path) -> None:
    """只写分词器的四个文件（HF 的 tokenizer.json、tokenizer_config.json、special_tokens_map.json 和 tokenizer.model）。"""
    _write_json(out / "tokenizer.json", build_tokenizer_json(tokenizer_model_bytes, "tokenizer.model"))
    (out / "tokenizer.model").write_bytes(tokenizer_model_bytes)
    _write_json(out / "tokenizer_config.json", tokenizer_config(max_length, tokenizer.fingerprint))
    _write_json(out / "special_tokens_map.json", special_tokens_map())


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
