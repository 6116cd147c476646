"""数据相关的一切 / Everything about data.

- `readers`：把 .txt / .jsonl / .json / .parquet 语料流式读成一条条文本，出错时指明文件、行号、字段。
- 之后还会有 `prepare`（把文本切成 token 存成分片）和各种 Dataset（预训练、SFT、DPO）。
"""
