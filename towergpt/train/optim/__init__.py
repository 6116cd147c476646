"""优化器与学习率曲线，一个文件一件事。

`optim.name` 选优化器（怎么选、各省多少内存，见 docs/optimizers.md）：

    adamw             默认。所有参数都用 AdamW：每个参数存两份同样大小的状态（一阶矩、二阶矩），
                      优化器状态 = 2 × 参数量 × 4 字节。
    galore_adamw      GaLore（Zhao et al. 2024）：隐藏层矩阵的梯度先投影到 r 维子空间，Adam 在小空间里做，
                      更新再投影回原空间。这些矩阵的 Adam 状态从 m×n 缩到 m×r（或 r×n）。需要 galore-torch。
    galore_adamw8bit  同上，Adam 状态再量化成 8 位（bitsandbytes；只能在 CUDA 上用）。
    muon              Muon（Jordan et al. 2024）：隐藏层矩阵用“动量 + Newton–Schulz 正交化”，只存一份动量；
                      其余参数仍用 AdamW。两个优化器包成一个（MuonWithAdamW），训练循环看不出区别。

只有每个 Transformer 块里的五种权重矩阵（HIDDEN_MATRICES）走“特殊通道”（GaLore / Muon），
其余参数（词向量表、RMSNorm 的缩放系数）都留给 AdamW；为什么，见 groups.py。

    groups.py     参数分组：权重衰减的规则，哪些是隐藏层矩阵
    build.py      校验 optim 节、按 optim.name 构造优化器（AdamW 就在这里）
    galore.py     GaLore：参数组的设置、可选依赖的导入、让投影器能存进检查点
    muon.py       Muon + AdamW（MuonWithAdamW）
    schedule.py   学习率曲线（预热 + 余弦），以及每步把它写进参数组
    state.py      优化器状态占多少内存；续训时状态对不上的报错

训练循环、测试和 bench/ 从这里导入下面这些名字，不必知道它们在哪个文件里。
"""

from towergpt.train.optim.build import OPTIMIZERS, build_optimizer, check_optim_config
from towergpt.train.optim.galore import GALORE_PROJ_TYPES
from towergpt.train.optim.groups import HIDDEN_MATRICES, parameter_groups, split_hidden_matrices
from towergpt.train.optim.muon import MUON_ADJUST_LR, MuonWithAdamW
from towergpt.train.optim.schedule import learning_rate, set_learning_rate
from towergpt.train.optim.state import optimizer_state_bytes

__all__ = [
    "GALORE_PROJ_TYPES", "HIDDEN_MATRICES", "MUON_ADJUST_LR", "OPTIMIZERS", "MuonWithAdamW", "build_optimizer",
    "check_optim_config", "learning_rate", "optimizer_state_bytes", "parameter_groups", "set_learning_rate",
    "split_hidden_matrices",
]
