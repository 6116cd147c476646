"""lm-eval 任务 towergpt_sentiment：YAML 是任务的定义，utils.py 造数据、拼提示词。"""
