"""`towergpt import --from-hf DIR --out RUN_DIR`：把 Llama 结构的 HF 检查点变成 TowerGPT 的运行目录。

输入目录需要：
    config.json                    model_type 为 llama（不带偏置、不带 RoPE 缩放、激活函数 silu）
    model.safetensors              或分片的 model-0000x-of-0000y.safetensors + model.safetensors.index.json
    tokenizer.model                SentencePiece 分词器，且含 TowerGPT 的 6 个特殊 piece

输出的运行目录与训练得到的一样：
    RUN_DIR/checkpoints/step_00000000/   model.safetensors + config.json + tokenizer.model
    RUN_DIR/checkpoints/latest           指向上面那个检查点
    RUN_DIR/config.yaml                  模型结构（其余各节为默认值），可作继续训练配置的起点
于是 `towergpt chat --ckpt RUN_DIR`、`towergpt sft`（init_from: RUN_DIR）都能直接用。

权重一律转成 float32 保存：TowerGPT 训练时的主权重就是 float32。
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from towergpt.checkpoint import LATEST_FILE, read_config_json, save_model_files
from towergpt.config import RunConfig, save_config
from towergpt.errors import TowerGPTError
from towergpt.hf.llama_format import from_llama_tensors, gpt_config_from_llama
from towergpt.model import GPT
from towergpt.output_dir import check_out_dir, staged_output
from towergpt.tokenizer import Tokenizer
from towergpt.train.checkpointing import checkpoint_name


def main(args: argparse.Namespace) -> None:
    run_dir = import_hf(args.from_hf, args.out, max_seq_len=args.max_seq_len, overwrite=args.overwrite)
    print(f"已导入 / imported: {run_dir}")
    print(f"  聊天 / chat: towergpt chat --ckpt {run_dir}")


def import_hf(source: str | Path, out: str | Path, max_seq_len: int | None = None, overwrite: bool = False) -> Path:
    """读 HF Llama 目录，写出 TowerGPT 运行目录，返回它。"""
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise TowerGPTError(f"找不到 HF 模型目录 / Hugging Face model dir not found: {source} (--from-hf)")
    if max_seq_len is not None and max_seq_len < 1:
        raise TowerGPTError(f"--max-seq-len 必须是正整数 / must be positive, got {max_seq_len}")
    check_out_dir(out, overwrite, "--out", inputs=[source])
    tokenizer = read_tokenizer(source)
    model = read_model(source, max_seq_len)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TowerGPTError(
            f"{source}: 分词器词表 ({tokenizer.vocab_size}) 大于模型词表 vocab_size ({model.config.vocab_size})"
            f" / the tokenizer is larger than the model's vocabulary"
        )
    with staged_output(out) as staging:
        checkpoints = staging / "checkpoints"
        step_dir = checkpoint_name(0)   # 与训练写出的第 0 步检查点同名：checkpoints/step_00000000
        save_model_files(model, tokenizer, checkpoints / step_dir)
        (checkpoints / LATEST_FILE).write_text(step_dir + "\n", encoding="utf-8")
        run_config = RunConfig(model=model.config)
        run_config.train.out_dir = str(out)
        save_config(run_config, staging / "config.yaml")
    return out


def read_tokenizer(source: Path):
    """读 tokenizer.model；不是 SentencePiece、缺特殊 piece、与导出时的指纹不符，都说清楚。"""
    model_path = source / "tokenizer.model"
    if not model_path.is_file():
        found = "只有 tokenizer.json（多半是字节级 BPE，例如 GPT-2 / Llama 3 / Qwen 的分词器）" \
            if (source / "tokenizer.json").is_file() else "没有任何分词器文件"
        raise TowerGPTError(
            f"{model_path} 不存在：{found}。TowerGPT 只能使用 SentencePiece 分词器（tokenizer.model）"
            f" / missing {model_path}: TowerGPT needs a SentencePiece tokenizer.model"
            f" (tokenizer.json-only tokenizers such as byte-level BPE are not supported)"
        )
    try:
        tokenizer = Tokenizer(model_path.read_bytes(), source=str(model_path))
    except TowerGPTError as error:
        raise TowerGPTError(
            f"{error}。TowerGPT 的分词器必须含有 <unk> <s> </s> <pad> <|im_start|> <|im_end|> 六个特殊 piece"
            f" / a TowerGPT tokenizer needs all six special pieces"
        ) from None
    expected = _exported_fingerprint(source)
    if expected is not None and expected != tokenizer.fingerprint:
        raise TowerGPTError(
            f"{model_path}: 与 tokenizer_config.json 里记录的 towergpt_tokenizer_sha256 不一致，导出后被换过"
            f" / tokenizer.model differs from the one recorded at export"
        )
    return tokenizer


def _exported_fingerprint(source: Path) -> str | None:
    """TowerGPT 导出的目录在 tokenizer_config.json 里记了 tokenizer.model 的 sha256；别处来的没有。"""
    path = source / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TowerGPTError(f"{path}: 无法读取 / unreadable: {error}") from None
    return config.get("towergpt_tokenizer_sha256") if isinstance(config, dict) else None


def read_model(source: Path, max_seq_len: int | None):
    """config.json + safetensors 权重 → 载好权重的 GPT（float32，eval 模式）。"""
    config_path = source / "config.json"
    config = gpt_config_from_llama(read_config_json(config_path), str(config_path), max_seq_len)
    tensors = {name: tensor.to(torch.float32) for name, tensor in read_safetensors(source).items()}
    state = from_llama_tensors(tensors, config, str(source))
    model = GPT(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = str(error).strip().splitlines()[-1].strip()
        raise TowerGPTError(
            f"{source}: 权重形状与 config.json 不符 / weights do not match config.json: {detail}"
        ) from None
    return model.eval()


def read_safetensors(source: Path) -> dict:
    """读单个 model.safetensors，或按 model.safetensors.index.json 读全部分片。"""
    index_path = source / "model.safetensors.index.json"
    if (source / "model.safetensors").is_file():
        files = [source / "model.safetensors"]
    elif index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise TowerGPTError(f"{index_path}: 无法读取 weight_map / unreadable weight_map: {error}") from None
        files = [source / name for name in sorted(set(weight_map.values()))]
    else:
        pickled = any(source.glob("*.bin")) or any(source.glob("*.pt"))
        hint = "（只找到 .bin/.pt：pickle 格式加载时可能执行任意代码，请先转成 safetensors）" if pickled else ""
        raise TowerGPTError(
            f"{source}: 找不到 model.safetensors 或 model.safetensors.index.json{hint}"
            f" / no safetensors weights found (pickled .bin checkpoints are not loaded)"
        )
    tensors = {}
    for path in files:
        try:
            tensors.update(load_file(str(path)))
        except FileNotFoundError:
            raise TowerGPTError(f"{path}: 分片文件不存在 / shard not found") from None
        except Exception as error:  # safetensors 的错误类型是 SafetensorError，不便导入
            raise TowerGPTError(f"{path}: 不是有效的 safetensors 文件 / invalid safetensors: {error}") from None
    return tensors
