"""训练：预训练、SFT、DPO 共用的“一个训练循环”，以及它用到的每一样东西，一个文件一件事。

    loop.py           训练循环本身（Trainer）：累积梯度、更新参数、评估、保存、续训
    objective.py      目标函数的约定（ObjectiveResult：损失、权重、token 数、指标）、按权重求和、
                      验证用的前向，以及语言模型的交叉熵目标（预训练、SFT、`towergpt eval` 共用）
    optim/            优化器（AdamW / GaLore / Muon）与参数分组、学习率曲线，一个文件一件事
    precision.py      混合精度（autocast / GradScaler）；选设备在 towergpt/device.py
    distributed.py    torchrun 多进程：DDP / FSDP2，以及循环里凡是“单进程、DDP、FSDP 做法不同”的地方
    checkpointing.py  原子地写检查点、保留最近 K 个、续训时找最新的完好检查点
    metrics.py        metrics.jsonl 与 TensorBoard
    signals.py        Ctrl-C / SIGTERM：先保存，再干净地退出
    pretrain.py       预训练的入口：打包的 token 流 + 语言模型目标 + 循环
    sft.py            对话微调的入口：只在助手的话上算损失
    dpo.py            偏好微调的入口：冻结的参考模型 + DPO 损失（按偏好对加权）
"""
