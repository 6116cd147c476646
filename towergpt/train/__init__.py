"""训练：预训练、SFT、DPO 共用的“一个训练循环”，以及优化器、学习率曲线、检查点、指标。

    loop.py           训练循环本身（目标函数不同，循环相同）
    optim.py          优化器与参数分组、学习率曲线
    precision.py      设备与混合精度（autocast / GradScaler）
    checkpointing.py  原子地写检查点、断点续训
    metrics.py        metrics.jsonl 与 TensorBoard
    signals.py        Ctrl-C / SIGTERM：先保存，再干净地退出
    pretrain.py       预训练的入口：数据 + 目标函数 + 循环
    sft.py            对话微调的入口：只在助手的话上算损失
    dpo.py            偏好微调的入口：冻结的参考模型 + DPO 损失
"""
