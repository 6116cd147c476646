"""分词器：载入、编码、解码 / The tokenizer: loading, encoding, decoding（训练见 training.py）.

模型只认识整数，分词器负责把文字和整数（token id）互相转换。
这里用 SentencePiece 的 BPE（Byte Pair Encoding，字节对编码）：
    从单个字符出发，反复把语料里“最常一起出现的两个片段”合并成一个新片段（piece），
    直到词表达到指定大小。于是常见词（“我们”、“手机”）会变成一个 token，
    生僻组合则拆成更小的片段。token 越少，同样长度的上下文能装下越多文字。

几个关键设计（每个都是 SentencePiece 默认设置下真实踩过的坑）：

1. 不做任何“规范化”（normalization_rule_name="identity"）。
   SentencePiece 默认的 nmt_nfkc 会把全角“，”改成半角“,”，把“２０２６”改成“2026”，
   还会把连续空格压成一个。对中文模型来说这等于篡改了训练数据，所以原样保留。

2. 字节回退（byte_fallback=True）。
   中文有上万个字符，词表装不下全部。不在词表里的字符会被拆成它的 UTF-8 字节，
   每个字节都有一个专门的 piece（<0x00> ... <0xFF>，共 256 个），所以永远不会出现 <unk>。
   代价是：罕见字用 3~4 个 token 表示，而不是 1 个。

3. 无损（lossless）：对任意 Unicode 字符串，decode(encode(s)) == s。
   换行、制表符、连续空格、开头的空格、emoji、零宽字符、NUL 都能原样还原。
   唯一的例外是字符“▁”（U+2581）：SentencePiece 内部用它表示空格，
   解码时会把它变回空格。我们的办法见 `Tokenizer.encode` 里的注释。

4. 特殊 token：
       0 <unk>  未知（有字节回退后实际上不会出现）
       1 <s>    文档开始 BOS      2 </s>  文档结束 EOS
       3 <pad>  填充（把一批长短不一的序列补齐）
       <|im_start|> <|im_end|>  对话里每一轮的开始和结束
   对话标记用 control_symbols 而不是 user_defined_symbols：
   user_defined_symbols 会在普通文本里被匹配，用户只要输入字符串 "<|im_start|>"
   就能伪造一轮对话（“提示注入”）；control_symbols 永远不会从文本里编码出来，
   只能由程序在 id 层面拼接进去。所以对话模板必须拼接 id，而不是拼接字符串。

输出目录里有两个文件：
    tokenizer.model  SentencePiece 模型本体（二进制 protobuf）
    tokenizer.json   一份给人看、给程序校验的小摘要：词表大小、特殊 token 的 id、
                     以及 tokenizer.model 的 sha256 指纹（用来确认检查点和分词器是配套的）
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

from towergpt.errors import TowerGPTError

# ---------------------------------------------------------------------------
# 常量
# ---------------------------------------------------------------------------

MODEL_FILE = "tokenizer.model"
INFO_FILE = "tokenizer.json"
# 一个分词器目录里只有这两个文件；`tokenizer train --overwrite` 只替换这样的“纯分词器目录”。
TOKENIZER_FILES = frozenset({MODEL_FILE, INFO_FILE})

# 特殊 token：(角色, piece, id)。id 固定下来，模型代码和数据代码可以放心地依赖它们。
UNK_PIECE, BOS_PIECE, EOS_PIECE, PAD_PIECE = "<unk>", "<s>", "</s>", "<pad>"
IM_START_PIECE, IM_END_PIECE = "<|im_start|>", "<|im_end|>"
CHAT_MARKERS = (IM_START_PIECE, IM_END_PIECE)

# 词表里“不是从语料学出来”的 piece 数：4 个特殊 token + 2 个对话标记 + 256 个字节。
# SentencePiece 报“词表太小”时给出的数字已经包含了它们。
NUM_BYTE_PIECES = 256
NUM_META_PIECES = 4 + len(CHAT_MARKERS) + NUM_BYTE_PIECES  # = 262

# 词表下限：262 个固定 piece 之外至少还要留些位置给真正的字符和词，否则 BPE 没有意义。
MIN_VOCAB_SIZE = 300

# SentencePiece 允许的字符覆盖率范围（它自己会检查，但报错信息只有一行源码）。
MIN_CHARACTER_COVERAGE = 0.98

# SentencePiece 训练时会“悄悄丢掉”超过 max_sentence_length（默认 4192 字节）的句子。
# 所以长行要先切块：1000 个字符 × UTF-8 每字符最多 4 字节 = 最多 4000 字节，一定放得下。
MAX_SENTENCE_BYTES = 4000
CHUNK_CHARS = MAX_SENTENCE_BYTES // 4

# SentencePiece 用来表示空格的字符（U+2581 LOWER ONE EIGHTH BLOCK）。
SPACE_MARKER = "\u2581"


# ---------------------------------------------------------------------------
# Tokenizer：载入后的分词器
# ---------------------------------------------------------------------------

class Tokenizer:
    """一个训练好的分词器。通常用 `Tokenizer.load(目录)` 得到，而不是直接构造。

        tok = Tokenizer.load("runs/tok")
        ids = tok.encode("你好，世界")      # -> list[int]，不自动加 BOS/EOS
        tok.decode(ids) == "你好，世界"     # 无损
    """

    def __init__(self, model_bytes: bytes, source: str = "<memory>"):
        """从 tokenizer.model 的字节内容构造；source 只用于报错信息。"""
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError:
            raise TowerGPTError(
                f"{source}: 不是有效的 SentencePiece 模型文件 / not a valid SentencePiece model"
            ) from None
        self._model_bytes = bytes(model_bytes)
        self._source = source
        self._fingerprint = hashlib.sha256(self._model_bytes).hexdigest()
        # encode_batch 用几个线程；None = SentencePiece 的默认（用满所有核）。多进程分词时每个进程设小一些。
        self.batch_threads: int | None = None

        self._unk_id = self._require_piece(UNK_PIECE)
        self._bos_id = self._require_piece(BOS_PIECE)
        self._eos_id = self._require_piece(EOS_PIECE)
        self._pad_id = self._require_piece(PAD_PIECE)
        self._im_start_id = self._require_piece(IM_START_PIECE)
        self._im_end_id = self._require_piece(IM_END_PIECE)
        # 字符“▁”的 UTF-8 是 E2 96 81 三个字节；编码文本里的“▁”时直接用这三个字节 piece。
        self._marker_byte_ids = [self._require_piece(f"<0x{byte:02X}>") for byte in SPACE_MARKER.encode("utf-8")]

    def _require_piece(self, piece: str) -> int:
        """查出 piece 的 id；模型里没有它（不是 TowerGPT 训练的分词器）就报错。"""
        piece_id = self._sp.piece_to_id(piece)
        # piece_to_id 对不存在的 piece 返回 <unk> 的 id，所以要反查一遍确认。
        if self._sp.id_to_piece(piece_id) != piece:
            raise TowerGPTError(
                f"{self._source}: 分词器里缺少特殊 piece {piece!r}，它不是用 `towergpt tokenizer train` 训练的"
                f" / missing special piece {piece!r}: not a TowerGPT tokenizer"
            )
        return piece_id

    # -- 载入与保存 ---------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """从目录（里面有 tokenizer.model）或 .model 文件本身载入。

        如果旁边还有 tokenizer.json，会核对其中的 sha256 指纹，
        防止有人把另一个分词器的 tokenizer.model 拷了过来（那样 id 全都对不上）。
        """
        path = Path(path)
        model_path = path / MODEL_FILE if path.is_dir() else path
        if not model_path.is_file():
            raise TowerGPTError(
                f"找不到分词器 / tokenizer not found: {model_path}"
                f"（先运行 towergpt tokenizer train / train one with `towergpt tokenizer train`）"
            )
        tokenizer = cls(model_path.read_bytes(), source=str(model_path))
        tokenizer._check_info_file(model_path.parent / INFO_FILE)
        return tokenizer

    def _check_info_file(self, info_path: Path) -> None:
        """tokenizer.json 存在时，确认它描述的正是这个 tokenizer.model。"""
        if not info_path.is_file():
            return
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise TowerGPTError(f"{info_path}: 无法读取 / unreadable: {err}") from None
        expected = info.get("sha256") if isinstance(info, dict) else None
        if expected is not None and expected != self._fingerprint:
            raise TowerGPTError(
                f"{info_path}: 记录的 sha256 与 {MODEL_FILE} 不一致，两个文件不是一套"
                f" / sha256 does not match {MODEL_FILE}: the two files come from different tokenizers"
            )

    def save(self, directory: str | os.PathLike) -> Path:
        """把 tokenizer.model 和 tokenizer.json 写进 directory（不存在就创建），返回目录。

        检查点目录也会调用它存一份分词器副本，这样检查点自成一体，拷到哪里都能用。
        """
        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self._write_files(directory)
        except OSError as err:
            raise TowerGPTError(f"{directory}: 无法写入分词器 / cannot write tokenizer: {err.strerror or err}") from None
        return directory

    def _write_files(self, directory: Path) -> None:
        """在已存在的 directory 里写 tokenizer.model 和 tokenizer.json；出错时原样抛出 OSError，由调用者决定怎么报。"""
        (directory / MODEL_FILE).write_bytes(self._model_bytes)
        info_text = json.dumps(self.info(), ensure_ascii=False, indent=2) + "\n"
        (directory / INFO_FILE).write_text(info_text, encoding="utf-8")

    def info(self) -> dict:
        """tokenizer.json 的内容：词表大小、特殊 token、训练选项、指纹。"""
        return {
            "format": "towergpt-tokenizer",
            "version": 1,
            "model_type": "bpe",
            "vocab_size": self.vocab_size,
            "special_tokens": {
                UNK_PIECE: self._unk_id,
                BOS_PIECE: self._bos_id,
                EOS_PIECE: self._eos_id,
                PAD_PIECE: self._pad_id,
                IM_START_PIECE: self._im_start_id,
                IM_END_PIECE: self._im_end_id,
            },
            "normalization": "identity",
            "byte_fallback": True,
            "model_file": MODEL_FILE,
            "sha256": self._fingerprint,
        }

    # -- 基本属性 -----------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """词表大小 = 模型嵌入层（embedding）的行数。"""
        return self._sp.get_piece_size()

    @property
    def unk_id(self) -> int:
        return self._unk_id

    @property
    def bos_id(self) -> int:
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def im_start_id(self) -> int:
        return self._im_start_id

    @property
    def im_end_id(self) -> int:
        return self._im_end_id

    @property
    def fingerprint(self) -> str:
        """tokenizer.model 内容的 sha256（十六进制）。两个分词器指纹相同，id 含义就完全相同。"""
        return self._fingerprint

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, source={self._source!r})"

    # -- 编码与解码 ---------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """把文本编码成 token id 列表。不自动加 BOS/EOS：加不加、加在哪由调用者决定。"""
        try:
            if SPACE_MARKER not in text:  # 绝大多数文本走这条快路：一次 C++ 调用
                return self._sp.encode(text)
            return self._encode_with_literal_marker(text)
        except RuntimeError:
            raise self._encode_error(text) from None

    def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
        """批量编码：SentencePiece 在 C++ 里多线程处理整批文本，比逐条 encode 快得多。"""
        texts = list(texts)
        try:
            batch = self._sp.encode(texts, num_threads=self.batch_threads)
            for index, text in enumerate(texts):
                if SPACE_MARKER in text:  # 少见情况：含“▁”的文本单独重编码
                    batch[index] = self._encode_with_literal_marker(text)
        except (RuntimeError, TypeError):  # 批量接口对坏字符串抛 TypeError，单条接口抛 RuntimeError
            for text in texts:  # 找出是哪一条出了问题，再报错
                self.encode(text)
            raise
        return batch

    def encode_batch_arrays(self, texts: Iterable[str]) -> list[np.ndarray]:
        """和 encode_batch 一样（同样的 id、同样的报错），但每条结果是一个 int32 的 numpy 数组。

        为什么更快？切分本身在 C++ 里，可是把结果交成 list[int]，要为每个 token 造一个 Python 整数对象
        （一篇一千五百字的文档就是一千多个），写分片前还得把它们一个个抄进 numpy 数组。
        新的 sentencepiece（0.2.3 有）能直接交出 C++ 里的整数数组（out_type="numpy"），一个对象也不造：
        单线程实测比逐篇 encode 快 5%–45%（机器越忙差得越多）。`data prepare` 的预训练分词用的就是它。
        旧版本没有这个选项，就退回 encode_batch 再转成数组，结果相同，只是慢一些。
        """
        texts = list(texts)
        if not _numpy_output_supported(self._sp):
            return [np.array(ids, dtype=np.int32) for ids in self.encode_batch(texts)]
        try:
            batch = self._sp.encode(texts, num_threads=self.batch_threads, out_type="numpy")
        except (RuntimeError, TypeError):  # 坏字符串（孤立代理项）：逐条重编码，让 encode 说清楚是哪一条、哪个字符
            for text in texts:
                self.encode(text)
            raise
        for index, text in enumerate(texts):
            if SPACE_MARKER in text:  # 少见情况：含“▁”的文本单独重编码（见 _encode_with_literal_marker）
                batch[index] = np.array(self._encode_with_literal_marker(text), dtype=np.int32)
        return batch

    def _encode_with_literal_marker(self, text: str) -> list[int]:
        """处理文本里真正的“▁”字符。

        SentencePiece 内部先把空格换成“▁”再切分，所以文本里原有的“▁”和空格
        在它看来是同一个东西，解码时都会变成空格——信息丢了。
        办法：在“▁”处把文本切开，各段分别编码，段与段之间插入“▁”的三个 UTF-8 字节
        piece（<0xE2><0x96><0x81>）。解码时字节 piece 按原样拼回字节，于是得到真正的“▁”。
        """
        segments = text.split(SPACE_MARKER)
        ids: list[int] = []
        for index, segment_ids in enumerate(self._sp.encode(segments)):
            if index > 0:
                ids.extend(self._marker_byte_ids)
            ids.extend(segment_ids)
        return ids

    def _encode_error(self, text: str) -> Exception:
        """SentencePiece 只接受能编码成 UTF-8 的字符串；把它含糊的报错讲清楚。"""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            return TowerGPTError(
                f"文本第 {err.start + 1} 个字符是孤立的代理项 {text[err.start]!r}（常见于 JSON 里不成对的 \\ud800 转义），"
                f"无法编码 / character {err.start + 1} is a lone surrogate and cannot be encoded"
            )
        return RuntimeError(f"SentencePiece 编码失败 / encode failed for text starting {text[:40]!r}")

    def decode(self, ids: Sequence[int]) -> str:
        """把 token id 变回文本。

        特殊 token（<s> </s> <pad> <|im_start|> <|im_end|>）不产生任何文字；
        字节 piece 会先拼成字节再按 UTF-8 解码，拼不成完整字符的字节显示为 “�”。
        也接受 torch / numpy 的一维张量。
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        try:
            return self._sp.decode(list(ids))
        except IndexError:
            raise self._out_of_range(ids) from None

    def id_to_piece(self, token_id: int) -> str:
        """id 对应的 piece 字符串，例如 1 -> "<s>"，某个 id -> "中国"。调试时很有用。"""
        try:
            return self._sp.id_to_piece(int(token_id))
        except IndexError:
            raise self._out_of_range([token_id]) from None

    def piece_to_id(self, piece: str) -> int:
        """piece 对应的 id；词表里没有的 piece 返回 unk_id。"""
        return self._sp.piece_to_id(piece)

    def _out_of_range(self, ids: Sequence[int]) -> TowerGPTError:
        bad = next((int(i) for i in ids if not 0 <= int(i) < self.vocab_size), None)
        return TowerGPTError(
            f"token id {bad} 超出词表范围 [0, {self.vocab_size})，模型和分词器可能不配套"
            f" / token id {bad} is outside the vocabulary [0, {self.vocab_size}): model and tokenizer do not match?"
        )


# 这个版本的 sentencepiece 能不能直接交出 numpy 数组（out_type="numpy"）？第一次用到时试一次，记下答案。
_NUMPY_OUTPUT: bool | None = None


def _numpy_output_supported(processor: spm.SentencePieceProcessor) -> bool:
    global _NUMPY_OUTPUT
    if _NUMPY_OUTPUT is None:
        try:
            processor.encode([""], num_threads=1, out_type="numpy")
            _NUMPY_OUTPUT = True
        except (ValueError, TypeError):   # 旧版本：“unknown out_type” 之类
            _NUMPY_OUTPUT = False
    return _NUMPY_OUTPUT
