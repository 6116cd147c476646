"""分词器：把 TowerGPT 的 SentencePiece 模型写成 llama.cpp 的 “llama”（SPM）词表。

llama.cpp 不读 tokenizer.model，它读 GGUF 里的几张并列的表（第 i 项都描述 id = i 的 token）：

    tokenizer.ggml.tokens       piece 的文字，原样照抄（空格写作“▁”，字节 piece 写作 <0x0A>）
    tokenizer.ggml.scores       SentencePiece 的分数：BPE 合并时“拼起来分数最高”的一对先合并
    tokenizer.ggml.token_type   种类，与 SentencePiece 的编号相同：
                                1 普通  2 <unk>  3 控制 token（<s> </s> <pad> <|im_start|> <|im_end|>）
                                5 未用（补齐词表用）  6 字节 piece（词表外的字按 UTF-8 字节拼出来）

再加上几个开关，让 llama.cpp 的切分与 TowerGPT 完全一致：
    add_bos_token = true      编码时在开头加 <s>（预训练时每篇文档就以 <s> 开头）
    add_space_prefix = false  不在文本前补“▁”（llama.cpp 默认按 Llama 的老习惯补，我们训练时没补）
    eot_token_id = <|im_end|> 对话里助手说完一轮的标记：llama.cpp 把它和 </s> 都当作“该停了”

对话模板写进 tokenizer.chat_template（Jinja，和导出给 transformers 的是同一段），
llama.cpp 的 llama-server --jinja、llama-cpp-python 的 create_chat_completion 都用它。
"""

from __future__ import annotations

from dataclasses import dataclass

import gguf

from towergpt.hf.tokenizer_files import CHAT_TEMPLATE, UNUSED, check_convertible, read_sentencepiece_proto


@dataclass
class GGUFVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]


def gguf_vocab(tokenizer_model_bytes: bytes, vocab_size: int, source: str = "tokenizer.model") -> GGUFVocab:
    """tokenizer.model 的字节 → 三张表。模型的词表比分词器大时（为了对齐而补大的词表），补上“未用”的 token。"""
    proto = read_sentencepiece_proto(tokenizer_model_bytes, source)
    check_convertible(proto, source, target="GGUF")
    vocab = GGUFVocab(tokens=[piece.piece for piece in proto.pieces],
                      scores=[piece.score for piece in proto.pieces],
                      types=[piece.type for piece in proto.pieces])
    for index in range(len(vocab.tokens), vocab_size):
        vocab.tokens.append(f"[PAD{index}]")   # 这些 id 从不出现在数据里；llama.cpp 要求每个 id 都有一项
        vocab.scores.append(-1000.0)
        vocab.types.append(UNUSED)
    return vocab


def write_vocab(writer: gguf.GGUFWriter, vocab: GGUFVocab, tokenizer) -> None:
    """把词表、特殊 token、开关和对话模板写进 GGUF 的元数据。"""
    writer.add_tokenizer_model("llama")       # llama.cpp 的 SPM 分词器
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(tokenizer.bos_id)
    writer.add_eos_token_id(tokenizer.eos_id)
    writer.add_unk_token_id(tokenizer.unk_id)
    writer.add_pad_token_id(tokenizer.pad_id)
    writer.add_eot_token_id(tokenizer.im_end_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_remove_extra_whitespaces(False)
    writer.add_chat_template(CHAT_TEMPLATE)
