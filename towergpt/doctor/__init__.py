"""训练医生 `towergpt doctor RUN`：读一个运行目录，回答“这次训练健康吗”。

每条“发现”（Finding）都带着证据（哪几步、什么数）和一条具体的建议；训练时同样的检查也会边训边提醒
（live.py）。说明、每条发现的含义与阈值见 docs/doctor.md。一个文件一件事：

    findings.py         一条发现长什么样：id、严重程度（problem / note）、中英文说明、证据、建议
    history.py          被检查的东西：配置 + 训练行 + 评估行（离线读文件、训练中边训边攒，都是它）
    series.py           几个数列小工具：取有限值、中位数、“前面几行”的基线
    run_kind.py         这是哪种训练（pretrain / sft / dpo）：运行目录里的 run.json，旧运行靠猜
    run_reader.py       读 config.yaml 与 metrics.jsonl；文件缺了、某行坏了，报出文件和行号
    checks_loss.py      损失本身：初始损失、没有目标、非有限、不降、发散、过拟合
    checks_stability.py 稳定与速度：损失突增、梯度范数突增、预热太短、吞吐下降
    checks_objective.py 只属于某种训练的：SFT 的损失掩码，DPO 卡在 ln 2、奖励一起下降
    checks.py           全部检查的清单，diagnose(history) 依次跑一遍
    report.py           终端文字与 JSON、结论行
    live.py             训练循环每写一行就喂给它，新出现的发现打印一行
    cli.py              `towergpt doctor` 命令本身

规矩：doctor 不 import 训练循环（也不 import torch），离线读文件几乎不花时间；
反过来，训练循环只 import doctor.live。
"""
