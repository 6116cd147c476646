"""多轮聊天：`towergpt chat --ckpt DIR`。

对话历史用和训练时**完全相同**的模板拼成 token（见 chat_template.py），模型生成到 <|im_end|> 为止。

KV 缓存跨轮复用：第 n 轮的输入 = 前 n-1 轮的全部内容 + 新的一句话。前面那一大段在上一轮已经算过，
它们的键和值还在缓存里，所以每轮只需要把“新增的部分”送进模型。做法是比较“缓存里已有的 token”和
“这一轮完整的 token 序列”的公共前缀：前缀部分直接复用，不同的部分（例如因为上下文放不下而丢掉了
最早的几轮）把缓存长度回退到前缀处再重算。

历史里助手的回答保存为它**生成出来的 token id**，而不是文本：把文本重新编码，切分方式可能不同
（例如生成时是“你”“好”两个 token，编码时是“你好”一个），缓存就对不上了。
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Iterator

import torch

from towergpt.chat_template import fit_to_context, generation_prompt_ids, render_chat
from towergpt.checkpoint import load
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.generate import check_sampling_args, compile_for_decoding, stream_generate, stream_text

HELP = """命令 / commands:
  /reset   清空对话历史，重新开始 / start a new conversation
  /exit    退出（也可以按 Ctrl-D）/ quit (or Ctrl-D)
  /help    显示本帮助 / show this help"""


@dataclass
class Sampling:
    """采样参数（与 `towergpt generate` 相同）。"""

    max_new_tokens: int = 200
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float | None = 0.9
    repetition_penalty: float = 1.1
    seed: int | None = None


class ChatSession:
    """一段对话：保存历史（每条消息的 token id），并让 KV 缓存跨轮复用。"""

    def __init__(self, model, tokenizer, system: str | None = None, sampling: Sampling | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.system = system
        self.sampling = sampling or Sampling()
        self.cache = model.new_kv_cache(batch_size=1)
        self.cached_ids: list[int] = []          # 缓存里现在装着的 token（与 cache.length 等长）
        self.history: list[tuple[str, list[int]]] = []   # [(角色, 正文 id), ...]，不含 system
        self.tokens_recomputed = 0               # 统计：一共往模型里送了多少个 token（测试用）

    def reset(self) -> None:
        """清空历史（缓存会在下一轮按公共前缀自动回退）。"""
        self.history = []

    def ask(self, text: str) -> Iterator[str]:
        """说一句话，流式产出助手回答的文本片段；回答结束后它被记入历史。"""
        user_ids = self.tokenizer.encode(text)
        prompt, max_new = self._fit_prompt(user_ids)
        generated: list[int] = []

        def tokens():
            uncached = self._feed(prompt)            # 回退缓存到公共前缀；self.cached_ids 随之截短
            # cached_ids：缓存里已有的 token 也要参与重复惩罚，复用缓存才与从头计算完全一样
            yield from stream_generate(
                self.model, uncached, max_new, self.sampling.temperature, self.sampling.top_k,
                self.sampling.top_p, self.sampling.repetition_penalty,
                eos_id=(self.tokenizer.im_end_id, self.tokenizer.eos_id), seed=self.sampling.seed,
                kv_cache=self.cache, vocab_limit=self.tokenizer.vocab_size, cached_ids=self.cached_ids,
            )

        def recorded():
            for token in tokens():
                generated.append(token)
                yield token

        stops = {self.tokenizer.im_end_id, self.tokenizer.eos_id}
        yield from stream_text(self.tokenizer, recorded(), stop_ids=stops)
        self.cached_ids = (prompt + generated)[: self.cache.length]
        answer = [t for t in generated if t not in stops]
        self.history += [("user", user_ids), ("assistant", answer)]

    # ---- 内部 ----------------------------------------------------------------

    def _messages(self, history: list[tuple[str, list[int]]]) -> list[dict]:
        """(角色, 正文 id) 的历史 → render_chat 认的消息列表（正文直接是 id，不再重新编码）。"""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": role, "content": body} for role, body in history]

    def _fit_prompt(self, user_ids: list[int]) -> tuple[list[int], int]:
        """上下文放不下时，从最早的一轮开始整轮丢弃历史；返回 (完整提示, 本轮最多生成多少 token)。

        与训练、服务用的是同一对函数：render_chat 拼模板，fit_to_context 整轮丢弃。
        """
        limit = self.model.config.max_seq_len
        messages = self._messages(self.history + [("user", user_ids)])
        room = limit - len(generation_prompt_ids(self.tokenizer))     # 末尾还要接 <|im_start|>assistant\n
        # 至少给回答留 1/4 的上下文（或 max_new_tokens，取较小者）；留不出来时只保留这一句，能答几个算几个
        reserve = min(self.sampling.max_new_tokens, limit // 4)
        fitted = fit_to_context(self.tokenizer, messages, room - reserve) or \
            fit_to_context(self.tokenizer, self._messages([("user", user_ids)]), room - 1)
        if fitted is None:
            alone = len(render_chat(self.tokenizer, self._messages([("user", user_ids)]), True).ids)
            raise TowerGPTError(
                f"这句话太长：{alone} 个 token，模型上下文只有 {limit} / message too long for the context"
            )
        kept = fitted[0]
        prompt = render_chat(self.tokenizer, kept, add_generation_prompt=True).ids
        self.history = [(m["role"], m["content"]) for m in kept if m["role"] != "system"][:-1]
        return prompt, min(self.sampling.max_new_tokens, limit - len(prompt))

    def _feed(self, prompt: list[int]) -> torch.Tensor:
        """找出缓存可以复用的公共前缀，把缓存回退到那里，返回还需要送进模型的部分。"""
        common = 0
        for cached, wanted in zip(self.cached_ids, prompt):
            if cached != wanted:
                break
            common += 1
        common = min(common, len(prompt) - 1)          # 至少送 1 个 token，才能拿到下一个 token 的打分
        self.cache.length = common
        self.cached_ids = self.cached_ids[:common]
        self.tokens_recomputed += len(prompt) - common
        device = self.cache.keys[0].device
        return torch.tensor([prompt[common:]], dtype=torch.long, device=device)


def chat_cli(args) -> None:
    """`towergpt chat`：交互式 REPL；`--message` 一问一答；标准输入是管道时每行一轮。"""
    check_sampling_args(args)
    model, tokenizer = load(args.ckpt, pick_device(args.device))
    if args.compile:
        model = compile_for_decoding(model)
    sampling = Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                        args.repetition_penalty, args.seed)
    session = ChatSession(model, tokenizer, system=args.system, sampling=sampling)

    if args.message is not None:
        _answer(session, args.message)
    elif not sys.stdin.isatty():
        for line in sys.stdin:
            if line.strip():
                _answer(session, line.rstrip("\n"))
    else:
        _repl(session)


def _answer(session: ChatSession, text: str, prefix: str = "") -> None:
    sys.stdout.write(prefix)
    for piece in session.ask(text):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def _repl(session: ChatSession) -> None:
    print("TowerGPT 聊天 / chat —— 输入 /help 查看命令 / type /help for commands")
    while True:
        try:
            text = input("\n你 / you > ").strip()
        except EOFError:
            print()
            return
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/help":
            print(HELP)
        elif text == "/reset":
            session.reset()
            print("（已清空对话历史 / history cleared）")
        elif text.startswith("/"):
            print(f"未知命令 / unknown command: {text}\n{HELP}")
        else:
            _answer(session, text, prefix="助手 / assistant > ")
