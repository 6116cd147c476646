"""DPO 演示（docs/dpo.md）：quickstart 的情感任务做成偏好对，训练前后各评一次。

    python docs/examples/dpo_sentiment.py pairs    runs/quickstart
    python docs/examples/dpo_sentiment.py evaluate runs/quickstart runs/quickstart/sft
    python docs/examples/dpo_sentiment.py evaluate runs/quickstart runs/quickstart/dpo

pairs：把训练评论和留出评论各写成偏好对 {"prompt", "chosen", "rejected"}：
    prompt 是 quickstart 里的同一个问题，chosen 是正确的标签，rejected 是错误的那个。
evaluate：在 1000 条留出评论上报告
    - sentiment_accuracy：贪心生成的回答等于标签的比例（与 quickstart 的成绩单完全相同）；
    - preference_accuracy：log π(正确标签) > log π(错误标签) 的比例（模型“更偏向”对的那个）；
    - logp_margin：log π(正确) − log π(错误) 的平均；
    - reward_margin：DPO 的隐式奖励差 β·[(log π − log π_ref)(正确) − (log π − log π_ref)(错误)] 的平均，
      参考模型是 OUT/sft（对 SFT 模型本身这个数恒为 0）。
留出的偏好对要先用 `towergpt data prepare --format dpo --val-fraction 0` 准备到 OUT/dpo_heldout。
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from towergpt.demo import sentiment
from towergpt.checkpoint import load
from towergpt.data.dpo_dataset import DPOData
from towergpt.train.dpo import sequence_logprobs

LABELS = ("正面", "负面")


def write_pairs(out: Path) -> None:
    for split in ("train", "heldout"):
        rows = sentiment.read_reviews(out / "corpus" / f"sentiment_{split}.jsonl")
        path = out / "corpus" / f"sentiment_pairs_{split}.jsonl"
        with open(path, "w", encoding="utf-8") as handle:
            for row in rows:
                wrong = LABELS[1] if row["label"] == LABELS[0] else LABELS[0]
                record = {"prompt": sentiment.question_for(row["review"]), "chosen": row["label"], "rejected": wrong}
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        print(f"{path}: {len(rows)} 对 / pairs")


@torch.no_grad()
def pair_margins(model, data: DPOData) -> torch.Tensor:
    """每对的 log π(chosen) − log π(rejected)，形状 (对数,)。"""
    margins = []
    for batch in data.iter_eval_batches(64):
        logps, _ = sequence_logprobs(model(batch["inputs"]), batch["targets"])
        pairs = batch["pairs"]
        margins.append(logps[:pairs] - logps[pairs:])
    return torch.cat(margins)


def evaluate(out: Path, checkpoint: Path, beta: float) -> dict:
    torch.set_num_threads(1)
    model, tokenizer = load(checkpoint)
    reference, _ = load(out / "sft")
    model.eval(), reference.eval()
    data = DPOData(out / "dpo_heldout", "train", model.config.max_seq_len)
    margins = pair_margins(model, data)
    reference_margins = pair_margins(reference, data)
    result = sentiment.evaluate(model, tokenizer, out / "corpus" / "sentiment_heldout.jsonl")
    result.pop("examples")
    result.update(preference_accuracy=round((margins > 0).float().mean().item(), 4),
                  logp_margin=round(margins.mean().item(), 4),
                  reward_margin=round(beta * (margins - reference_margins).mean().item(), 4))
    return result


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "pairs":
        write_pairs(Path(argv[1]))
    elif len(argv) >= 3 and argv[0] == "evaluate":
        beta = float(argv[3]) if len(argv) > 3 else 0.1
        print(json.dumps(evaluate(Path(argv[1]), Path(argv[2]), beta), ensure_ascii=False, indent=2))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
