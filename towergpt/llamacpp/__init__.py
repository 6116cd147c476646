"""导出给 llama.cpp 和 Ollama：GGUF 文件（一个文件里装下模型结构、权重、分词器和对话模板）。

    gguf_tensors.py   权重：Hugging Face Llama 的名字 → GGUF 的名字，以及 q/k 的行重排（RoPE 的两种写法）
    gguf_vocab.py     分词器：SentencePiece 的 piece → llama.cpp 的 SPM 词表（分数、种类、字节 piece）
    export_gguf.py    `towergpt export --format gguf`：用 `gguf` 包（llama.cpp 官方的写入器）写文件
    ollama.py         `towergpt export --format ollama`：GGUF + Modelfile（Go 模板写的对话格式）

不需要 llama.cpp 的源码仓库：`pip install gguf` 就够了。
"""
