"""生成引擎：唯一一个做前向计算的线程，公平地轮流服务所有正在进行的请求。

为什么只有一个线程？模型不是线程安全的，而且在 CPU / 单块 GPU 上，两个线程同时做前向
并不会更快，只会互相抢资源。

怎么做到公平？
    - 最多 max_active 条序列同时“在场”（槽位）。每条有自己的 KV 缓存（stream_generate 里
      用 model.new_kv_cache 建的），互不干扰。
    - 每一轮，给在场的每条序列各生成 1 个 token（round-robin）。16 个人同时提问，
      大家的回答一起一个字一个字地长出来，而不是第 16 个人等前 15 个全部说完。
    - 槽位满了，新请求在等候队列里排队（最多 max_waiting 个）；队列也满了，立即拒绝
      （HTTP 503，客户端稍后重试），而不是让等待无限变长、内存无限增长。
    - 客户端断开（或遇到停止字符串）时序列被标记为 cancelled，生成线程在下一轮就把它关掉、
      让出槽位——不会为一个没人听的回答继续算下去。
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from towergpt.server.sequence import Event, Failed, GenerationRequest, Sequence

log = logging.getLogger("towergpt.serve")


class EngineBusy(Exception):
    """槽位和等候队列都满了。"""


class Engine:
    """submit() 交来请求，生成线程轮流推进；结果经各请求自己的 emit 回调送回。"""

    def __init__(self, model, tokenizer, max_active: int = 8, max_waiting: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.max_active = max_active
        self.max_waiting = max_waiting
        self._lock = threading.Condition()      # 保护下面这些列表；也用来唤醒空闲的生成线程
        self._waiting: deque[Sequence] = deque()
        self._active: list[Sequence] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.finished_count = 0                 # 统计（/health 和测试用）
        self.cancelled_count = 0

    # ---- 给网络那边调用的（任何线程）----------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="towergpt-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, request: GenerationRequest, emit: Callable[[Event], None]) -> Sequence:
        """排进队列；槽位和队列都满时抛 EngineBusy。"""
        sequence = Sequence(self.model, self.tokenizer, request, emit)
        with self._lock:
            if len(self._active) + len(self._waiting) >= self.max_active + self.max_waiting:
                raise EngineBusy()
            self._waiting.append(sequence)
            self._lock.notify_all()
        return sequence

    def cancel(self, sequence: Sequence) -> None:
        """不要这个回答了（客户端断开）。还在排队就直接移出；在场的由生成线程在下一轮关掉。"""
        with self._lock:
            if sequence in self._waiting:
                self._waiting.remove(sequence)
                self.cancelled_count += 1
            sequence.cancelled = True
            self._lock.notify_all()

    def stats(self) -> dict:
        with self._lock:
            return {"active": len(self._active), "waiting": len(self._waiting),
                    "max_active": self.max_active, "max_waiting": self.max_waiting,
                    "finished": self.finished_count, "cancelled": self.cancelled_count}

    # ---- 生成线程 ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._waiting and not self._active:
                    self._lock.wait()
                if self._stopping:
                    break
                while self._waiting and len(self._active) < self.max_active:
                    self._active.append(self._waiting.popleft())       # 有空槽位：请排队的人入场
                this_turn = list(self._active)
            for sequence in this_turn:                                  # 一轮：每条序列走一步
                if self._advance(sequence):
                    with self._lock:
                        self._active.remove(sequence)
        for sequence in self._active:
            sequence.close()

    def _advance(self, sequence: Sequence) -> bool:
        """让一条序列走一步；返回 True 表示它结束了（正常结束、被取消或出错）。"""
        if sequence.cancelled:
            sequence.close()
            with self._lock:
                self.cancelled_count += 1
            return True
        try:
            done = sequence.step()
        except Exception:  # 服务器自身的 bug：记下完整 traceback，但只让这一个请求失败，服务继续
            log.exception("生成失败 / generation failed")
            sequence.close()
            sequence.emit(Failed("生成时出现内部错误，详见服务器日志 / internal error during generation, see the server log"))
            return True
        if done:
            with self._lock:
                self.finished_count += 1
        return done
