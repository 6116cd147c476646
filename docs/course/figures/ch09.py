"""第 9 章的图：一个注意力头在训练前后看哪里；logit lens 里答案在第几层成形。

不依赖 course/ 里的任何东西：用一个按种子随机初始化的小 GPT，在一个合成任务上训练约一秒。
任务是“交替序列” a b a b a b …（每条序列的 a、b 随机）：要预测位置 t 之后的 token，就得看位置 t-1
——正是一个“看前一个 token”的头要学会的事。注意力权重和 logit lens 用检视器自己的
towergpt.inspect.walk（walk、lens_logits）算出，与 `towergpt inspect` 给出的是同一组数。
"""

from __future__ import annotations

from functools import lru_cache

import torch

from figures.common import figure, plt, save, setup
from towergpt.inspect.walk import lens_logits, walk
from towergpt.model import GPT, GPTConfig

VOCAB, SEQ, STEPS = 32, 16, 150


def alternating(batch: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, SEQ) 的交替序列：每行随机取两个不同的 token a、b，排成 a b a b …。"""
    a = torch.randint(0, VOCAB, (batch, 1), generator=generator)
    b = (a + torch.randint(1, VOCAB, (batch, 1), generator=generator)) % VOCAB
    return torch.where(torch.arange(SEQ) % 2 == 0, a, b)


@lru_cache(maxsize=1)
def models() -> tuple[GPT, GPT, list[int]]:
    """(随机初始化的模型, 同一个模型训练 STEPS 步之后, 用来画图的一条序列)。"""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB, n_layer=2, n_head=2, n_kv_head=2, d_model=64, max_seq_len=SEQ)
    untrained = GPT(config).eval()
    trained = GPT(config)
    trained.load_state_dict(untrained.state_dict())
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    for _ in range(STEPS):
        x = alternating(32, generator)
        _, loss = trained(x[:, :-1], x[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ids = alternating(1, torch.Generator().manual_seed(1))[0, :12].tolist()
    return untrained, trained.eval(), ids


def moved_from_uniform(weights: torch.Tensor) -> float:
    """要挪动多少权重，才能把每一行变成均匀的 1/(i+1)（第 1…T-1 行的平均；0 = 完全均匀）。与第 9 章 9.3 节同一个量。"""
    rows = range(1, weights.shape[0])
    return sum(0.5 * float((weights[i, :i + 1] - 1 / (i + 1)).abs().sum()) for i in rows) / len(rows)


def draw_attention(path) -> None:
    untrained, trained, ids = models()
    setup()
    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.6), dpi=100, layout="constrained")
    for ax, (model, title) in zip(axes, [(untrained, "random init"), (trained, f"after {STEPS} steps")]):
        weights = walk(model, ids).attention[0, 0]                 # 第 1 层、头 0：(T, T)
        image = ax.imshow(weights.numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"layer 1, head 0: {title}\nweight moved from uniform: {moved_from_uniform(weights):.2f}",
                     fontsize=8)
        ax.set_xlabel("key position j (attended to)", fontsize=8)
        ax.set_ylabel("query position i", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("sequence a b a b ...  (zeros above the diagonal: the causal mask)", fontsize=9)
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="weight (rows sum to 1)")
    fig.savefig(path)
    plt.close(fig)


def draw_lens(path) -> None:
    untrained, trained, ids = models()
    fig, ax = figure()
    layers = list(range(trained.config.n_layer + 1))
    names = ["embedding"] + [f"block {layer}" for layer in layers[1:]]
    for model, style, label in [(trained, "-", "trained"), (untrained, ":", "random init")]:
        residuals = walk(model, ids).residuals                     # (L + 1, T, C)
        right, itself = [], []
        for layer in layers:
            probs = torch.softmax(lens_logits(model, residuals[layer]), dim=-1)   # (T, V)
            positions = range(1, len(ids) - 1)                     # 位置 0 之后的 token 猜不到，不算
            right.append(sum(float(probs[t, ids[t + 1]]) for t in positions) / len(positions))
            itself.append(sum(float(probs[t, ids[t]]) for t in positions) / len(positions))
        ax.plot(layers, right, style, marker="o", color="tab:green", label=f"{label}: p(correct next token)")
        ax.plot(layers, itself, style, marker="s", color="tab:red", label=f"{label}: p(the input token itself)")
    ax.set_xticks(layers, names)
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("probability (mean over positions)")
    ax.set_title("logit lens: read each layer's residual through final norm + output head", fontsize=10)
    ax.legend(fontsize=7, loc="center right")
    save(fig, path)


FIGURES = {"ch09_attention.png": draw_attention, "ch09_lens.png": draw_lens}
