"""激活检查点（train/activation_checkpointing.py）：损失和每个梯度与不开时逐位相同（包括 dropout > 0：
重算时随机数状态被恢复）；参数名、推理、生成都不受影响；命令行训练的损失与不开时相同；峰值内存确实更小。"""

import copy
import json

import pytest
import torch

from conftest import run_cli, tiny_gpt, write_pretrain_config
from test_memory_estimate import measure_peak

from towergpt.train.activation_checkpointing import checkpoint_blocks


def loss_and_gradients(model, idx, seed=123):
    torch.manual_seed(seed)   # dropout 从这里取随机数：两次调用用同一串
    _, loss = model(idx, idx)
    loss.backward()
    return loss.detach(), {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_loss_and_every_gradient_are_bitwise_the_same(dropout):
    idx = torch.randint(0, 300, (3, 48), generator=torch.Generator().manual_seed(0))
    plain_loss, plain = loss_and_gradients(tiny_gpt(300, dropout=dropout).train(), idx)
    model = tiny_gpt(300, dropout=dropout).train()
    assert checkpoint_blocks(model) == 2
    loss, gradients = loss_and_gradients(model, idx)
    assert torch.equal(loss, plain_loss)
    assert gradients.keys() == plain.keys()
    for name in plain:
        assert torch.equal(gradients[name], plain[name]), name
    if dropout:   # dropout 真的起了作用（换一串随机数，损失就不同）：上面的相等不是因为没有丢任何东西
        assert not torch.equal(loss_and_gradients(tiny_gpt(300, dropout=dropout).train(), idx, seed=7)[0], plain_loss)


def test_names_inference_and_generation_are_unchanged():
    from towergpt.generate import generate

    plain = tiny_gpt(300, weight_std=0.3)
    model = tiny_gpt(300, weight_std=0.3)
    checkpoint_blocks(model)
    checkpoint_blocks(model)    # 装两次与装一次相同
    assert list(model.state_dict()) == list(plain.state_dict())
    assert [name for name, _ in model.named_parameters()] == [name for name, _ in plain.named_parameters()]
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():        # 不求梯度时照常前向
        assert torch.equal(model(idx), plain(idx))
    prompt = idx[:1, :5]          # 带 KV 缓存的生成照常前向（重算会把同一段键值写进缓存两次）
    assert torch.equal(generate(model, prompt, 8, temperature=0.0), generate(plain, prompt, 8, temperature=0.0))
    caches = model.new_kv_cache(), plain.new_kv_cache()   # 求梯度时带着缓存前向也一样
    for step in (idx[:1, :5], idx[:1, 5:9]):
        assert torch.equal(model(step, kv_cache=caches[0]), plain(step, kv_cache=caches[1]))
    copied = copy.deepcopy(model)  # 拷贝出来的块用的是它自己的参数
    assert all(block.forward.__self__ is block for block in copied.blocks)


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def test_cli_training_with_checkpointing_gives_the_same_losses(tmp_path, news_data_dir):
    runs = {}
    for name in ("plain", "checkpointed"):
        config = write_pretrain_config(tmp_path / f"{name}.yaml", news_data_dir, tmp_path / name,
                                       dict(d_model=64, max_seq_len=32, dropout=0.1),
                                       dict(lr=3e-3, min_lr=3e-4, warmup_steps=2), eval_batches=2,
                                       max_steps=6, micro_batch_size=4, grad_accum=2, eval_every=0, save_every=0)
        extra = ["--set", "train.activation_checkpointing=true"] if name == "checkpointed" else []
        done = run_cli("pretrain", "--config", config, *extra)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[name] = losses(tmp_path / name)
    assert len(runs["plain"]) == 6 and runs["checkpointed"] == runs["plain"]
    # 检查点里的名字没变：推理照常载入
    generated = run_cli("generate", "--ckpt", tmp_path / "checkpointed", "--prompt", "中国", "--max-new-tokens", "3")
    assert generated.returncode == 0, generated.stderr[-2000:]


def test_peak_memory_is_lower_with_checkpointing():
    """每种配置一个新进程，量训练两步的峰值常驻内存（量法见 test_memory_estimate.py 的开头）。"""
    model = dict(vocab_size=512, n_layer=4, n_head=4, n_kv_head=2, d_model=128, max_seq_len=256)
    train = dict(micro_batch_size=8, dtype="float32")
    plain, plain_estimate = measure_peak(model, train)
    checkpointed, checkpointed_estimate = measure_peak(model, {**train, "activation_checkpointing": True})
    print(f"peak: plain {plain / 2 ** 20:.0f} MiB (est. {plain_estimate / 2 ** 20:.0f}), checkpointed "
          f"{checkpointed / 2 ** 20:.0f} MiB (est. {checkpointed_estimate / 2 ** 20:.0f})")
    # 4 层的中间结果换成 4 份块输入 + 重算时的 1 份：估计约 150 MiB → 约 50 MiB
    assert checkpointed < 0.6 * plain, (plain / 2 ** 20, checkpointed / 2 ** 20)
    assert abs(checkpointed_estimate - checkpointed) <= 0.2 * checkpointed
