"""与 Hugging Face 互通：TowerGPT 的检查点 ⇄ transformers 能直接载入的 Llama 目录。

    llama_format.py     “翻译表”：模型配置字段和权重名字，两个方向（qkv 在这里切开 / 合并）
    tokenizer_files.py  把我们的 SentencePiece 分词器写成 HF 的 tokenizer.json（id 逐个相同）和对话模板
    export.py           `towergpt export --format hf`：检查点 → HF 目录（先写临时目录再改名）
    import_hf.py        `towergpt import --from-hf`：HF Llama 目录 → TowerGPT 运行目录

训练和推理都不需要 transformers；只有测试和 bench/ 用它来核对导出结果。
新的导出格式（例如 GGUF）在这里旁边另起一个模块，而不是在 export.py 里加分支。
"""
