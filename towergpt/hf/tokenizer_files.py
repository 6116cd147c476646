"""把 TowerGPT 的 SentencePiece 分词器翻译成 Hugging Face 的分词器文件。

Hugging Face 的快速分词器（`tokenizers` 库，Rust 写的）读一个 `tokenizer.json`，
里面按顺序描述一条流水线：

    文本 ──► 特殊 token 切分 ──► normalizer（改写文本）──► pre_tokenizer（预切分）
         ──► model（BPE：词表 + 合并规则）──► post_processor（加 <s>）
    id ──► decoder（把 piece 拼回文字）

目标：对任何文本，HF 分词器给出的 id 与 `towergpt.tokenizer.Tokenizer.encode` **完全相同**。
SentencePiece 与 `tokenizers` 的做法不同，下面几处必须逐一对上：

1. 合并顺序。SentencePiece 的 BPE 每一步在所有相邻的两个片段里，挑“拼起来之后在词表里
   分数最高”的一对合并（分数相同取最左边）。`tokenizers` 的 BPE 则按“合并规则表”的先后。
   所以合并表这样生成：按分数从高到低遍历每个普通 piece，把它所有“左右两半都在词表里”
   的切法都列进去。分数最高的 piece 排最前，两者挑中的就是同一对。

2. 空格。SentencePiece 先把空格换成“▁”（U+2581）再切分，于是文本里真正的“▁”也被当成空格，
   解码回来变成了空格。TowerGPT 的 Tokenizer 把文本里真正的“▁”编码成它的三个 UTF-8 字节
   <0xE2><0x96><0x81>。在 HF 这边复现的办法：
   - 词表里有“▁”这个 piece（训练语料里有空格）：把所有 piece 里的“▁”直接写成空格“ ”，
     不做任何文本改写。空格照常匹配这些 piece；文本里真正的“▁”在词表里找不到，
     自然走字节回退，得到的正是 <0xE2><0x96><0x81>。
   - 词表里没有“▁”（语料里根本没有空格）：SentencePiece 会把空格当成“▁”再字节回退，
     得到同样的三个字节。HF 这边用一个 normalizer 把空格换成“▁”，结果一致。

3. 不做规范化、不加前导空格（identity / add_dummy_prefix=False）：HF 这边不配 Prepend、
   不配 Metaspace，文本原样进入 BPE；词表外的字符按 UTF-8 字节回退（byte_fallback）。

4. 特殊 token。<s> </s> <pad> <unk> <|im_start|> <|im_end|> 登记为 special 的 added token，
   解码时 `skip_special_tokens=True` 可以去掉它们。注意 HF 的惯例：默认情况下文本里的
   字符串 "<|im_start|>" 会被认成特殊 token（对话模板就靠这一点把标记拼进去）。
   要像 TowerGPT 一样把用户输入的这串字符当普通文字，编码时传 `split_special_tokens=True`。

5. 对话模板。`chat_template` 是一段 Jinja，渲染出的文字再由分词器编码，
   结果与 `towergpt.chat_template.render_chat` 的 id 相同（测试逐条核对）。
"""

from __future__ import annotations

from sentencepiece import sentencepiece_model_pb2

from towergpt.errors import TowerGPTError
from towergpt.tokenizer import (
    BOS_PIECE,
    EOS_PIECE,
    IM_END_PIECE,
    IM_START_PIECE,
    PAD_PIECE,
    SPACE_MARKER,
    UNK_PIECE,
)

# 与 towergpt/chat_template.py 的 render_chat 逐 token 对应：
#   <s> + 每条消息 [<|im_start|> 角色\n 正文 <|im_end|> \n] + 可选的 <|im_start|>assistant\n
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# SentencePiece 里 piece 的种类（sentencepiece_model.proto 的 Type 枚举）
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_sentencepiece_proto(model_bytes: bytes, source: str):
    """解析 tokenizer.model（protobuf）为 ModelProto，里面有每个 piece 及训练、规范化设置。"""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_bytes)
    except Exception:  # protobuf 的解析错误类型随版本不同
        raise TowerGPTError(f"{source}: 不是有效的 SentencePiece 模型文件 / not a valid SentencePiece model") from None
    return proto


def check_convertible(proto, source: str, target: str = "Hugging Face") -> None:
    """只有“TowerGPT 这样训练的”SentencePiece 分词器能精确翻译；其余情况说清楚是哪一项不行。

    target 只用于报错信息：导出 GGUF（llama.cpp 的 SPM 词表）要求的是同样几项。
    """
    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if trainer.model_type != trainer.BPE:
        problems.append("model_type 不是 BPE / is not BPE")
    if not trainer.byte_fallback:
        problems.append("没有开启 byte_fallback / byte_fallback is off")
    if normalizer.name != "identity" or normalizer.precompiled_charsmap:
        problems.append(f"规范化规则是 {normalizer.name!r}，不是 identity / normalization is not identity")
    if normalizer.add_dummy_prefix:
        problems.append("开启了 add_dummy_prefix / add_dummy_prefix is on")
    if normalizer.remove_extra_whitespaces:
        problems.append("开启了 remove_extra_whitespaces / remove_extra_whitespaces is on")
    if trainer.treat_whitespace_as_suffix:
        problems.append("开启了 treat_whitespace_as_suffix / treat_whitespace_as_suffix is on")
    odd = sorted({piece.type for piece in proto.pieces} - {NORMAL, UNKNOWN, CONTROL, BYTE})
    if odd:
        names = {USER_DEFINED: "USER_DEFINED", UNUSED: "UNUSED"}
        problems.append("含有不支持的 piece 类型 / unsupported piece types: " + ", ".join(names.get(t, str(t)) for t in odd))
    if problems:
        raise TowerGPTError(
            f"{source}: 这个分词器无法精确转换成 {target} 格式 / cannot be converted to {target} exactly: " + "; ".join(problems)
        )


def build_tokenizer_json(model_bytes: bytes, source: str = "tokenizer.model") -> dict:
    """由 tokenizer.model 的字节生成 HF `tokenizer.json` 的内容（一个可以 json.dump 的 dict）。"""
    proto = read_sentencepiece_proto(model_bytes, source)
    check_convertible(proto, source)
    pieces = [(piece.piece, piece.score, piece.type) for piece in proto.pieces]
    has_space_piece = any(text == SPACE_MARKER and kind == NORMAL for text, _, kind in pieces)
    # 见模块说明第 2 点：有“▁”这个 piece 时，piece 里的“▁”一律写成真正的空格
    spell = (lambda text: text.replace(SPACE_MARKER, " ")) if has_space_piece else (lambda text: text)

    vocab = {spell(text): index for index, (text, _, _) in enumerate(pieces)}
    normal = [(spell(text), score) for text, score, kind in pieces if kind == NORMAL]
    specials = [(index, text) for index, (text, _, kind) in enumerate(pieces) if kind in (UNKNOWN, CONTROL)]
    bos_id = vocab[BOS_PIECE]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(index, text) for index, text in specials],
        # 词表里没有空格 piece 时，空格先换成“▁”，和 SentencePiece 一样再字节回退
        "normalizer": None if has_space_piece else {
            "type": "Replace", "pattern": {"String": " "}, "content": SPACE_MARKER,
        },
        "pre_tokenizer": None,  # 不预切分：SentencePiece 的 BPE 也是在整段文本上合并
        "post_processor": _bos_template(bos_id),
        # 解码：字节 piece <0xE4><0xBD><0xA0> 先拼回字节再按 UTF-8 解成“你”，然后把所有片段连起来
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": UNK_PIECE,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": True,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": bpe_merges(normal),
        },
    }


def bpe_merges(normal_pieces: list[tuple[str, float]]) -> list[list[str]]:
    """SentencePiece 的分数 → `tokenizers` 的合并规则表（见模块说明第 1 点）。

    normal_pieces：[(piece, 分数)]。分数越高的 piece 越先合并；一个 piece 的每一种
    “左半 + 右半”切法（两半都得是词表里的 piece）都是一条规则。
    """
    known = {text for text, _ in normal_pieces}
    ordered = sorted(normal_pieces, key=lambda item: -item[1])  # sorted 是稳定的：同分保持 id 顺序
    merges = []
    for text, _ in ordered:
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in known and right in known:
                merges.append([left, right])
    return merges


def _added_token(index: int, text: str) -> dict:
    return {
        "id": index, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
        "normalized": False, "special": True,
    }


def _bos_template(bos_id: int) -> dict:
    """`tokenizer(text)` 默认在开头加 <s>：预训练数据里每篇文档就是 [<s>] + 正文 + [</s>]。"""
    bos = {"SpecialToken": {"id": BOS_PIECE, "type_id": 0}}
    return {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS_PIECE: {"id": BOS_PIECE, "ids": [bos_id], "tokens": [BOS_PIECE]}},
    }


def tokenizer_config(max_length: int, fingerprint: str) -> dict:
    """tokenizer_config.json：用哪个类载入、特殊 token 是谁、对话模板、上下文长度。

    tokenizer_class 用通用的 PreTrainedTokenizerFast：它原样执行 tokenizer.json 的流水线。
    （LlamaTokenizer 会按 Llama 自己的习惯重建 normalizer，例如在开头加“▁”，那样 id 就对不上了。）
    """
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS_PIECE,
        "eos_token": EOS_PIECE,
        "pad_token": PAD_PIECE,
        "unk_token": UNK_PIECE,
        "additional_special_tokens": [IM_START_PIECE, IM_END_PIECE],
        "add_bos_token": True,
        # 开头不加空格。llama.cpp 的 convert_hf_to_gguf.py 读这个键写进 GGUF（add_space_prefix），
        # 缺了它 llama.cpp 会按 Llama 的老习惯在文本前补一个“▁”
        "add_prefix_space": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # 不要在标点前删空格：解码必须无损
        "split_special_tokens": False,  # 对话模板靠它认出标记；编码不可信文本时调用方传 True
        "model_max_length": max_length,
        "padding_side": "left",  # 批量生成时左 padding，最后一列对齐
        "chat_template": CHAT_TEMPLATE,
        "towergpt_tokenizer_sha256": fingerprint,  # 导入回 TowerGPT 时核对 tokenizer.model 没被换掉
    }


def special_tokens_map() -> dict:
    """special_tokens_map.json：旧版 transformers 从这里读特殊 token。"""
    return {
        "bos_token": BOS_PIECE,
        "eos_token": EOS_PIECE,
        "pad_token": PAD_PIECE,
        "unk_token": UNK_PIECE,
        "additional_special_tokens": [IM_START_PIECE, IM_END_PIECE],
    }
