"""唯一的训练循环：预训练、SFT、DPO 都用它，区别只在“目标函数”和“数据”。

一步（step）= 一次参数更新：

    for 每个微批次（grad_accum 次）:
        损失 = 目标函数(模型, 批次)            # autocast 下前向
        (损失 × 权重).backward()              # 梯度在 .grad 里累加；权重见下
    把梯度“反缩放”回真实大小（只有 fp16 需要）
    裁剪梯度的全局范数                          # 必须在反缩放之后！原项目裁剪的是被放大的梯度
    损失或梯度不是有限数？跳过这次更新并记录
    optimizer.step()；清零梯度

多进程（torchrun）时，每个进程跑同一个循环、读不同的数据；梯度在反向传播时自动求平均
（见 train/distributed.py）。只有 rank 0 打印、写指标、存检查点。

目标函数的接口：objective(model, batch, device) -> (loss, tokens) 或 (loss, tokens, metrics)，
    loss 是标量张量，tokens 是这个批次里的 token 数（用于统计吞吐）；
    metrics（可选）是 {名字: 标量张量}，本批的附加指标（DPO 的 rewards/chosen 等），
    与 loss 一样按批次加权平均后写进训练行，评估时加上 val_ 前缀写进评估行。
    DPO 用的冻结参考模型由目标函数自己持有（见 train/dpo.py），循环只更新、保存 model。
训练数据的接口：next_batch(batch_size)、state_dict()、load_state_dict()。
验证数据的接口：iter_eval_batches(batch_size, max_batches)、characters_per_token。

权重：loss 是一个微批次里若干“单位”上的平均，权重 = 本批单位数 / 这一步的总单位数。
语言模型的单位是参与损失的目标 token：预训练每个微批次一样多，就是“除以 grad_accum”；
SFT 里每批助手的 token 数各不相同，按 token 数加权才等于“把所有微批次拼成一个大批次”的平均
（简单地除以 grad_accum 会让 token 少的批次里每个 token 分量更重）。DPO 的批次是 dict，带 "pairs"
（这批有几对）：损失是每对一个数的平均，单位是对——哪怕 epoch 末的批次不满，
累积 N 个微批次的梯度也恰好等于“一次算完所有对”的大批次梯度。
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from towergpt.config import RunConfig, save_config
from towergpt.errors import TowerGPTError
from towergpt.train import distributed, precision
from towergpt.train.checkpointing import (clear_stale_temporaries, latest_checkpoint, load_newest_intact,
                                          save_checkpoint)
from towergpt.train.metrics import MetricsLogger
from towergpt.train.optim import build_optimizer, learning_rate, set_learning_rate
from towergpt.train.signals import StopRequest


@dataclass
class TrainProgress:
    """训练进度：会随检查点一起保存，续训时原样恢复。"""

    step: int = 0
    tokens_seen: int = 0
    elapsed_s: float = 0.0
    bad_streak: int = 0              # 连续出现非有限损失/梯度的步数
    last_eval: dict = field(default_factory=dict)


class Trainer:
    """把模型、目标函数、数据和配置组装起来，跑完整个训练。"""

    def __init__(self, config: RunConfig, model, tokenizer, objective, train_data, val_data=None):
        self.config = config
        self.tokenizer = tokenizer
        self.objective = objective
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(config.train.out_dir)

        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.dist, self.device = distributed.setup(config.train.device, config.train.distributed)
        if self.dist.enabled and config.train.distributed == "fsdp" and config.optim.name != "adamw":
            raise TowerGPTError("train.distributed=fsdp 目前只支持 optim.name=adamw（GaLore / Muon 需要完整矩阵）/ "
                                "FSDP supports only adamw")
        self.dtype = precision.pick_dtype(config.train.dtype, self.device)
        self.model_class = type(model)   # FSDP 会把模型的类换成一个动态子类，先记下原来的
        self.model = model.to(self.device)
        # forward_model 是训练时做前向的“外壳”（torch.compile / DDP / FSDP），参数仍是 self.model 的那一份
        self.forward_model = distributed.wrap_model(self.model, self.dist, self.device, config.train.compile)
        self.optimizer = build_optimizer(self.model, config.optim, self.device)
        self.scaler = precision.make_grad_scaler(self.device, self.dtype)
        self.progress = TrainProgress()
        self.fsdp = self.dist.enabled and self.dist.strategy == "fsdp"

    # ---- 入口 ----------------------------------------------------------------

    def run(self, resume: bool = False) -> dict:
        """训练到 max_steps（或被信号打断），返回摘要 dict。"""
        distributed.check_ranks_agree(self._fingerprint(), self.dist)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self._resume()
        elif latest_checkpoint(self.run_dir) is not None:
            raise TowerGPTError(
                f"{self.run_dir} 里已有检查点：续训请加 --resume，重新开始请换一个 train.out_dir / "
                f"checkpoints exist: pass --resume, or choose another train.out_dir"
            )
        self.metrics = None
        if self.dist.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            self.metrics = MetricsLogger(self.run_dir, resume_step=self.progress.step)
        try:
            stopped_by = self._loop()
        finally:
            if self.metrics is not None:
                self.metrics.close()
        distributed.teardown()
        return self._summary(stopped_by)

    def _fingerprint(self) -> dict:
        """多进程时各 rank 必须一致的东西：完整配置 + 数据的描述。"""
        meta = getattr(self.train_data, "meta", {}) or {}
        return {"config": self.config.to_dict(), "data": {k: meta.get(k) for k in ("tokenizer_fingerprint", "train")}}

    def _log(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.log(row)

    def _loop(self) -> str:
        train = self.config.train
        bar = tqdm(total=train.max_steps, initial=self.progress.step, unit="step", dynamic_ncols=True,
                   desc="训练 / train", disable=not self.dist.is_main)
        self.model.train()
        with StopRequest() as stop, bar:
            while self.progress.step < train.max_steps:
                step = self.progress.step + 1
                row = self.train_step(step)
                self.progress.step = step
                if step % train.log_every == 0 or step in (1, train.max_steps) or row.get("skipped"):
                    self._log(row)
                if self.progress.bad_streak >= train.max_bad_steps:
                    self._stop_after_bad_steps()
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tok_per_s']:.0f}")
                finishing = step == train.max_steps
                # 某个进程收到信号，所有进程都要在同一步停下（否则其余进程会在下一次通信时永远等下去）
                stopping = distributed.any_rank(stop.requested, self.dist, self.device)
                if (train.eval_every and step % train.eval_every == 0) or finishing:
                    self._evaluate(bar)
                if (train.save_every and step % train.save_every == 0) or finishing or stopping:
                    self._save()
                if stopping:
                    bar.write(f"已在第 {step} 步保存并停止 / saved at step {step} and stopped")
                    return stop.signal_name
        return "max_steps"

    # ---- 一步训练 --------------------------------------------------------------

    def train_step(self, step: int) -> dict:
        """做第 step 步（1 起）的一次完整更新，返回这一步的指标行。"""
        train, optim = self.config.train, self.config.optim
        started = time.perf_counter()
        lr = learning_rate(step, optim, train.max_steps)
        set_learning_rate(self.optimizer, lr)

        # 先取出这一步的全部微批次（只是 token id，很小）：知道总单位数（目标 token 或偏好对）
        # 才能给每个微批次定权重（见模块开头）
        batches = [self.train_data.next_batch(train.micro_batch_size) for _ in range(train.grad_accum)]
        if self.device.type == "cuda":
            # 锁页内存（pinned）里的张量才能真正异步地拷到 GPU：目标函数里的 .to(device, non_blocking=True)
            # 于是不等拷贝完成就返回，GPU 算上一个微批次时，下一个微批次已经在路上。
            # 取批次本身只是从内存映射的分片里切几行 token（微秒级），不需要再开后台线程预取。
            batches = [_pinned(batch) for batch in batches]
        weights = [_loss_weight(batch) for batch in batches]
        total_weight = max(sum(weights), 1)
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        tokens = 0
        for micro_step, (batch, weight) in enumerate(zip(batches, weights)):
            # 多进程时，只有最后一个微批次的反向传播才在进程间同步梯度
            last = micro_step == train.grad_accum - 1
            with distributed.skip_gradient_sync(self.forward_model, self.dist, skip=not last):
                with precision.autocast(self.device, self.dtype):
                    loss, batch_tokens, metrics = _unpack(self.objective(self.forward_model, batch, self.device))
                # 乘 weight / total_weight：各微批次的平均按单位数加权，相加后等于大批次的平均；
                # 预训练每个微批次的目标 token 一样多，这就是“除以 grad_accum”
                self.scaler.scale(loss * weight / total_weight).backward()
            loss_sum += loss.detach() * weight
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + value.detach().float() * weight
            tokens += batch_tokens
        # 日志里的损失和附加指标是所有进程的平均，token 数是所有进程之和（全局批次 = 微批次 × 累积 × 进程数）
        names = sorted(metric_sums)
        totals = torch.stack([loss_sum, torch.tensor(float(tokens), device=self.device),
                              *(metric_sums[name] for name in names)])
        loss_sum, tokens, *metric_values = distributed.all_reduce_sum(totals, self.dist)
        loss_sum, tokens = loss_sum / self.dist.world_size, int(tokens.item())
        extra = {name: (value / self.dist.world_size / total_weight).item() for name, value in zip(names, metric_values)}

        # 先把 fp16 放大过的梯度缩回真实大小，再裁剪 —— 顺序反了，裁剪阈值就失去意义
        self.scaler.unscale_(self.optimizer)
        max_norm = optim.grad_clip if optim.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        mean_loss = (loss_sum / total_weight).item()
        finite = math.isfinite(mean_loss) and (self.scaler.is_enabled() or bool(torch.isfinite(grad_norm)))
        if finite:
            self.scaler.step(self.optimizer)  # fp16 下若梯度含 inf，scaler 自己会跳过并调小放大倍数
            self.scaler.update()
            self.progress.bad_streak = 0
        else:
            self._on_bad_step(step, mean_loss, float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)

        seconds = time.perf_counter() - started
        self.progress.tokens_seen += tokens
        self.progress.elapsed_s += seconds
        return {
            "step": step, "tokens": self.progress.tokens_seen, "loss": mean_loss, "lr": lr,
            "grad_norm": float(grad_norm), "tok_per_s": tokens / max(seconds, 1e-9),
            "elapsed_s": round(self.progress.elapsed_s, 3), **extra, **({} if finite else {"skipped": True}),
        }

    def _on_bad_step(self, step: int, loss: float, grad_norm: float) -> None:
        """损失或梯度是 NaN/inf：这一步不更新参数，只记录下来。"""
        self.progress.bad_streak += 1
        if self.dist.is_main:
            tqdm.write(f"第 {step} 步损失/梯度非有限（loss={loss}, grad_norm={grad_norm}），跳过更新 / "
                       f"non-finite step skipped")

    def _stop_after_bad_steps(self) -> None:
        """连续太多步非有限：参数仍是最后一次正常更新后的状态，保存它并清楚地停下。"""
        path = self._save()
        raise TowerGPTError(
            f"连续 {self.progress.bad_streak} 步损失或梯度为 NaN/inf，已停止；参数仍是最后一次正常更新后的状态，"
            f"已保存到 {path}。可尝试降低 optim.lr、开启 optim.grad_clip 或改用 bfloat16 / "
            f"{self.progress.bad_streak} non-finite steps in a row; last good state saved"
        )

    # ---- 评估 ----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict:
        """在验证集上算平均损失、困惑度和每字符比特数（bpc）。

        DDP 时只有 rank 0 评估（用不带 DDP 外壳的模型，不涉及通信）；FSDP 时参数分散在各进程，
        前向需要所有进程一起参与，所以大家都评估同样的批次，只有 rank 0 记录。
        """
        if self.val_data is None or not (self.dist.is_main or self.fsdp):
            return {}
        eval_model = self.forward_model if self.fsdp else getattr(self.forward_model, "module", self.forward_model)
        self.model.eval()
        loss_total, weight_total, metric_totals = 0.0, 0, {}
        batches = self.val_data.iter_eval_batches(self.config.train.micro_batch_size,
                                                  self.config.data.eval_batches or None)
        pair_batches = False
        for batch in batches:
            with precision.autocast(self.device, self.dtype):
                loss, _, metrics = _unpack(self.objective(eval_model, batch, self.device))
            # 按损失“平均的单位”加权：语言模型按目标 token 数，DPO 按偏好对数
            pair_batches = pair_batches or _pair_count(batch) is not None
            weight = _loss_weight(batch)
            loss_total += loss.item() * weight
            weight_total += weight
            for name, value in metrics.items():
                metric_totals[name] = metric_totals.get(name, 0.0) + value.item() * weight
        if self.fsdp:
            # FSDP2 的根模块在只有前向、没有反向时会一直保留“收集好的完整参数”；手动切回分片，
            # 否则之后取优化器状态时参数对不上号
            self.model.reshard()
        self.model.train()
        if weight_total == 0:
            return {}
        val_loss = loss_total / weight_total
        result = {"val_loss": val_loss}
        if not pair_batches:  # 困惑度 = exp(每个 token 的交叉熵)；DPO 的损失不是交叉熵，exp 它没有意义
            result["val_ppl"] = math.exp(min(val_loss, 50.0))
        result.update({f"val_{name}": total / weight_total for name, total in metric_totals.items()})
        chars_per_token = getattr(self.val_data, "characters_per_token", None)
        if chars_per_token:
            # bpc = 每个 token 的比特数 / 每个 token 平均几个字符；与分词器无关，不同词表的模型可以直接比
            result["val_bpc"] = val_loss / math.log(2) / chars_per_token
        return result

    def _evaluate(self, bar) -> None:
        result = self.evaluate()
        if not result:
            return
        self.progress.last_eval = result
        self._log({"step": self.progress.step, **result})
        parts = ", ".join(f"{k}={v:.4f}" for k, v in result.items())
        bar.write(f"[step {self.progress.step}] {parts}")

    # ---- 检查点 --------------------------------------------------------------

    def _trainer_state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        optimizer_state = (distributed.full_optimizer_state(self.model, self.optimizer, self.dist) if self.fsdp
                           else self.optimizer.state_dict())
        return {
            "progress": {
                "step": self.progress.step, "tokens_seen": self.progress.tokens_seen,
                "elapsed_s": self.progress.elapsed_s, "bad_streak": self.progress.bad_streak,
                "last_eval": dict(self.progress.last_eval),
            },
            "optimizer": optimizer_state,
            "scaler": self.scaler.state_dict(),
            "data": self.train_data.state_dict(),
            # 每个进程的随机数状态（dropout 用到它）：续训后与不中断时完全一致
            "rng_per_rank": distributed.gather_objects(rng, self.dist),
            "world_size": self.dist.world_size,
        }

    def _save(self) -> Path | None:
        """所有进程都要调用（FSDP 收集分片、随机数状态收集都是集体通信），只有 rank 0 写文件。"""
        state = self._trainer_state()
        model = self._model_for_saving()
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.progress.step, model, self.tokenizer, state,
                                   self.config.train.keep_last)
        distributed.barrier(self.dist)
        return path or latest_checkpoint(self.run_dir)

    def _model_for_saving(self):
        """DDP / 单进程：就是 self.model。FSDP：把分片收集成完整权重，放进 CPU 上的一个新模型里再保存。"""
        if not self.fsdp:
            return self.model
        full = distributed.full_model_state(self.model, self.dist)
        if not self.dist.is_main:
            return None
        cpu_model = self.model_class(self.model.config)
        cpu_model.load_state_dict(full)
        return cpu_model

    def _resume(self) -> None:
        """从最新的完好检查点恢复一切；坏掉的检查点跳过（打印一行警告），见 train/checkpointing.py。"""
        if self.dist.is_main:
            # 上次进程被杀时没来得及删的 .tmp-* 目录：不删的话它一直占着磁盘，下次保存可能又满
            clear_stale_temporaries(self.run_dir / "checkpoints")
        warn = (lambda line: print(line, file=sys.stderr, flush=True)) if self.dist.is_main else (lambda line: None)
        if self.fsdp:
            # 先把完整权重读进 CPU 上的一个新模型，再由 FSDP 切成本进程的分片
            full_model = self.model_class(self.model.config)
            directory, state = load_newest_intact(self.run_dir, full_model, warn)
            distributed.load_full_state(self.model, self.optimizer, full_model.state_dict(), state["optimizer"])
        else:
            directory, state = load_newest_intact(self.run_dir, self.model, warn)
            self.optimizer.load_state_dict(state["optimizer"])
        if state.get("world_size", 1) != self.dist.world_size:
            raise TowerGPTError(
                f"{directory} 是用 {state.get('world_size', 1)} 个进程训练的，续训需要同样的进程数（现在是 "
                f"{self.dist.world_size}）/ resume needs the same number of processes"
            )
        self.scaler.load_state_dict(state["scaler"])
        self.train_data.load_state_dict(state["data"])
        rng = state["rng_per_rank"][self.dist.rank]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.progress = TrainProgress(**state["progress"])
        if self.dist.is_main:
            print(f"从 {directory} 续训（第 {self.progress.step} 步）/ resuming from step {self.progress.step}")

    def _summary(self, stopped_by: str) -> dict:
        return {
            "step": self.progress.step,
            "tokens_seen": self.progress.tokens_seen,
            "elapsed_s": round(self.progress.elapsed_s, 2),
            "stopped_by": stopped_by,
            **self.progress.last_eval,
        }


def _unpack(output) -> tuple:
    """目标函数的返回值统一成 (loss, tokens, metrics)：没有附加指标的给一个空 dict。"""
    if len(output) == 2:
        return output[0], output[1], {}
    return output


def _pinned(batch):
    """把批次（张量，或张量组成的 tuple / list / dict）放进锁页内存；其余值原样返回。"""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    if isinstance(batch, (tuple, list)):
        return type(batch)(_pinned(item) for item in batch)
    if isinstance(batch, dict):
        return {key: _pinned(value) for key, value in batch.items()}
    return batch


def _loss_weight(batch) -> int:
    """这个微批次的损失是多少个“单位”上的平均：DPO 是偏好对数，语言模型是参与损失的目标 token 数。"""
    pairs = _pair_count(batch)
    return pairs if pairs is not None else _count_targets(batch)


def _pair_count(batch) -> int | None:
    """DPO 批次（带 "pairs" 的 dict）里有几对偏好；其余批次返回 None。"""
    return int(batch["pairs"]) if isinstance(batch, dict) and "pairs" in batch else None


def _count_targets(batch) -> int:
    """批次里参与损失的目标 token 数（标签不等于 -100 的位置）。"""
    targets = batch[1] if isinstance(batch, (tuple, list)) else batch["targets"]
    return int((targets != -100).sum())
