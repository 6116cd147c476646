"""训练前核对：数据、分词器、模型是不是一套 / Check that prepared data, tokenizer and model belong together.

`towergpt data prepare` 写出的 token 文件里只有整数。整数本身没有意义，意义来自分词器：
同一个 id 在分词器 A 里是“中国”，在分词器 B 里可能是“的”，也可能根本不存在。
所以数据只能配“准备它时用的那个分词器”训练。prepare 把那个分词器的 sha256 指纹
记在 meta.json 的 tokenizer_fingerprint 字段里，训练开始前拿它和要用的分词器比一比：

    pretrain   用数据目录里的分词器副本（DIR/tokenizer/）。副本被换过
               （例如 `tokenizer train --out DIR/tokenizer --overwrite`）就对不上。
    sft / dpo  用 init_from 检查点里的分词器：模型学的是它的 id。

对不上时训练要么学到一堆错位的字，要么在词表变小时直接崩溃（IndexError：id 超出词向量表）。
与其那样，不如开训前一句话说清楚：哪个目录、哪个指纹。
"""

from __future__ import annotations

from pathlib import Path

from towergpt.data.data_format import META_FILE, prepare_command
from towergpt.errors import TowerGPTError


def check_data_tokenizer(data_dir: Path, meta: dict, tokenizer, tokenizer_dir: Path | None,
                         advice: tuple[str, str] | None = None) -> None:
    """meta.json 记录的分词器指纹必须等于 tokenizer 的指纹，否则报错。

    tokenizer_dir：分词器是从哪个目录载入的，写进报错；None 表示调用者手里只有分词器对象（`towergpt eval`）。
    advice：(中文, English)，换掉默认的建议“用要训练的那个分词器重新 prepare”——评估时还有更省事的出路。
    """
    recorded = meta.get("tokenizer_fingerprint")
    if recorded == tokenizer.fingerprint:
        return
    command = prepare_command(meta.get("kind", "pretrain"))
    advice_zh, advice_en = advice or (
        f"请用要训练的那个分词器重新运行 {command}（--tokenizer 指向它，--out 换一个新目录）",
        f"prepare it again with the one you train with (`{command} --tokenizer DIR --out NEW_DIR`)",
    )
    source_zh = f" {tokenizer_dir} 的分词器" if tokenizer_dir else "所用分词器的"
    source_en = f"the tokenizer in {tokenizer_dir}" if tokenizer_dir else "the tokenizer"
    raise TowerGPTError(
        f"{data_dir / META_FILE} 的 tokenizer_fingerprint 是 {_short(recorded)}，而{source_zh}指纹是 "
        f"{_short(tokenizer.fingerprint)}：数据是用另一个分词器准备的，同一个 id 在两边代表不同的字。{advice_zh}"
        f" / {data_dir / META_FILE}: tokenizer_fingerprint {_short(recorded)} does not match {source_en}"
        f" ({_short(tokenizer.fingerprint)}): the data was prepared with another tokenizer; {advice_en}"
    )


def check_vocab_fits(data_dir: Path, meta: dict, model_vocab_size: int, model_source: Path) -> None:
    """数据里的 id 都小于 meta.json 记录的 vocab_size；模型的词向量表至少要有这么多行。

    指纹相同时分词器肯定装得下，但检查点里的模型可能比它的分词器小（手工拼出来、导入来的检查点）：
    那样 id 查不到词向量，PyTorch 只会抛一个看不出原因的 IndexError。这一步只读 meta.json，几乎不花时间。
    """
    data_vocab = meta.get("vocab_size")
    if not isinstance(data_vocab, int) or data_vocab <= model_vocab_size:
        return
    raise TowerGPTError(
        f"{data_dir / META_FILE} 的 vocab_size 是 {data_vocab}（token id 最大可到 {data_vocab - 1}），"
        f"而 {model_source} 的模型词表只有 {model_vocab_size} 行：这些 id 查不到词向量。"
        f"请换一个与数据配套的检查点，或用检查点的分词器重新准备数据"
        f" / {data_dir / META_FILE}: vocab_size {data_vocab} is larger than the model's vocabulary"
        f" ({model_vocab_size}) in {model_source}: use a matching checkpoint or prepare the data again"
    )


def _short(fingerprint) -> str:
    """指纹只显示前 12 位，足够区分，又不会让一行报错太长。"""
    if not fingerprint:
        return "（无记录 / none）"
    return f"{str(fingerprint)[:12]}…"
