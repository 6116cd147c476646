"""数据相关的一切 / Everything about data.

读语料：
- `readers/`：把 .txt / .jsonl / .json / .parquet 语料流式读成一条条文本或记录，出错时指明文件、行号、字段（一种格式一个文件）。
- `dialogue`：把各种对话格式（问答对、Alpaca、OpenAI messages、ShareGPT）和偏好记录统一成内部消息格式。
- `preference`：偏好数据的渲染：一个提示 + 两个回答 -> 两条序列和损失掩码，太长时怎么截。

`towergpt data prepare`（语料 -> token 分片 + meta.json）：
- `prepare`：入口（prepare_pretrain / prepare_sft / prepare_dpo），把下面几步接起来，数据目录要么完整要么没有。
- `pipeline`：读 -> 分批 -> 多进程分词（按顺序取回，输出与进程数无关，内存有界）-> 交给写入器。
- `encoders`：一批输入 -> token：预训练文本、对话（loss mask、整轮截断）、偏好对。
- `split`：按文档序号的带种子哈希划分 train / val。
- `shard_writers`：把一个划分写成 token 分片（对话、偏好对还有掩码和索引），以及 skipped.txt。
- `prepare_summary`：结束时打印的中英文摘要。
- `data_format`：磁盘格式，写的一方和读的一方共用：文件名、dtype、格式版本、meta.json 的读写、打开前核对文件大小。

训练时读 token：
- `pretrain_dataset`：把分片首尾相接、切成固定长度窗口的预训练数据流。
- `sft_dataset`：一行一段对话、只在助手的话上有标签的 SFT 批次。
- `dpo_dataset`：偏好对组成“chosen 在上、rejected 在下”的 DPO 批次。
- `tokenizer_match`：训练前核对数据、分词器、模型是不是一套（分词器指纹、词表大小）。

整理自己的语料（`towergpt data convert|merge|shuffle|clean|dedup`）：
- `convert`：格式转换 + 字段改名。
- `merge`：把几个文件首尾相接，合成一个 .jsonl。
- `shuffle`：打乱记录的顺序，文件比内存还大也行。
- `clean`：规整空白、去掉看不见的字符，按长度和字符比例过滤。
- `dedup`：去掉完全相同和 MinHash 近似重复的记录。
- `tool_io`：这五个工具共用的读输入、原子地写输出、报告保留与丢弃的条数。
"""
