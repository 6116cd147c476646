"""优雅停止：收到 Ctrl-C（SIGINT）或 SIGTERM（集群调度器的“请停止”）时，不立刻死掉，
而是在当前这一步结束后保存检查点再退出，之后 `--resume` 可以无缝接着训。
第二次 Ctrl-C 则立即中断（万一保存卡住了，用户总有办法退出）。
"""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """with StopRequest() as stop: ... 循环里检查 stop.requested。"""

    def __init__(self):
        self.requested = False
        self.signal_name = ""
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # 只有主线程能装信号处理器
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # 第二次 Ctrl-C：立即停
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n收到 {self.signal_name}：本步结束后保存检查点并退出 / saving a checkpoint, then exiting",
              flush=True)
