"""分词器 / The tokenizer.

    core.py       Tokenizer：载入、编码、解码、特殊 token；为什么这样设置 SentencePiece（模块说明里的四条）
    training.py   train_tokenizer：`towergpt tokenizer train`，从语料训练 BPE 并原子地写出

    from towergpt.tokenizer import Tokenizer, train_tokenizer
"""

from towergpt.tokenizer.core import (
    BOS_PIECE,
    CHAT_MARKERS,
    EOS_PIECE,
    IM_END_PIECE,
    IM_START_PIECE,
    INFO_FILE,
    MODEL_FILE,
    NUM_BYTE_PIECES,
    NUM_META_PIECES,
    PAD_PIECE,
    SPACE_MARKER,
    TOKENIZER_FILES,
    UNK_PIECE,
    Tokenizer,
)
from towergpt.tokenizer.training import train_tokenizer

__all__ = ["Tokenizer", "train_tokenizer", "MODEL_FILE", "INFO_FILE", "TOKENIZER_FILES", "SPACE_MARKER",
           "UNK_PIECE", "BOS_PIECE", "EOS_PIECE", "PAD_PIECE", "IM_START_PIECE", "IM_END_PIECE", "CHAT_MARKERS",
           "NUM_BYTE_PIECES", "NUM_META_PIECES"]
