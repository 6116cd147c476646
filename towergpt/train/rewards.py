"""GRPO 的奖励函数：一个程序就能判对错的奖励（不需要奖励模型）。

一个奖励函数给一个回答打一个分（通常 0 或 1）。配置 grpo.rewards 是逗号分隔的列表，每项可带权重：

    grpo.rewards=sentiment                    内置：回答（去掉首尾空白）与参考答案完全一致得 1，否则 0
    grpo.rewards=sentiment:1,format:0.2       加权求和：总奖励 = 1·sentiment + 0.2·format
    grpo.rewards=my_rewards:exact_number      任何 Python 函数（模块:函数），见下

内置：
    sentiment  回答 == 参考答案（quickstart 的情感任务里就是“正面”/“负面”）
    format     回答不为空、并且自己说完了（生成了 <|im_end|>，没有被 max_new_tokens 截断）：
               教模型“答完就停”，常与别的奖励一起用、权重小一些

自己写一个（`module:function`，module 要能被 import：放在当前目录或 PYTHONPATH 里）：

    # my_rewards.py
    def exact_number(prompt: str, completion: str, answer: str) -> float:
        return 1.0 if completion.strip() == answer.strip() else 0.0

prompt 是最后一条用户消息的正文，completion 是模型的回答（不含 <|im_end|>），answer 是数据里的参考答案。
返回值必须是有限的数；抛出异常或返回别的东西时，训练停下并说明是哪个奖励、哪个回答。
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Callable

from towergpt.errors import TowerGPTError


@dataclass(frozen=True)
class Sample:
    """奖励函数看到的一个回答。finished：是不是自己停下的（生成了停止 token）。"""

    prompt: str
    completion: str
    answer: str
    finished: bool


def sentiment(sample: Sample) -> float:
    return 1.0 if sample.completion.strip() == sample.answer.strip() else 0.0


def format_reward(sample: Sample) -> float:
    return 1.0 if sample.finished and sample.completion.strip() else 0.0


BUILTIN: dict[str, Callable[[Sample], float]] = {"sentiment": sentiment, "format": format_reward}


@dataclass(frozen=True)
class Reward:
    name: str
    weight: float
    function: Callable[[Sample], float]

    def __call__(self, sample: Sample) -> float:
        try:
            value = self.function(sample)
        except Exception as error:   # 用户写的函数出了错：说清楚是哪个奖励、哪个回答
            raise TowerGPTError(f"奖励 {self.name} 出错 / reward {self.name} raised {type(error).__name__}: {error}"
                                f"（回答 / completion {sample.completion!r}）") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TowerGPTError(f"奖励 {self.name} 返回了 {value!r}，需要一个有限的数 / must return a finite number")
        return float(value)


def parse_rewards(spec: str) -> list[Reward]:
    """"sentiment:1,format:0.2" → [Reward, ...]。名字不认识、函数找不到、权重不是数都是一行错误。"""
    rewards = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, weight = item, 1.0
        head, _, tail = item.rpartition(":")
        if head and _is_number(tail):
            name, weight = head, float(tail)
        rewards.append(Reward(name, weight, _resolve(name)))
    if not rewards:
        raise TowerGPTError("grpo.rewards 是空的：至少要一个奖励 / grpo.rewards is empty")
    return rewards


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _resolve(name: str) -> Callable[[Sample], float]:
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" not in name:
        raise TowerGPTError(f"grpo.rewards: 不认识的奖励 {name!r}（内置 / built-in: {', '.join(BUILTIN)}；"
                            f"自己的函数写成 模块:函数 / or module:function）")
    module_name, function_name = name.split(":", 1)
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise TowerGPTError(f"grpo.rewards: 找不到 {name}（{error}）/ cannot import the reward function") from None
    return lambda sample: function(sample.prompt, sample.completion, sample.answer)
