"""分词器：训练、载入、编码、解码 / The tokenizer: training, loading, encoding, decoding.

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
import io
import json
import os
import random
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import sentencepiece as spm
from tqdm import tqdm

from towergpt.data.readers import check_input, iter_texts
from towergpt.errors import TowerGPTError
from towergpt.output_dir import check_out_dir, staged_output

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


# ---------------------------------------------------------------------------
# 训练
# ---------------------------------------------------------------------------

def train_tokenizer(
    inputs: Sequence[str | os.PathLike],
    vocab_size: int,
    out_dir: str | os.PathLike,
    field: str = "text",
    max_sentences: int = 2_000_000,
    character_coverage: float = 0.9995,
    overwrite: bool = False,
) -> Tokenizer:
    """在语料上训练一个 BPE 分词器，写出 out_dir/tokenizer.model 和 tokenizer.json。

    参数:
        inputs:             语料文件（.txt .jsonl .json .parquet），可以多个。
        vocab_size:         词表大小，例如 8000。
        out_dir:            输出目录，不存在会创建。已存在且非空时拒绝写入，除非 overwrite=True。
        field:              JSON / Parquet 记录里文本所在的字段。
        max_sentences:      最多用多少行训练。语料更大时均匀随机抽样（蓄水池抽样），内存有界。
        character_coverage: 字符覆盖率（0.98~1.0）。出现最少、合计占比不到 1-覆盖率 的字符
                            不单独进词表，改用字节表示。
        overwrite:          允许替换一个已有的分词器目录（里面只能有 tokenizer.model / tokenizer.json）。

    为什么默认不许覆盖？用旧分词器准备好的数据、训练好的检查点都还在用旧的 id：
    悄悄换掉分词器，同一个 id 就代表了另一个字，词表变小时训练甚至会直接越界崩溃。

    文件先写进 out_dir 旁边的临时目录，全部写好才改名为 out_dir（见 towergpt/output_dir.py），
    所以磁盘满、Ctrl-C 时留下的要么是原来的分词器，要么什么都没有，绝不会是“新 model + 旧 json”。

    返回训练好的 Tokenizer。所有用户可改正的问题都抛出 TowerGPTError。
    """
    input_paths = _check_train_args(inputs, vocab_size, field, max_sentences, character_coverage)
    _check_out_dir(Path(out_dir), overwrite, input_paths)  # 训练前就检查：别白白训练几分钟再拒绝
    sentences, lines_seen = _sample_sentences(input_paths, field, max_sentences)
    if not sentences:
        names = ", ".join(str(path) for path in input_paths)
        raise TowerGPTError(
            f"语料里没有任何非空白文本，无法训练：{names}（JSON 文件请确认 --field '{field}' 是否正确）"
            f" / the corpus holds no non-blank text: {names} (for JSON, check --field '{field}')"
        )
    model_bytes = _run_sentencepiece(sentences, vocab_size, character_coverage)
    tokenizer = Tokenizer(model_bytes, source=str(Path(out_dir) / MODEL_FILE))
    _save_atomically(tokenizer, Path(out_dir))
    _print_summary(tokenizer, Path(out_dir), len(sentences), lines_seen)
    return tokenizer


def _check_train_args(inputs, vocab_size, field, max_sentences, character_coverage) -> list[Path]:
    """训练前先检查所有参数和输入文件：与其读了半小时语料再报错，不如一开始就说清楚。"""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise TowerGPTError("没有给出语料文件 / no input files given (--input)")
    paths = [check_input(path) for path in inputs]
    if vocab_size < MIN_VOCAB_SIZE:
        raise TowerGPTError(
            f"--vocab-size {vocab_size} 太小：词表里光是 256 个字节 piece 和 6 个特殊 token 就占了 {NUM_META_PIECES} 个，"
            f"至少要 {MIN_VOCAB_SIZE}，中文通常用 4000~32000"
            f" / vocab size {vocab_size} is too small: {NUM_META_PIECES} pieces are reserved for bytes and special tokens;"
            f" use at least {MIN_VOCAB_SIZE} (4000-32000 is typical for Chinese)"
        )
    if not MIN_CHARACTER_COVERAGE <= character_coverage <= 1.0:
        raise TowerGPTError(
            f"--character-coverage {character_coverage} 超出范围，SentencePiece 只接受 {MIN_CHARACTER_COVERAGE} 到 1.0"
            f" / character coverage must be between {MIN_CHARACTER_COVERAGE} and 1.0"
        )
    if max_sentences < 1:
        raise TowerGPTError(f"--max-sentences 必须是正整数 / must be positive, got {max_sentences}")
    if not field:
        raise TowerGPTError("--field 不能为空 / --field must not be empty")
    return paths


# -- 输出目录：不悄悄覆盖，一次写完整 -------------------------------------------

def _check_out_dir(out_dir: Path, overwrite: bool, input_paths: Sequence[Path]) -> None:
    """--out 必须不存在或为空；非空时只有 --overwrite 才替换，而且只替换纯分词器目录。

    规则与 `data prepare`、`export`、`import` 相同（共用 towergpt/output_dir.py 的 check_out_dir）：
    旧目录里必须有 tokenizer.model（证明它是分词器目录），语料文件不能在它里面。
    另外多一条：旧目录里除了 tokenizer.model / tokenizer.json 不能有别的文件。
    检查点目录里也有 tokenizer.model，但替换它会把模型权重一起删掉——所以拒绝。
    """
    check_out_dir(out_dir, overwrite, "--out", inputs=input_paths, marker=MODEL_FILE)
    if not out_dir.is_dir():
        return
    others = sorted(entry.name for entry in out_dir.iterdir() if entry.name not in TOKENIZER_FILES)
    if others:
        shown = ", ".join(others[:3]) + ("…" if len(others) > 3 else "")
        raise TowerGPTError(
            f"{out_dir} 里除了分词器文件还有 {shown}，--overwrite 会把它们一起删掉；请换一个 --out"
            f" / holds more than a tokenizer ({shown}), which --overwrite would delete: choose another --out"
        )


def _save_atomically(tokenizer: Tokenizer, out_dir: Path) -> None:
    """先把两个文件写进 out_dir 旁边的临时目录，全部成功后一步改名为 out_dir。

    为什么不直接写进 out_dir？两个文件是先后写的：写完 tokenizer.model、写 tokenizer.json 时
    磁盘满了，目录里就剩“新的 model + 旧的 json”，指纹对不上，这个分词器再也载入不了；
    旧分词器也已经被毁掉。改名（rename）在同一个文件系统里是一步完成的：替换时先删旧目录、
    紧接着改名，别人看到的 out_dir 要么是原来的，要么（那一瞬间）不存在，要么是完整的新分词器，
    绝不会是半套。出错时删掉临时目录，不留垃圾。
    """
    try:
        with staged_output(out_dir) as staging:   # 出错时它已删掉临时目录
            tokenizer._write_files(staging)
    except OSError as err:  # 磁盘满、没有权限……：说清楚是哪个目录，而不是抛 traceback
        raise TowerGPTError(f"{out_dir}: 无法写入分词器 / cannot write tokenizer: {err.strerror or err}") from None


# -- 读语料、切句、抽样 -------------------------------------------------------

def _sample_sentences(paths: list[Path], field: str, max_sentences: int) -> tuple[list[str], int]:
    """读完所有文件，用蓄水池抽样保留至多 max_sentences 行；返回 (抽中的行, 一共读到的行数)。

    蓄水池抽样（reservoir sampling）：前 k 行直接放进“水池”；之后第 n 行以 k/n 的概率
    替换水池里随机的一行。读完后，每一行被留下的概率都恰好是 k/N——不需要事先知道 N，
    也不需要把全部 N 行装进内存。固定种子 0，同样的语料每次抽到同样的行，结果可复现。
    """
    rng = random.Random(0)
    reservoir: list[str] = []
    seen = 0
    with tqdm(desc="读取语料 / reading corpus", unit=" 行/lines", unit_scale=True, mininterval=0.5) as progress:
        for path in paths:
            for _, text in iter_texts(path, field=field):
                added = 0
                for sentence in _split_sentences(text):
                    seen += 1
                    added += 1
                    if len(reservoir) < max_sentences:
                        reservoir.append(sentence)
                    else:
                        slot = rng.randrange(seen)
                        if slot < max_sentences:
                            reservoir[slot] = sentence
                progress.update(added)
    return reservoir, seen


def _split_sentences(text: str) -> Iterator[str]:
    """把一篇文档切成 SentencePiece 的训练“句子”：按行切，跳过空白行，超长行再切块。

    为什么按行？SentencePiece 以“句子”为单位统计片段，一篇几万字的文档当作一句
    会超过它的长度上限而被整篇丢弃。换行符本身不进训练句子，编码时它走字节回退
    （<0x0A>，仍然只占 1 个 token）。
    """
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(line) <= CHUNK_CHARS:  # 1000 字符以内一定不超过 4000 字节，不必真的去编码
            yield line
        else:
            for start in range(0, len(line), CHUNK_CHARS):
                yield line[start:start + CHUNK_CHARS]


# -- 调用 SentencePiece ------------------------------------------------------

def _run_sentencepiece(sentences: list[str], vocab_size: int, character_coverage: float) -> bytes:
    """用 SentencePiece 训练 BPE，返回 tokenizer.model 的字节；它的报错翻译成人话。"""
    model_writer = io.BytesIO()  # 模型直接写进内存，不经过临时文件
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model_writer,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=character_coverage,
            # 句子已经由我们抽样好了：0 表示“给多少用多少”，不再二次抽样
            input_sentence_size=0,
            max_sentence_length=MAX_SENTENCE_BYTES + 192,  # 即默认值 4192；我们切块后不会超过
            normalization_rule_name="identity",  # 不改写文字：“，”还是“，”
            remove_extra_whitespaces=False,  # 连续空格、首尾空格都保留
            add_dummy_prefix=False,  # 不在开头偷偷加空格，否则开头的空格在解码时有歧义
            allow_whitespace_only_pieces=True,  # 允许“    ”（缩进）这样的纯空白 piece
            split_digits=True,  # 每个数字单独一个 token：“2026”->“2”“0”“2”“6”，算术更规整
            byte_fallback=True,  # 词表外的字符拆成 UTF-8 字节，永不出现 <unk>
            unk_id=0, unk_piece=UNK_PIECE,
            bos_id=1, bos_piece=BOS_PIECE,
            eos_id=2, eos_piece=EOS_PIECE,
            pad_id=3, pad_piece=PAD_PIECE,
            control_symbols=list(CHAT_MARKERS),  # 见模块开头第 4 点：防止提示注入
            # 空格在 SentencePiece 内部写作“▁”。语料里没有空格时（纯中文新闻），词表里就没有“▁”这个 piece，
            # 空格只能走字节回退，而回退出的正是“▁”的三个字节：解码时分不清原文是空格还是“▁”。
            # 强制把“▁”收进词表，空格就总有自己的 id，两者不再混淆。
            required_chars="\u2581",
            num_threads=os.cpu_count() or 1,
            minloglevel=2,  # 只显示错误，不刷屏
        )
    except RuntimeError as err:
        raise TowerGPTError(_explain_sentencepiece_error(str(err), vocab_size, character_coverage)) from None
    return model_writer.getvalue()


def _explain_sentencepiece_error(message: str, vocab_size: int, character_coverage: float) -> str:
    """把 SentencePiece 的 RuntimeError 翻译成一句能照着改的话。

    SentencePiece 的原始报错形如：
        ... Vocabulary size is smaller than required_chars. 2000 vs 3899. ...
        ... Vocabulary size too high (300). Please set it to a value <= 278.
    用正则取出数字，直接告诉用户多大的词表可行；取不到就退回原文（也压成一行）。
    """
    too_small = re.search(r"Vocabulary size is smaller than required_chars\.\s*(\d+)\s*vs\s*(\d+)", message)
    if too_small:
        needed = int(too_small.group(2))  # 已包含 262 个字节与特殊 piece
        lower_hint = (
            f"，或调低 --character-coverage（现为 {character_coverage}，最低 {MIN_CHARACTER_COVERAGE}；"
            f"覆盖不到的罕见字用字节表示）"
            if character_coverage > MIN_CHARACTER_COVERAGE else ""
        )
        lower_hint_en = ", or lower --character-coverage" if lower_hint else ""
        return (
            f"--vocab-size {vocab_size} 太小：在字符覆盖率 {character_coverage} 下，这份语料需要至少 {needed} 个 piece"
            f"（含 {NUM_META_PIECES} 个字节与特殊 piece）。请用 --vocab-size {needed} 或更大{lower_hint}"
            f" / vocab size {vocab_size} is smaller than the {needed} pieces this corpus needs at character coverage"
            f" {character_coverage}: use --vocab-size {needed} or more{lower_hint_en}"
        )
    too_high = re.search(r"Vocabulary size too high \((\d+)\)\.\s*Please set it to a value <= (\d+)", message)
    if too_high:
        maximum = int(too_high.group(2))
        if maximum < MIN_VOCAB_SIZE:  # 语料少到连最小的词表都学不满，只能加语料
            return (
                f"语料太少：它最多只能学出 {maximum} 个 piece，连最小词表 {MIN_VOCAB_SIZE} 都不够，请提供更多语料"
                f" / the corpus is too small: it yields at most {maximum} pieces, below the minimum vocab size"
                f" {MIN_VOCAB_SIZE}; add more text"
            )
        return (
            f"--vocab-size {vocab_size} 对这份语料太大：它最多只能学出 {maximum} 个 piece。"
            f"请用 --vocab-size {maximum} 或更小，或者提供更多语料"
            f" / vocab size {vocab_size} is too large for this corpus, which yields at most {maximum} pieces:"
            f" use --vocab-size {maximum} or less, or more text"
        )
    raw = " ".join(message.split()) or "未知错误 / unknown error"
    return f"SentencePiece 训练失败 / training failed: {raw}"


def _print_summary(tokenizer: Tokenizer, out_dir: Path, used: int, seen: int) -> None:
    """训练结束，告诉用户得到了什么、放在哪里。"""
    sampled = f"（从 {seen:,} 行中抽样 / sampled from {seen:,}）" if used < seen else ""
    print(f"分词器已保存 / tokenizer saved: {out_dir / MODEL_FILE}")
    print(f"  词表大小 / vocab size: {tokenizer.vocab_size:,}")
    print(f"  训练用行数 / sentences used: {used:,}{sampled}")
    print(f"  指纹 / sha256: {tokenizer.fingerprint[:16]}…")
