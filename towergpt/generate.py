"""文本生成：采样策略、KV 缓存、流式输出。

生成就是反复做一件事：把目前的序列喂给模型，拿到最后一个位置对“下一个 token”的打分
(logits)，按某种规则挑一个 token 接到末尾，直到遇到结束符或达到长度上限。

挑 token 的规则（按顺序施加）：
    重复惩罚   已出现过的 token 打分变差，抑制“复读机”
    禁止重复 n 元组   会让某个 n 元组（连续 n 个 token）第二次出现的 token 直接禁选（--no-repeat-ngram）
    温度       logits / T：T<1 更保守，T>1 更发散；T=0 直接取最大（贪心解码，结果确定）
    top-k      只保留打分最高的 k 个候选
    top-p      按概率从高到低累加，只保留累计概率刚达到 p 的那一小撮（核采样）

KV 缓存：提示词只“预填充”一次，之后每步只把 1 个新 token 送进模型（见 model.KVCache）。

词表的“填充行”：训练时模型的词表常被向上取到 64 的倍数（例如分词器有 6000 个 token，模型输出
6016 个打分），矩阵乘在对齐的形状上更快。多出来的 16 个 id 分词器里根本没有，训练时也从不出现，
但它们的打分并不是 -inf：采样时仍可能（很少地）抽中它们，解码就会失败。所以所有生成函数都接受
`vocab_limit`（= 分词器的词表大小），只在 [0, vocab_limit) 里挑 token。常见错误是只在贪心时
才想到这一点：温度 1.0 的采样平均几千个 token 就会抽中一次填充 id。
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator

import torch

from towergpt.checkpoint import load
from towergpt.decode_step import CompiledDecoder, decode
from towergpt.device import pick_device
from towergpt.errors import TowerGPTError
from towergpt.model import GPT, KVCache
from towergpt.prompt_lookup import LookupStats, check_greedy_only, stream_prompt_lookup


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL 论文的做法：出现过的 token，正的打分除以 penalty，负的乘以 penalty（都变得更不可能）。

    logits (V,)；seen (V,) 布尔，标记上下文里出现过的 token。
    """
    if penalty == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def banned_by_ngrams(ids: list[int], n: int) -> list[int]:
    """禁止重复的 n 元组：下一个 token 若会让某个 n 元组（连续 n 个 token）第二次出现，就不许选它。

    做法：取最后 n−1 个 token 作“前缀”，在前文里找出这个前缀出现过的每一处，那些地方紧跟其后的
    token 就是禁选的。重复惩罚只让出现过的 token 打分变差一次，一个小模型若仍然最想写“张家、”，
    就会“张家、张家、张家、…”一直写下去；禁止重复 3 元组之后，同一段三个 token 根本写不出第二遍。
    代价是正常的重复（“中国”在一段新闻里出现两次）也会被挡住，所以 n 不宜太小。
    """
    if n <= 0 or len(ids) < n - 1:
        return []
    prefix = ids[len(ids) - (n - 1):]
    return [ids[i + n - 1] for i in range(len(ids) - n + 1) if ids[i:i + n - 1] == prefix]


def filter_top_k(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """只保留最高的 k 个打分，其余设为 -inf（概率为 0）。"""
    if top_k is None or top_k <= 0 or top_k >= logits.size(-1):
        return logits
    kth_best = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < kth_best, float("-inf"))


def filter_top_p(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """核采样：按概率从大到小排序，保留累计概率达到 top_p 所需的最少几个 token。"""
    if top_p is None or top_p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # 一个 token 被去掉，当且仅当“排在它前面的那些”的累计概率已经 >= top_p（第一名永远保留）
    remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    remove = torch.zeros_like(remove_sorted).scatter(0, sorted_ids, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def real_token_logits(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """只留下分词器真有的那些 id 的打分：(..., V) → (..., vocab_limit)。

    直接切掉填充行，而不是把它们设成 -inf：切掉之后无论它们的打分多大（甚至是 NaN），
    argmax 和 multinomial 都不可能选中它们。
    """
    if vocab_limit is None or vocab_limit >= logits.size(-1):
        return logits
    return logits[..., :vocab_limit]


def pick_next_token(
    logits: torch.Tensor,
    seen: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    repetition_penalty: float,
    generator: torch.Generator | None,
    banned: list[int] = (),
) -> int:
    """由最后一个位置的 logits (V',) 选出下一个 token id；seen (V',) 与它等长；banned 里的 id 禁选。

    调用者先用 real_token_logits 切掉词表的填充行，所以选出的 id 一定在分词器的词表里。
    """
    logits = apply_repetition_penalty(logits.float(), seen, repetition_penalty)
    if banned:
        logits = logits.index_fill(0, torch.tensor(banned, device=logits.device), float("-inf"))
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = filter_top_p(filter_top_k(logits / temperature, top_k), top_p)
    probs = logits.softmax(dim=-1)
    return int(torch.multinomial(probs, num_samples=1, generator=generator))


@torch.inference_mode()
def stream_generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | Iterable[int] | None = None,
    seed: int | None = None,
    kv_cache: KVCache | None = None,
    vocab_limit: int | None = None,
    cached_ids: list[int] | None = None,
    no_repeat_ngram: int = 0,
) -> Iterator[int]:
    """逐个产出新 token 的 id（不含提示词）。遇到 eos_id（会产出它；可以给多个，例如聊天时的
    <|im_end|> 和 </s>）、达到上限或上下文满时停止。

    idx (1, T) 是提示词。给了 kv_cache 时，缓存里已有的内容被当作 idx 之前的上下文（聊天复用历史）。
    vocab_limit：分词器的词表大小，只在 [0, vocab_limit) 里挑 token（见模块开头“填充行”）。
    no_repeat_ngram：> 0 时禁止重复的 n 元组（见 banned_by_ngrams），看的也是整个上下文。
    cached_ids：缓存里已有的那些 token。重复惩罚要看**整个**上下文出现过哪些 token；
    缓存只存了它们的键和值，不存 id，所以要由调用者告诉我们，否则“复用缓存”和“从头算”
    惩罚的 token 集合不同，回答就不同了。
    """
    if idx.dim() != 2 or idx.size(0) != 1:
        raise ValueError(f"idx 的形状应为 (1, T)，实际是 {tuple(idx.shape)} / idx must be (1, T)")
    context_limit = model.config.max_seq_len
    cache = kv_cache if kv_cache is not None else model.new_kv_cache(batch_size=1, max_len=context_limit)
    cached_ids = list(cached_ids or [])
    if len(cached_ids) != cache.length and (repetition_penalty != 1.0 or no_repeat_ngram > 0):
        raise ValueError(f"cached_ids 有 {len(cached_ids)} 个，缓存里有 {cache.length} 个 token：重复惩罚需要"
                         f"知道缓存里的全部 token / cached_ids must list the tokens already in kv_cache")
    if cache.length + idx.size(1) > context_limit:
        raise TowerGPTError(
            f"提示词有 {cache.length + idx.size(1)} 个 token，超过模型上下文 {context_limit} / "
            f"prompt of {cache.length + idx.size(1)} tokens exceeds the context of {context_limit}"
        )
    generator = None
    if seed is not None:
        generator = torch.Generator(device=idx.device).manual_seed(seed)
    stop_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    vocab = min(vocab_limit or model.config.vocab_size, model.config.vocab_size)
    seen = torch.zeros(vocab, dtype=torch.bool, device=idx.device)     # (V',) 上下文里出现过的 token
    context = torch.cat([torch.tensor(cached_ids, dtype=torch.long, device=idx.device), idx[0]])
    seen[context[context < vocab]] = True
    history = context.tolist()                                          # 整个上下文的 id（n 元组要用）
    # 纯贪心（不惩罚、不禁选）时，下一个 token 就是每步 decode 顺手给出的 argmax，不必再回 Python 里挑
    plain_greedy = temperature <= 0 and repetition_penalty == 1.0 and no_repeat_ngram <= 0

    was_training = model.training
    model.eval()
    try:
        logits = model(idx, kv_cache=cache)[0, -1]              # 预填充：整段提示词只算一次
        greedy = None
        for _ in range(max_new_tokens):
            if plain_greedy and greedy is not None:
                token = greedy
            else:
                logits = real_token_logits(logits, vocab)         # (V,) → (V',)
                banned = banned_by_ngrams(history, no_repeat_ngram)
                token = pick_next_token(logits, seen, temperature, top_k, top_p, repetition_penalty, generator,
                                        banned)
            yield token
            context_full = cache.length + 1 >= context_limit  # 序列（含刚生成的这个）已到上下文上限
            if token in stop_ids or context_full:
                break
            seen[token] = True
            history.append(token)
            step_input = torch.tensor([[token]], device=idx.device)
            step_logits, step_greedy = decode(model, step_input, cache, vocab)   # 之后每步只算 1 个新 token
            logits = step_logits[0, -1]
            greedy = int(step_greedy[0, -1]) if plain_greedy else None
    finally:
        model.train(was_training)


def compile_for_decoding(model: GPT) -> CompiledDecoder:
    """用 torch.compile 编译模型，给逐 token 生成提速（见 docs/PERFORMANCE.md）。

    为什么能快：生成一个 token 时，每层要做二十来个很小的运算（归一化、RoPE、写缓存……），
    每个运算本身只要几微秒，Python 和 PyTorch 分派它们的开销反而占了大头。编译把整次前向
    变成一段融合好的代码，这些开销几乎消失，剩下的主要是读一遍权重做矩阵乘。
    逐 token 的那一步形状固定（整块 KV 缓存 + 掩码，位置是张量），连写缓存和贪心的 argmax 一起编成
    一张图，见 decode_step.py；预填充和批量解码仍按动态形状编译整个模型。
    代价：第一次调用要编译（CPU 上约半分钟），所以只在要生成很多 token 时划算。
    返回的对象用法与原模型相同（属性访问会转给原模型）。
    """
    return CompiledDecoder(model)


def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    eos_id: int | Iterable[int] | None = None,
    seed: int | None = None,
    vocab_limit: int | None = None,
    no_repeat_ngram: int = 0,
    prompt_lookup: int = 0,
) -> torch.Tensor:
    """续写 idx (1, T)，返回 (1, T + n) 的 LongTensor（n ≤ max_new_tokens）。temperature=0 为贪心解码。

    vocab_limit 传分词器的词表大小（tokenizer.vocab_size），见模块开头“填充行”。
    prompt_lookup=k > 0：贪心解码时用提示词查找的投机解码，每次前向核对 k 个从上下文里抄来的草稿
    （结果与普通贪心相同，只是可能更快，见 prompt_lookup.py）；只能和 temperature=0 一起用。
    """
    if prompt_lookup:
        check_greedy_only(temperature, repetition_penalty, no_repeat_ngram)
        tokens = stream_prompt_lookup(model, idx, max_new_tokens, num_draft=prompt_lookup, eos_id=eos_id,
                                      vocab_limit=vocab_limit)
    else:
        tokens = stream_generate(model, idx, max_new_tokens, temperature, top_k, top_p, repetition_penalty, eos_id,
                                 seed, vocab_limit=vocab_limit, no_repeat_ngram=no_repeat_ngram)
    new_tokens = list(tokens)
    tail = torch.tensor([new_tokens], dtype=idx.dtype, device=idx.device)
    return torch.cat([idx, tail], dim=1)


def generate_batch_greedy(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | Iterable[int] | None = None,
    vocab_limit: int | None = None,
) -> list[list[int]]:
    """一次为多条提示词做贪心解码，返回每条新生成的 id（截到第一个停止 token 之前）。"""
    decoded = decode_batch(model, prompts, max_new_tokens, pad_id, eos_id, vocab_limit,
                           choose=lambda logits: logits.argmax(dim=-1))
    return [ids[:-1] if finished else ids for ids, finished in decoded]


def sample_batch(
    model: GPT,
    prompts: list[list[int]],
    max_new_tokens: int,
    pad_id: int,
    eos_id: int | Iterable[int] | None = None,
    vocab_limit: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> list[tuple[list[int], bool]]:
    """一次为多条提示词**采样**（强化学习用：同一个提示词放 G 份，就得到 G 个不同的回答）。

    返回每条的 (新生成的 id —— 停下时含那个停止 token, 是否因停止 token 而结束)。
    只有温度，没有 top-k / top-p：强化学习要的是“模型自己的分布”下的样本，截掉尾巴的样本
    不再来自模型的分布，策略梯度的估计就偏了。temperature = 1 时恰好是模型的分布。
    """
    def choose(logits: torch.Tensor) -> torch.Tensor:
        probs = (logits.float() / temperature).softmax(dim=-1)              # (B, V')
        return torch.multinomial(probs, num_samples=1, generator=generator).view(-1)
    return decode_batch(model, prompts, max_new_tokens, pad_id, eos_id, vocab_limit, choose)


PAD_MULTIPLE = 32


def padded_width(width: int, limit: int) -> int:
    """把批次的宽度向上取到 PAD_MULTIPLE 的倍数（不超过 limit）。

    为什么：CPU 上的 oneDNN（以及 GPU 上的很多内核）为每一种新的张量形状准备一次内核，头几次很慢；
    强化学习每一步的提示词长短不同，若按最长的那条对齐，几乎每步都是新形状（实测头几步一步 13 秒，
    之后 2～3 秒）。取整之后形状只有寥寥几种。左 padding 不改变结果（位置只数真 token），只是多算几列。
    """
    return max(width, min(-(-width // PAD_MULTIPLE) * PAD_MULTIPLE, limit))


@torch.inference_mode()
def decode_batch(model: GPT, prompts: list[list[int]], max_new_tokens: int, pad_id: int,
                 eos_id: int | Iterable[int] | None, vocab_limit: int | None, choose
                 ) -> list[tuple[list[int], bool]]:
    """批量解码的共同部分：choose(logits (B, V')) → (B,) 决定每步选哪个 token。

    提示词长短不一，用**左** padding 对齐：这样每条的最后一个 token 都在同一列，
    下一步要预测的位置也对齐了。attention_mask 让真 token 看不见 padding，
    位置编号也只数真 token（见 model.GPT.forward），所以结果与逐条单独生成相同。
    返回每条的 (新 id（停下时含停止 token）, 是否因停止 token 而结束)。
    """
    stop_ids = {eos_id} if isinstance(eos_id, int) else set(eos_id or ())
    device = model.embed.weight.device
    width = max(len(p) for p in prompts)
    if width + max_new_tokens > model.config.max_seq_len:
        raise TowerGPTError(f"最长的提示词有 {width} 个 token，加上生成部分超过上下文 {model.config.max_seq_len} / "
                            f"prompt plus generation exceeds the context")
    width = padded_width(width, model.config.max_seq_len - max_new_tokens)
    idx = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt, device=device)
        mask[row, width - len(prompt):] = 1

    was_training = model.training
    model.eval()
    cache = model.new_kv_cache(batch_size=len(prompts), max_len=width + max_new_tokens)
    logits = model(idx, attention_mask=mask, kv_cache=cache)[:, -1]
    outputs: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for _ in range(max_new_tokens):
        next_ids = choose(real_token_logits(logits, vocab_limit))          # (B, V') → (B,)
        for row, token in enumerate(next_ids.tolist()):
            if not finished[row]:
                outputs[row].append(token)
                finished[row] = token in stop_ids
        if all(finished):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        logits = model(next_ids.view(-1, 1), attention_mask=mask, kv_cache=cache)[:, -1]
    model.train(was_training)
    return list(zip(outputs, finished))


def stream_text(tokenizer, token_ids: Iterator[int], stop_ids: set[int] = frozenset()) -> Iterator[str]:
    """把逐个到来的 token id 变成逐段到来的文本。

    不能一个 token 一个 token 地单独解码：一个汉字或 emoji 可能被字节回退拆成 2~4 个 token，
    单独解码会得到乱码 '�'。做法是：每来一个 token 就把“已生成的全部 id”重新解码，
    输出比上次多出来的那段文字；若末尾是不完整字符（'�'），先等下一个 token。
    """
    ids: list[int] = []
    printed = ""
    for token in token_ids:
        if token in stop_ids:
            break
        ids.append(token)
        text = tokenizer.decode(ids)
        if text.endswith("\ufffd"):
            continue
        yield text[len(printed):]
        printed = text
    text = tokenizer.decode(ids)
    if len(text) > len(printed):
        yield text[len(printed):]


def check_sampling_args(args) -> None:
    """采样参数的合法性检查，给出清楚的错误。"""
    if args.max_new_tokens < 1:
        raise TowerGPTError("--max-new-tokens 必须 ≥ 1 / must be at least 1")
    if args.temperature < 0:
        raise TowerGPTError("--temperature 不能为负 / must not be negative")
    if args.top_k is not None and args.top_k < 1:
        raise TowerGPTError("--top-k 必须 ≥ 1 / must be at least 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise TowerGPTError("--top-p 必须在 (0, 1] 之间 / must be in (0, 1]")
    if args.repetition_penalty <= 0:
        raise TowerGPTError("--repetition-penalty 必须 > 0 / must be positive")
    if getattr(args, "no_repeat_ngram", 0) < 0:
        raise TowerGPTError("--no-repeat-ngram 不能为负（0 = 不用）/ must not be negative")
    if getattr(args, "prompt_lookup", 0) < 0:
        raise TowerGPTError("--prompt-lookup 不能为负（0 = 不用）/ must not be negative")
    if getattr(args, "prompt_lookup", 0):
        check_greedy_only(args.temperature, args.repetition_penalty, args.no_repeat_ngram)


def generate_cli(args) -> None:
    """`towergpt generate`：载入检查点，把续写内容边生成边打印到终端。"""
    check_sampling_args(args)
    device = pick_device(args.device)
    model, tokenizer = load(args.ckpt, device)
    if args.compile:
        model = compile_for_decoding(model)
    prompt_ids = [tokenizer.bos_id] + tokenizer.encode(args.prompt)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)

    started = time.perf_counter()
    lookup = LookupStats()
    num_draft = getattr(args, "prompt_lookup", 0)
    if num_draft:
        tokens = stream_prompt_lookup(model, idx, args.max_new_tokens, num_draft=num_draft,
                                      eos_id=tokenizer.eos_id, vocab_limit=tokenizer.vocab_size, stats=lookup)
    else:
        tokens = stream_generate(
            model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
            args.repetition_penalty, eos_id=tokenizer.eos_id, seed=args.seed, vocab_limit=tokenizer.vocab_size,
            no_repeat_ngram=args.no_repeat_ngram,
        )
    count = 0

    def counted(ids):
        nonlocal count
        for token in ids:
            count += 1
            yield token

    sys.stdout.write(args.prompt)
    for piece in stream_text(tokenizer, counted(tokens), stop_ids={tokenizer.eos_id}):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    elapsed = time.perf_counter() - started
    drafts = (f", prompt lookup: {lookup.accepted}/{lookup.drafted} drafts accepted, {lookup.forwards} forwards"
              if num_draft else "")
    print(f"[{count} tokens, {count / max(elapsed, 1e-9):.1f} tok/s{drafts}]", file=sys.stderr)
