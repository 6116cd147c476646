"""提示词查找的投机解码：TowerGPT 的 `stream_prompt_lookup` 对 transformers 的 `generate(prompt_lookup_num_tokens=k)`。

    pip install -e ".[hf]"
    python bench/prompt_lookup.py                              # 随机权重，bench/generate.py 的形状，token 提示词
    python bench/prompt_lookup.py --ckpt /tmp/qs/pretrain      # 训练过的检查点（例如 quickstart 的预训练），新闻段落
    python bench/prompt_lookup.py --weight-std 0.3             # 随机权重放大：输出杂乱、不重复上下文（草稿白猜）
    python bench/prompt_lookup.py --compile                    # TowerGPT 两种解码都用 compile_for_decoding

两类文本（每类 --prompts 条）：
    repeat  一段话，接着把它的开头再写一遍：续写时该照抄这段话，要写的内容就在上下文里
    fresh   只有一段话：续写的内容上下文里没有（训练过的模型续写新闻；随机权重时是随机 token）
每条提示词四种贪心解码，批 1，不因 eos 提前停：TowerGPT 普通 / 提示词查找，transformers 普通 / 提示词查找。
两边的提示词查找配置相同：草稿 k = --num-draft 个，最长匹配 n 元组 = --max-ngram（transformers 的
`max_matching_ngram_size`）。匹配规则不同：transformers 取最早的一次出现、草稿到序列末尾为止；
TowerGPT 取最近的一次、不够 k 个时按周期往下猜（见 towergpt/prompt_lookup.py）。
四个输出必须逐 token 相同，否则那一类作废。

报告：接受率 = 被接受的草稿 / 送去核对的草稿；每次前向产出的 token 数（含预填充那一次）；tok/s；
以及“提示词查找 / 同一实现的普通贪心”的速度比。四种解码在同一进程里交替测 --rounds 轮，比值取每轮比值的中位数。
结果写进 bench/results/prompt_lookup.json。
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch

from peers import add_shape_args, llama_config, llama_state_dict, machine_info, model_pair, print_table, \
    shape_from_args, timed, write_report
from towergpt.generate import compile_for_decoding, generate
from towergpt.prompt_lookup import LookupStats, stream_prompt_lookup

PAD_ID = 3


# ---- 两边的模型与提示词 -------------------------------------------------------

def pair_from_checkpoint(path: str):
    """(TowerGPT 模型, 同权重的 transformers Llama, 分词器)：权重的对应关系与 `towergpt export` 相同。"""
    from transformers import LlamaForCausalLM

    from towergpt.checkpoint import load
    from towergpt.hf import llama_format

    ours, tokenizer = load(path, torch.device("cpu"))
    peer = LlamaForCausalLM(llama_config(ours.config))
    missing, unexpected = peer.load_state_dict(llama_format.to_llama_tensors(ours.state_dict(), ours.config),
                                               strict=False)
    if unexpected or [name for name in missing if name != "lm_head.weight"]:
        raise RuntimeError(f"权重没对上 / weights do not match: missing={missing} unexpected={unexpected}")
    return ours.float(), peer.float(), tokenizer


def random_pair(args):
    """随机权重的一对模型。--weight-std 把所有矩阵重新按这个标准差初始化（再拷给 transformers）：

    通常的初始化（0.02）下，随机模型的贪心输出很快开始打转，草稿几乎总被接受；放大到 0.3，输出杂乱、
    不重复上下文，草稿几乎总被拒绝——这正是提示词查找最不利的情形，量的是“白猜”的代价。
    """
    ours, peer = model_pair(shape_from_args(args), seed=args.seed)
    if args.weight_std is not None:
        with torch.no_grad():
            for parameter in ours.parameters():
                if parameter.dim() == 2:
                    parameter.normal_(0.0, args.weight_std)
        peer.load_state_dict(llama_state_dict(ours), strict=False)
    return ours, peer


def news_prompts(tokenizer, count: int, passage_tokens: int) -> dict[str, list[list[int]]]:
    """内置语料里的新闻：fresh = 一段的前 passage_tokens 个 token；repeat = 这一段，换行，再写一遍它的开头。"""
    from towergpt.demo.corpus import news_documents

    fresh, repeat = [], []
    for text in news_documents():
        ids = tokenizer.encode(text.replace("\n", ""))
        if len(ids) < 2 * passage_tokens:
            continue
        passage = ids[:passage_tokens]
        fresh.append([tokenizer.bos_id] + passage)
        repeat.append([tokenizer.bos_id] + passage + tokenizer.encode("\n") + passage[:8])
        if len(fresh) == count:
            break
    return {"repeat": repeat, "fresh": fresh}


def token_prompts(vocab: int, count: int, passage_tokens: int, seed: int) -> dict[str, list[list[int]]]:
    """随机权重时：随机 token 的“段落”（避开特殊 id 0–5）；repeat 再接上它的前 8 个。"""
    generator = torch.Generator().manual_seed(seed)
    passages = [torch.randint(6, vocab, (passage_tokens,), generator=generator).tolist() for _ in range(count)]
    return {"repeat": [p + p[:8] for p in passages], "fresh": passages}


# ---- 四种解码 -------------------------------------------------------------------

def ours_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    idx = torch.tensor([prompt])
    return generate(model, idx, new_tokens)[0, len(prompt):].tolist()


def ours_lookup(model, prompt: list[int], new_tokens: int, args, stats: LookupStats | None = None) -> list[int]:
    return list(stream_prompt_lookup(model, torch.tensor([prompt]), new_tokens, num_draft=args.num_draft,
                                     max_ngram=args.max_ngram, stats=stats))


class PeerCounters:
    """数 transformers 一次 generate 里的前向次数和送去核对的草稿数（它自己不报告这些）。"""

    def __init__(self, peer):
        from transformers.generation import candidate_generator

        self.forwards = 0
        self.drafted = 0
        peer.register_forward_hook(lambda *_: self._count_forward())
        generator_class = candidate_generator.PromptLookupCandidateGenerator
        original = generator_class.get_candidates
        counters = self

        def counted(self, input_ids, **kwargs):
            candidates, logits = original(self, input_ids, **kwargs)
            counters.drafted += candidates.shape[1] - input_ids.shape[1]
            return candidates, logits

        generator_class.get_candidates = counted

    def _count_forward(self):
        self.forwards += 1

    def reset(self):
        self.forwards = self.drafted = 0


def peer_generate(peer, prompt: list[int], new_tokens: int, num_draft: int | None, max_ngram: int) -> list[int]:
    idx = torch.tensor([prompt])
    lookup = {"prompt_lookup_num_tokens": num_draft, "max_matching_ngram_size": max_ngram} if num_draft else {}
    with torch.inference_mode():
        out = peer.generate(input_ids=idx, attention_mask=torch.ones_like(idx), max_new_tokens=new_tokens,
                            min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD_ID, **lookup)
    return out[0, len(prompt):].tolist()


# ---- 测量 -----------------------------------------------------------------------

def check_and_count(ours, peer, counters, prompts, new_tokens, args) -> dict:
    """四种解码各跑一遍：核对输出，数接受率和每次前向的 token 数。"""
    stats, peer_forwards, peer_drafted, produced = LookupStats(), 0, 0, 0
    for prompt in prompts:
        expected = ours_greedy(ours, prompt, new_tokens)
        outputs = {"towergpt_lookup": ours_lookup(ours, prompt, new_tokens, args, stats),
                   "transformers_greedy": peer_generate(peer, prompt, new_tokens, None, args.max_ngram)}
        counters.reset()
        outputs["transformers_lookup"] = peer_generate(peer, prompt, new_tokens, args.num_draft, args.max_ngram)
        peer_forwards, peer_drafted = peer_forwards + counters.forwards, peer_drafted + counters.drafted
        produced += len(expected)
        for name, got in outputs.items():
            if got != expected:
                first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), len(expected))
                print(f"{name} 与 TowerGPT 贪心在第 {first} 个 token 分叉，比较作废 / outputs differ, comparison void")
                return {"outputs_match": False}
    peer_accepted = produced - peer_forwards           # transformers 每次前向产出“被接受的草稿 + 1”个
    return {"outputs_match": True, "new_tokens": produced,
            "towergpt_acceptance": stats.acceptance_rate,
            "towergpt_tokens_per_forward": produced / (stats.forwards + 1),
            "transformers_acceptance": peer_accepted / peer_drafted if peer_drafted else 0.0,
            "transformers_tokens_per_forward": produced / peer_forwards}


def measure(ours, peer, counters, kind: str, prompts, args) -> dict:
    new_tokens = min(args.new_tokens, ours.config.max_seq_len - max(len(p) for p in prompts))
    row = {"text": kind, "prompts": len(prompts), "num_draft": args.num_draft, "max_ngram": args.max_ngram,
           "compile": args.compile} | check_and_count(ours, peer, counters, prompts, new_tokens, args)
    if not row["outputs_match"]:
        return row
    decoders = {
        "towergpt_greedy": lambda p: ours_greedy(ours, p, new_tokens),
        "towergpt_lookup": lambda p: ours_lookup(ours, p, new_tokens, args),
        "transformers_greedy": lambda p: peer_generate(peer, p, new_tokens, None, args.max_ngram),
        "transformers_lookup": lambda p: peer_generate(peer, p, new_tokens, args.num_draft, args.max_ngram),
    }
    rounds = {name: [] for name in decoders}
    for _ in range(args.rounds):                       # 交替：四种解码吃到同样的机器负载
        for name, decode in decoders.items():
            rounds[name].append(timed(lambda: [decode(p) for p in prompts]))

    def ratio(a: str, b: str) -> float:               # b 的秒数 / a 的秒数 = a 比 b 快几倍，每轮一个，取中位数
        return statistics.median(tb / ta for ta, tb in zip(rounds[a], rounds[b]))

    row |= {f"{name}_tok_s": row["new_tokens"] / statistics.median(s) for name, s in rounds.items()}
    return row | {"towergpt_lookup_speedup": ratio("towergpt_lookup", "towergpt_greedy"),
                  "transformers_lookup_speedup": ratio("transformers_lookup", "transformers_greedy"),
                  "greedy_ratio_vs_transformers": ratio("towergpt_greedy", "transformers_greedy"),
                  "lookup_ratio_vs_transformers": ratio("towergpt_lookup", "transformers_lookup"),
                  "rounds_s": rounds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_args(parser, seq_help="随机权重时模型的上下文长度")
    parser.add_argument("--ckpt", default=None, help="训练过的 TowerGPT 检查点（运行目录或检查点目录）；不给就用随机权重")
    parser.add_argument("--weight-std", type=float, default=None,
                        help="随机权重时把矩阵按这个标准差重新初始化（0.3：输出不重复上下文）")
    parser.add_argument("--num-draft", type=int, default=5, help="每次核对的草稿 token 数 k（两边相同）")
    parser.add_argument("--max-ngram", type=int, default=3, help="最长匹配的 n 元组（transformers 的 max_matching_ngram_size）")
    parser.add_argument("--prompts", type=int, default=3, help="每类文本几条提示词")
    parser.add_argument("--passage-tokens", type=int, default=48, help="每段话多少个 token")
    parser.add_argument("--new-tokens", type=int, default=200, help="每条最多生成多少个（不超过上下文）")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="TowerGPT 用 compile_for_decoding（首次编译不计时）")
    parser.add_argument("--out", default="bench/results/prompt_lookup.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.ckpt:
        ours, peer, tokenizer = pair_from_checkpoint(args.ckpt)
        texts = news_prompts(tokenizer, args.prompts, args.passage_tokens)
    else:
        ours, peer = random_pair(args)
        texts = token_prompts(ours.config.vocab_size, args.prompts, args.passage_tokens, args.seed)
    ours.eval()
    peer.eval()
    peer.generation_config.eos_token_id = None        # 两边都不因 eos 提前停
    counters = PeerCounters(peer)
    if args.compile:
        ours = compile_for_decoding(ours)             # 下面核对输出时完成编译，不计入计时
    results = []
    for kind, prompts in texts.items():
        results.append(measure(ours, peer, counters, kind, prompts, args))
        row = results[-1]
        if row["outputs_match"]:
            print(f"{kind}: TowerGPT acceptance {row['towergpt_acceptance']:.2f}, lookup speedup "
                  f"{row['towergpt_lookup_speedup']:.2f}; transformers acceptance {row['transformers_acceptance']:.2f}, "
                  f"lookup speedup {row['transformers_lookup_speedup']:.2f}", flush=True)

    print()
    nan = float("nan")
    print_table(["text", "k", "n", "compile", "match", "TowerGPT accept", "TowerGPT tok/fwd", "HF accept", "HF tok/fwd",
                 "TowerGPT greedy tok/s", "TowerGPT lookup tok/s", "HF greedy tok/s", "HF lookup tok/s",
                 "TowerGPT lookup/greedy", "HF lookup/greedy", "greedy vs HF", "lookup vs HF"],
                [[r["text"], r["num_draft"], r["max_ngram"], r["compile"], r["outputs_match"]]
                 + [r.get(key, nan) for key in (
                     "towergpt_acceptance", "towergpt_tokens_per_forward", "transformers_acceptance",
                     "transformers_tokens_per_forward", "towergpt_greedy_tok_s", "towergpt_lookup_tok_s",
                     "transformers_greedy_tok_s", "transformers_lookup_tok_s", "towergpt_lookup_speedup",
                     "transformers_lookup_speedup", "greedy_ratio_vs_transformers", "lookup_ratio_vs_transformers")]
                 for r in results])
    write_report(args.out, {"benchmark": "prompt_lookup", "machine": machine_info(),
                            "shape": ours.config.to_dict(), "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
