"""服务的可调上限（`towergpt serve` 的命令行参数），集中在一处。"""

from __future__ import annotations

from dataclasses import dataclass

from towergpt.errors import TowerGPTError


@dataclass
class ServerSettings:
    model_name: str = "towergpt"
    api_key: str | None = None          # 设置了就要求 `Authorization: Bearer <api_key>`
    max_active: int = 8                 # 同时生成的序列数（槽位）
    max_waiting: int = 32               # 槽位满时最多排队多少个请求，再多就 503
    max_tokens_limit: int = 1024        # 单个请求的 max_tokens 上限（也是不给 max_tokens 时的默认上限）
    max_body_bytes: int = 1_000_000     # 请求体上限（字节），超过回 413
    loopback_only: bool = True          # 只接受 Host 为本机地址的请求（监听 127.0.0.1 时，见 guards.py）

    def check(self) -> None:
        """用户给错时抛 TowerGPTError。"""
        for name in ("max_active", "max_tokens_limit", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise TowerGPTError(f"--{name.replace('_', '-')} 必须 ≥ 1 / must be at least 1")
        if self.max_waiting < 0:
            raise TowerGPTError("--max-waiting 不能为负 / must not be negative")
        if self.api_key is not None and not self.api_key.strip():
            raise TowerGPTError("--api-key 不能是空字符串 / must not be empty")
