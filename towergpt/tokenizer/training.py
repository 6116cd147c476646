"""训练分词器：`towergpt tokenizer train`。

流程：读语料（流式，任何格式）→ 切成句子、长行切块 → 蓄水池抽样（内存有界）→ SentencePiece 训练 BPE
→ 把它的报错翻译成“词表该取多大”→ 原子地写出 tokenizer.model + tokenizer.json。
为什么这样设置 SentencePiece（不规范化、字节回退、对话标记用 control_symbols……）见 core.py 的模块说明。
"""

from __future__ import annotations

import io
import os
import random
import re
from pathlib import Path
from typing import Iterator, Sequence

import sentencepiece as spm
from tqdm import tqdm

from towergpt.data.readers import check_input, iter_texts
from towergpt.errors import TowerGPTError
from towergpt.output_dir import check_out_dir, staged_output
from towergpt.tokenizer.core import (
    BOS_PIECE, CHAT_MARKERS, CHUNK_CHARS, EOS_PIECE, MAX_SENTENCE_BYTES, MIN_CHARACTER_COVERAGE, MIN_VOCAB_SIZE,
    MODEL_FILE, NUM_META_PIECES, PAD_PIECE, TOKENIZER_FILES, UNK_PIECE, Tokenizer,
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
