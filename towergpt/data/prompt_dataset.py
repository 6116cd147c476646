"""强化学习（GRPO）的数据：只有提示词和参考答案，没有“标准回答”——回答由模型自己采样出来。

一条记录（JSONL / JSON 数组 / Parquet，直接读文件，不必先 `data prepare`：提示词文件通常很小）：

    {"messages": [{"role": "user", "content": "这条评论是正面还是负面？\n房间很干净"}], "answer": "正面"}
    {"prompt": "1 + 1 = ?", "answer": "2"}

每条提示词按唯一的对话模板渲染，末尾接上“轮到助手了”（chat_template.render_chat 的 add_generation_prompt），
模型从那里开始写回答。提示词加上回答的上限（grpo.max_new_tokens）放不进模型的上下文时，这条提示词跳过并计数。

划分：读完后按 seed 打乱一次，最后 val_prompts 条做验证（贪心作答，看奖励），其余做训练。
训练时每个 epoch 再按 (seed, epoch) 打乱；state_dict 记下 epoch 和读到第几条，续训逐条接上。
多进程时每个进程只取 rank::world_size 那一份。
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from towergpt.chat_template import render_chat
from towergpt.data.prompt_records import parse_prompt
from towergpt.data.readers import iter_records, record_location
from towergpt.errors import TowerGPTError


@dataclass(frozen=True)
class Prompt:
    """一条提示词：渲染好的 id（以“轮到助手了”结尾）、原始消息、参考答案。"""

    ids: tuple[int, ...]
    messages: tuple[dict, ...]
    answer: str

    @property
    def text(self) -> str:
        """给奖励函数看的提示词：最后一条用户消息的正文。"""
        return self.messages[-1]["content"]


def read_prompts(path: str | Path, tokenizer, max_prompt_tokens: int) -> tuple[list[Prompt], int]:
    """读提示词文件；返回 (放得进上下文的提示词, 因太长而跳过的条数)。坏记录是一行指明位置和字段的错误。"""
    prompts, too_long = [], 0
    for number, record in iter_records(path):
        location = record_location(Path(path), number)
        messages, answer = parse_prompt(record, location)   # 不合格时是一行 DialogueError（位置 + 字段）
        ids = render_chat(tokenizer, messages, add_generation_prompt=True).ids
        if len(ids) > max_prompt_tokens:
            too_long += 1
            continue
        prompts.append(Prompt(tuple(ids), tuple(messages), answer))
    if not prompts:
        raise TowerGPTError(f"{path}: 没有可用的提示词（{too_long} 条太长）/ no usable prompts")
    return prompts, too_long


def split_prompts(prompts: list[Prompt], val_prompts: int, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """按 seed 打乱一次，最后 val_prompts 条做验证；至少留 1 条训练。"""
    order = list(prompts)
    random.Random(seed).shuffle(order)
    count = min(val_prompts, len(order) - 1)
    return order[:len(order) - count], order[len(order) - count:]


# 长度分桶：每次取这么多个批次的提示词，按长度排好再切成批次（见 PromptData._shuffled）
BUCKET_BATCHES = 32


class PromptData:
    """训练循环要的数据接口：next_batch / state_dict / load_state_dict / iter_eval_batches。批次是 Prompt 的列表。

    batch_size 给了（训练时就是 train.micro_batch_size）就按长度分桶：一批里的提示词长短相近。
    为什么：一批要补齐到最长的那条，评论长短差好几倍（中位数 59 个 token，最长的 200 多），
    随机凑一批几乎总有一条很长的，一半的计算花在 padding 上。分桶只改变“谁和谁一批”，
    每个 epoch 里每条提示词仍然恰好出现一次，批次的先后仍是随机的，所以训练看到的数据分布不变。
    （不要用“只留短的提示词”来提速：短评论的正负比例与全体不同，模型会学歪。）
    """

    def __init__(self, prompts: list[Prompt], seed: int = 0, rank: int = 0, world_size: int = 1,
                 batch_size: int | None = None):
        self.prompts = prompts[rank::world_size]
        self.meta = {"kind": "grpo"}   # 训练循环把它交给实时诊断（doctor 据此做强化学习的检查）
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    def _shuffled(self, epoch: int) -> list[int]:
        """这个 epoch 的顺序：打乱；分桶时每 BUCKET_BATCHES 批按长度排序、切成批，再把所有批打乱。"""
        rng = random.Random(self.seed * 1000003 + epoch)
        order = list(range(len(self.prompts)))
        rng.shuffle(order)
        if not self.batch_size:
            return order
        chunk = self.batch_size * BUCKET_BATCHES
        batches = []
        for start in range(0, len(order), chunk):
            bucket = sorted(order[start:start + chunk], key=lambda i: len(self.prompts[i].ids))
            batches += [bucket[i:i + self.batch_size] for i in range(0, len(bucket), self.batch_size)]
        rng.shuffle(batches)
        return [index for batch in batches for index in batch]

    def next_batch(self, batch_size: int) -> list[Prompt]:
        batch = []
        while len(batch) < batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            batch.append(self.prompts[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)

    def iter_eval_batches(self, batch_size: int, max_batches: int | None = None):
        """验证：按固定顺序把全部提示词分批（max_batches 限制批数）。"""
        for index, start in enumerate(range(0, len(self.prompts), batch_size)):
            if max_batches is not None and index >= max_batches:
                return
            yield self.prompts[start:start + batch_size]
