"""唯一的训练循环：预训练、SFT、DPO（以及之后的 GRPO）都用它，区别只在“目标函数”和“数据”。

一步（step）= 一次参数更新，分两半（Trainer.train_step）：

    ① 累积梯度（_accumulate_gradients）
    for 每个微批次（grad_accum 次）:
        结果 = 目标函数(模型, 批次)                      # autocast 下前向；结果是一个 ObjectiveResult
        (结果.loss × 结果.weight / 临时分母).backward()   # 梯度在 .grad 里累加；为什么这样加权见下
    梯度 ×= 校正系数                                     # 于是 .grad 恰好是“一个大批次”的平均梯度
    ② 更新参数（_apply_update）
    把梯度“反缩放”回真实大小（只有 fp16 需要）
    裁剪梯度的全局范数                                   # 必须在反缩放之后！常见错误是裁剪被放大的梯度
    损失或梯度不是有限数？跳过这次更新并记录
    optimizer.step()；清零梯度

多进程（torchrun）时，每个进程跑同一个循环、读不同的数据；梯度在最后一次反向传播时自动对进程求平均
（见 train/distributed.py）。只有 rank 0 打印、写指标、存检查点。

循环对任何一种具体的目标函数都一无所知，只认三样接口：
    目标函数  objective(model, batch, device) -> ObjectiveResult（loss、weight、tokens、metrics、
              是否交叉熵；见 train/objective.py）。DPO 的冻结参考模型由目标函数自己持有（train/dpo.py），
              循环只更新、保存 model。
    训练数据  next_batch(batch_size)、state_dict()、load_state_dict()
    验证数据  iter_eval_batches(batch_size, max_batches)；可选 characters_per_token（换算 bpc 用）

权重：怎样让梯度累积恰好等于一个大批次
    结果 i 的 loss_i 是 w_i 个单位（目标 token、偏好对……）上的平均。把 N 个微批次拼成一个大批次，
    平均损失是 Σ w_i·loss_i / W（W = Σ w_i），它的梯度是 Σ w_i·g_i / W。简单地“除以 N”只在各批
    单位数相同时才对：SFT 里每批助手的 token 数不同，DPO 在 epoch 末会有不满的批。

    难处：w_i 写在目标函数交回的结果里——循环不知道批次长什么样，没法自己去数（GRPO 的 w_i 更是要等
    采样出回答才有）；而反向必须紧跟前向，否则要同时留着所有微批次的激活值，梯度累积就白做了。
    所以做第一次反向时，W 还不知道。办法：

        先用一个临时分母 D 反向：第 i 个微批次反向 w_i·loss_i / D，.grad 累积成 Σ w_i·g_i / D；
        全部做完、知道了 W 之后，梯度再乘 D / W，就恰好是 Σ w_i·g_i / W。

    D 取“grad_accum × 第一个微批次的 w”，即假定每批都和第一批一样多。为什么不干脆 D = 1（反向“和”）？
    fp16 下梯度会随单位数（成千上万个 token）一起变大而溢出；有了 D，每次反向的量级与普通的平均损失相同。
    预训练每批的目标 token 一样多，D 恰好等于 W，校正系数是 1，这一步直接省掉。

    多进程（P 个）：DDP / FSDP 在最后一次反向里把梯度对进程求平均（÷ P），所以各进程必须用同一个 D
    （取各进程的平均），校正系数是 D·P / W_全局。结果是“所有进程的所有微批次拼成一个大批次”的平均梯度，
    哪怕各进程的单位数不同。
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from towergpt.config import RunConfig, save_config
from towergpt.device import pin_memory
from towergpt.doctor.live import LiveDoctor, warning_line
from towergpt.errors import TowerGPTError
from towergpt.train import distributed, precision
from towergpt.train.activation_checkpointing import checkpoint_blocks
from towergpt.train.budget import BudgetClock, BudgetState, decay_progress, should_finish
from towergpt.train.checkpointing import clear_stale_temporaries, latest_checkpoint, save_checkpoint
from towergpt.train.metrics import MetricsLogger
from towergpt.train.objective import ResultSums, evaluate_objective, validation_metrics
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
    budget: BudgetState = field(default_factory=BudgetState)   # 时间预算的记账（见 train/budget.py）

    def __post_init__(self):
        if isinstance(self.budget, dict):   # 从检查点读回来时是普通 dict
            self.budget = BudgetState(**self.budget)


class Trainer:
    """把模型、目标函数、数据和配置组装起来，跑完整个训练。"""

    def __init__(self, config: RunConfig, model, tokenizer, objective, train_data, val_data=None,
                 clock=time.perf_counter):
        self.config = config
        self.clock = clock   # 计时用的钟；测试可换成假时钟，让按时间预算的训练也能逐位复现
        self.tokenizer = tokenizer
        self.objective = objective
        self.train_data = train_data
        self.val_data = val_data
        self.run_dir = Path(config.train.out_dir)

        if config.train.threads > 0:
            torch.set_num_threads(config.train.threads)
        self.dist, self.device = distributed.setup(config.train.device, config.train.distributed)
        distributed.check_optimizer(self.dist, config.optim.name)
        self.dtype = precision.pick_dtype(config.train.dtype, self.device)
        self.model_class = type(model)   # FSDP 会把模型的类换成一个动态子类，先记下原来的
        self.model = model.to(self.device)
        if config.train.activation_checkpointing:   # 每块只存输入、反向时重算；必须在 compile / DDP / FSDP 之前
            checkpoint_blocks(self.model)
        # forward_model 是训练时做前向的“外壳”（torch.compile / DDP / FSDP），参数仍是 self.model 的那一份
        self.forward_model = distributed.wrap_model(self.model, self.dist, self.device, config.train.compile)
        self.optimizer = build_optimizer(self.model, config.optim, self.device)
        self.scaler = precision.make_grad_scaler(self.device, self.dtype)
        self.progress = TrainProgress()

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
        self.metrics = self.doctor = None
        if self.dist.is_main:
            save_config(self.config, self.run_dir / "config.yaml")
            self.metrics = MetricsLogger(self.run_dir, resume_step=self.progress.step)
            # 实时诊断（towergpt/doctor/live.py）：种类取自数据的 meta.json（pretrain / sft / dpo），循环只是转交
            data_kind = (getattr(self.train_data, "meta", None) or {}).get("kind", "")
            self.doctor = LiveDoctor.for_run(self.run_dir, self.config.to_dict(), data_kind)
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
        """写一行指标（只在主进程）；同一行交给实时诊断，新出现的问题各打印一行（每种一次运行只说一次）。"""
        if self.metrics is not None:
            self.metrics.log(row)
        if self.doctor is not None:
            for finding in self.doctor.feed(row):
                tqdm.write(warning_line(finding, self.run_dir))

    def _loop(self) -> str:
        """一直训练到步数或时间预算用完（或被信号打断）；返回停下的原因。"""
        train = self.config.train
        budget_s = train.max_minutes * 60
        budget = BudgetClock(self.progress.budget, self.clock)   # 从此刻计时，已用时间接着检查点里的算
        bar = self._progress_bar(budget_s)
        self.model.train()
        with StopRequest() as stop, bar:
            while True:
                finished = self._finished_before(budget_s)   # 刚做完最后一步，或续训一个早已跑完的运行
                if finished:
                    return finished
                step = self.progress.step + 1
                row = self.train_step(step)
                self.progress.step = step
                budget.tick()
                budget.state.step_s = row["step_s"]
                if step == self.config.optim.warmup_steps:
                    budget.state.warmup_end_s = budget.state.used_s
                out_of_time = bool(budget_s) and self._out_of_time(budget.state, budget_s)
                finishing = step == train.max_steps or out_of_time
                if step % train.log_every == 0 or step == 1 or finishing or row.get("skipped"):
                    self._log(row)
                if self.progress.bad_streak >= train.max_bad_steps:
                    self._stop_after_bad_steps()
                self._show(bar, row, budget.state.used_s if budget_s else None)
                # 某个进程收到信号，所有进程都要在同一步停下（否则其余进程会在下一次通信时永远等下去）
                stopping = distributed.any_rank(stop.requested, self.dist, self.device)
                if (train.eval_every and step % train.eval_every == 0) or finishing:
                    self._evaluate(bar)
                    budget.state.eval_s = budget.tick()
                if (train.save_every and step % train.save_every == 0) or finishing or stopping:
                    self._save()   # 存下的已用时间不含这次保存本身（不到一秒；续训时不计）
                    budget.state.save_s = budget.tick()
                if stopping:
                    bar.write(f"已在第 {step} 步保存并停止 / saved at step {step} and stopped")
                    return stop.signal_name
                if budget_s:   # 各进程的已用时间取平均：下一步大家按同一个时间算学习率
                    budget.state.used_s = distributed.mean_over_ranks(budget.state.used_s, self.dist, self.device)
                if out_of_time and step != train.max_steps:
                    bar.write(f"时间预算用完：{step} 步，用时 {budget.state.used_s / 60:.2f} 分钟（预算 "
                              f"{train.max_minutes:g}）/ time budget used: {step} steps in "
                              f"{budget.state.used_s / 60:.2f} min")
                    return "max_minutes"

    def _out_of_time(self, state, budget_s: float) -> bool:
        """这一步之后预算还够不够再做一步加收尾（见 train/budget.py）。

        多进程时各进程的钟各走各的：“任一进程说停就停”，大家在同一步停下
        （否则有的进程会在下一次通信时永远等下去）。
        """
        # eval_batches = 0 表示整个验证集，批数事先不知道，按 50 批估计收尾时间
        finish = should_finish(state, budget_s, self.config.data.eval_batches or 50, self.config.train.grad_accum)
        return distributed.any_rank(finish, self.dist, self.device)

    def _finished_before(self, budget_s: float) -> str:
        """已经用完了步数或时间？返回原因（"max_steps" / "max_minutes"），没用完返回空串。"""
        max_steps = self.config.train.max_steps
        if max_steps and self.progress.step >= max_steps:
            return "max_steps"
        if budget_s and self.progress.budget.used_s >= budget_s:
            return "max_minutes"
        return ""

    def _progress_bar(self, budget_s: float):
        """按步数训练时进度条数步；按时间预算训练时数秒（步数事先不知道）。"""
        common = dict(dynamic_ncols=True, desc="训练 / train", disable=not self.dist.is_main)
        if budget_s:
            return tqdm(total=round(budget_s), initial=round(self.progress.budget.used_s), unit="s",
                        bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} s [{elapsed}<{remaining}{postfix}]", **common)
        return tqdm(total=self.config.train.max_steps, initial=self.progress.step, unit="step", **common)

    @staticmethod
    def _show(bar, row: dict, used_s: float | None) -> None:
        if used_s is None:
            bar.update(1)
        else:
            bar.update(used_s - bar.n)
        bar.set_postfix(step=row["step"], loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                        tok_s=f"{row['tok_per_s']:.0f}")

    # ---- 一步训练 --------------------------------------------------------------

    def train_step(self, step: int) -> dict:
        """做第 step 步（1 起）的一次完整更新：① 累积梯度 ② 更新参数。返回这一步的指标行。"""
        started = self.clock()
        lr = learning_rate(step, self.config.optim, self.config.train.max_steps, self._time_progress())
        set_learning_rate(self.optimizer, lr)
        sums = self._accumulate_gradients()
        grad_norm, updated = self._apply_update(step, sums.mean_loss)

        seconds = self.clock() - started
        self.progress.tokens_seen += sums.tokens
        self.progress.elapsed_s += seconds
        # 日志里的损失、附加指标是所有进程所有微批次的加权平均，token 数是所有进程之和
        return {
            "step": step, "tokens": self.progress.tokens_seen, "loss": sums.mean_loss, "lr": lr,
            "grad_norm": grad_norm, "tok_per_s": sums.tokens / max(seconds, 1e-9),
            "elapsed_s": round(self.progress.elapsed_s, 3), "step_s": seconds, **sums.mean_metrics(),
            **({} if updated else {"skipped": True}),
        }

    def _time_progress(self) -> float | None:
        """有时间预算时，余弦衰减按时间走到了哪里（0 到 1）；没有预算时是 None。"""
        minutes = self.config.train.max_minutes
        return decay_progress(self.progress.budget, minutes * 60) if minutes else None

    def _accumulate_gradients(self) -> ResultSums:
        """① grad_accum 个微批次各做一次前向和反向，让 .grad 成为“一个大批次”的平均梯度（见模块开头）。

        返回所有进程、所有微批次的结果之和（用来写日志）。
        """
        train = self.config.train
        sums = ResultSums()
        denominator = 1.0
        for micro_step in range(train.grad_accum):
            batch = self.train_data.next_batch(train.micro_batch_size)
            if self.device.type == "cuda":
                batch = pin_memory(batch)   # 锁页内存：拷到 GPU 时不用等（见 towergpt/device.py）
            # 多进程时，只有最后一个微批次的反向传播才在进程间同步梯度
            last = micro_step == train.grad_accum - 1
            with distributed.skip_gradient_sync(self.forward_model, self.dist, skip=not last):
                with precision.autocast(self.device, self.dtype):
                    result = self.objective(self.forward_model, batch, self.device)
                if micro_step == 0:   # 临时分母 D：假定每个微批次都和第一个一样多单位，各进程取同一个值
                    first = distributed.mean_over_ranks(train.grad_accum * result.weight, self.dist, self.device)
                    denominator = max(first, 1)
                self.scaler.scale(result.loss * result.weight / denominator).backward()
            sums.add(result)
        totals = distributed.sum_over_ranks(sums, self.dist, self.device)
        # 此刻 .grad = Σ w·g / D（多进程时又对进程求了平均）；乘 D·P / W 就是大批次的平均梯度
        correction = denominator * self.dist.world_size / max(totals.weight, 1)
        if correction != 1.0:
            _scale_gradients(self.model, correction)
        return totals

    def _apply_update(self, step: int, loss: float) -> tuple[float, bool]:
        """② 用累积好的梯度更新一次参数，并清零梯度；返回 (裁剪前的梯度范数, 这一步是否真的更新了)。"""
        optim = self.config.optim
        # 先把 fp16 放大过的梯度缩回真实大小，再裁剪 —— 顺序反了，裁剪阈值就失去意义
        self.scaler.unscale_(self.optimizer)
        max_norm = optim.grad_clip if optim.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        finite = math.isfinite(loss) and (self.scaler.is_enabled() or math.isfinite(grad_norm))
        if finite:
            self.scaler.step(self.optimizer)  # fp16 下若梯度含 inf，scaler 自己会跳过并调小放大倍数
            self.scaler.update()
            self.progress.bad_streak = 0
        else:
            self._on_bad_step(step, loss, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite

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

    def evaluate(self) -> dict:
        """在验证集上跑目标函数，返回评估行：val_loss、val_<指标>，交叉熵目标再加 val_ppl、val_bpc。

        各批按结果的权重加权（与训练的一步相同），不论目标是什么；哪些进程参与见 distributed.evaluation_model。
        """
        eval_model = distributed.evaluation_model(self.forward_model, self.dist)
        if self.val_data is None or eval_model is None:
            return {}
        batches = self.val_data.iter_eval_batches(self.config.train.micro_batch_size,
                                                  self.config.data.eval_batches or None)
        self.model.eval()
        sums = evaluate_objective(self.objective, eval_model, batches, self.device, self.dtype)
        distributed.end_forward_only(self.model, self.dist)
        self.model.train()
        return validation_metrics(sums, getattr(self.val_data, "characters_per_token", None))

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
        return {
            "progress": {
                "step": self.progress.step, "tokens_seen": self.progress.tokens_seen,
                "elapsed_s": self.progress.elapsed_s, "bad_streak": self.progress.bad_streak,
                "last_eval": dict(self.progress.last_eval),
                "budget": dataclasses.asdict(self.progress.budget),
            },
            "optimizer": distributed.optimizer_state(self.model, self.optimizer, self.dist),
            "scaler": self.scaler.state_dict(),
            "data": self.train_data.state_dict(),
            # 每个进程的随机数状态（dropout 用到它）：续训后与不中断时完全一致
            "rng_per_rank": distributed.gather_objects(rng, self.dist),
            "world_size": self.dist.world_size,
        }

    def _save(self) -> Path | None:
        """所有进程都要调用（FSDP 收集分片、随机数状态收集都是集体通信），只有 rank 0 写文件。"""
        state = self._trainer_state()
        model = distributed.model_for_saving(self.model, self.model_class, self.dist)
        path = None
        if self.dist.is_main:
            path = save_checkpoint(self.run_dir, self.progress.step, model, self.tokenizer, state,
                                   self.config.train.keep_last)
        distributed.barrier(self.dist)
        return path or latest_checkpoint(self.run_dir)

    def _resume(self) -> None:
        """从最新的完好检查点恢复一切；坏掉的检查点跳过（打印一行警告），见 train/checkpointing.py。"""
        if self.dist.is_main:
            # 上次进程被杀时没来得及删的 .tmp-* 目录：不删的话它一直占着磁盘，下次保存可能又满
            clear_stale_temporaries(self.run_dir / "checkpoints")
        warn = (lambda line: print(line, file=sys.stderr, flush=True)) if self.dist.is_main else (lambda line: None)
        directory, state = distributed.load_newest(self.run_dir, self.model, self.model_class, self.optimizer,
                                                   self.dist, warn)
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
            "minutes": round(self.progress.budget.used_s / 60, 2),   # 训练循环实际用时（含评估、保存）
            "stopped_by": stopped_by,
            **self.progress.last_eval,
        }


def _scale_gradients(model: torch.nn.Module, factor: float) -> None:
    """把所有参数的梯度乘上 factor（梯度累积的校正，见模块开头）。FSDP 下 .grad 是分片，各乘各的即可。"""
    for parameter in model.parameters():
        if parameter.grad is not None:
            parameter.grad.mul_(factor)
