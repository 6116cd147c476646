"""`towergpt export --ckpt RUN --format gguf --out model.gguf [--dtype f32|f16|q8_0]`

GGUF 是 llama.cpp（以及建在它上面的 Ollama、LM Studio、llama-cpp-python）读的单文件格式：

    文件头 ─ 元数据（键值对）─ 张量目录（名字、形状、类型、偏移）─ 对齐后的张量数据

元数据里写三类东西：
    1. 模型结构：llama.block_count、llama.embedding_length …… TowerGPT 的模型就是 Llama 结构，
       所以架构写 "llama"，llama.cpp 用它现成的 Llama 计算图（RMSNorm、RoPE、GQA、SwiGLU）；
    2. 分词器：SentencePiece 的每个 piece（gguf_vocab.py）；
    3. 对话模板和特殊 token。
写文件用 PyPI 上的 `gguf` 包：它就是 llama.cpp 仓库里的 gguf-py，llama.cpp 自己的转换脚本也用它。

精度（--dtype）只影响二维的矩阵；RMSNorm 的一维权重一律存 f32（它们很小，量化了反而伤精度）：
    f32    与训练保存的权重逐位相同
    f16    每个数 2 字节，文件减半
    q8_0   每 32 个数一组，存 32 个 int8 和一个 f16 的缩放系数：约 1.06 字节/数，接近 f32 的 1/4。
           矩阵的行长不是 32 的倍数时，这个矩阵退回 f16（会说出是哪几个）。
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gguf
import numpy as np
import torch

from towergpt.checkpoint import load, resolve_checkpoint
from towergpt.errors import TowerGPTError
from towergpt.llamacpp.gguf_tensors import gguf_tensors
from towergpt.llamacpp.gguf_vocab import gguf_vocab, write_vocab
from towergpt.output_dir import check_out_file, staged_file

Q = gguf.GGMLQuantizationType
# --dtype → (二维矩阵的存储类型, 写进 general.file_type 的“整个文件主要是什么精度”)
DTYPES = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
ALIASES = {"float32": "f32", "float16": "f16"}   # 与 --format hf 的写法通用


def main(args: argparse.Namespace) -> None:
    out, notes = export_gguf(args.ckpt, args.out, dtype=args.dtype or "f32", overwrite=args.overwrite)
    for note in notes:
        print(note)
    size = out.stat().st_size / 2**20
    print(f"已导出 GGUF / exported: {out}（{size:.1f} MiB）")
    print(f"  llama.cpp:  llama-cli -m {out} -cnv")
    print(f"  Python:     Llama(model_path={str(out)!r}).create_chat_completion(messages=[...])")


def export_gguf(ckpt: str | Path, out: str | Path, dtype: str = "f32",
                overwrite: bool = False) -> tuple[Path, list[str]]:
    """把检查点写成一个 GGUF 文件。返回 (文件路径, 给用户看的提示)。"""
    qtype = parse_dtype(dtype)
    out = Path(out)
    directory = resolve_checkpoint(ckpt)
    check_out_file(out, overwrite, "--out", inputs=[directory / "model.safetensors"])
    model, tokenizer = load(directory)
    with staged_file(out) as staging:
        notes = write_gguf(model, tokenizer, (directory / "tokenizer.model").read_bytes(), staging, qtype,
                           name=_run_name(directory))
    return out, notes


def parse_dtype(dtype: str) -> str:
    dtype = ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise TowerGPTError(
            f"--dtype {dtype!r} 不能用于 GGUF，可选 / choose one of: {', '.join(DTYPES)}"
        )
    return dtype


def write_gguf(model, tokenizer, tokenizer_model_bytes: bytes, path: Path, dtype: str, name: str) -> list[str]:
    """写出完整的 GGUF 文件。返回提示（例如哪些矩阵因为形状退回了 f16）。"""
    config = model.config
    vocab = gguf_vocab(tokenizer_model_bytes, config.vocab_size)   # 先做：分词器转不了就别写权重
    matrix_type, file_type = DTYPES[dtype]
    writer = gguf.GGUFWriter(path, arch="llama")
    write_architecture(writer, config, name, file_type)
    write_vocab(writer, vocab, tokenizer)
    fallbacks = []
    for tensor_name, tensor in gguf_tensors(model.state_dict(), config).items():
        array, stored = encode_tensor(tensor, matrix_type)
        if stored != matrix_type and tensor.dim() == 2:
            fallbacks.append(tensor_name)
        writer.add_tensor(tensor_name, array, raw_dtype=stored if stored not in (Q.F32, Q.F16) else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=config.n_layer * config.d_model >= 8192)  # 大模型才显示进度条
    writer.close()
    if not fallbacks:
        return []
    return [f"提示 / note: {len(fallbacks)} 个矩阵的行长不是 32 的倍数，存为 f16 而不是 {dtype}"
            f" / stored as f16: {', '.join(fallbacks[:4])}{' …' if len(fallbacks) > 4 else ''}"]


def write_architecture(writer: gguf.GGUFWriter, config, name: str, file_type) -> None:
    """llama.cpp 的 llama 结构要的超参数，一项对一项（GPTConfig 的字段名在右边）。"""
    writer.add_name(name)
    writer.add_context_length(config.max_seq_len)          # 训练时的最长上下文
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.ffn_hidden)      # SwiGLU 中间层宽度
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_kv_head)             # 小于 head_count 就是 GQA
    writer.add_rope_dimension_count(config.head_dim)       # 整个头都做旋转
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def encode_tensor(tensor: torch.Tensor, matrix_type) -> tuple[np.ndarray, object]:
    """一个张量 → (要写入的 numpy 数组, 存储类型)。一维权重、以及行长不是 32 倍数的 q8_0 矩阵除外。"""
    array = tensor.detach().float().cpu().numpy()
    if tensor.dim() == 1 or matrix_type == Q.F32:
        return array, Q.F32
    if matrix_type == Q.Q8_0 and array.shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0] == 0:
        return gguf.quants.quantize(array, Q.Q8_0), Q.Q8_0   # uint8 数组：每 32 个数 34 字节
    return array.astype(np.float16), Q.F16


def _run_name(directory: Path) -> str:
    """general.name：运行目录的名字（检查点目录 runs/x/checkpoints/step_… 取 x）。"""
    return directory.parent.parent.name if directory.parent.name == "checkpoints" else directory.name
