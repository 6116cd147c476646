"""`towergpt serve` 的实现：一个 OpenAI 兼容的 HTTP 服务，外加一个网页聊天页面。

一个请求从进来到回答，依次经过这些文件（每个文件一个概念）：

    guards.py       三道门：Host 头必须是本机地址（防 DNS 重绑定）、--api-key 检查 `Authorization: Bearer ...`、
                    请求体超过上限直接 413（连 JSON 都不解析）
    schemas.py      请求体的形状与取值范围（pydantic），不合法就 400
    prompts.py      消息 → token id（复用 chat_template.py），并检查“提示词 + max_tokens”放得进上下文
    submission.py   网络这边（asyncio）与生成线程之间的桥：一个请求一个队列
    engine.py       唯一的生成线程：若干个“槽位”，轮流给每条序列生成 1 个 token（公平）
    sequence.py     一条正在生成的序列：复用 generate.py 的 stream_generate / stream_text
    stop_strings.py stop 参数：流式输出时扣住“可能是停止字符串开头”的那一小段
    responses.py    把生成结果拼成 OpenAI 的 JSON 与流式 chunk（server-sent events）
    errors.py       一切错误都变成 OpenAI 的错误 JSON：{"error": {"message", "type", "param", "code"}}
    routes.py       各个 URL：/v1/chat/completions、/v1/completions、/v1/models、/health、网页
    inspect_routes.py  检视器：POST /v1/inspect 与它的网页 /inspect（只读模型，不经过引擎）
    settings.py     服务的各项上限（命令行参数）
    app.py          把以上组装成一个 FastAPI 应用
    launch.py       `towergpt serve` 命令本身：载入检查点、检查监听地址与密钥、启动 uvicorn

模型不是线程安全的（前向会改 KV 缓存的长度等状态），所以所有前向计算只在 engine 的那一个线程里做；
网络这边（asyncio 事件循环）只负责收发，二者通过队列传递“新生成的文字”。
"""
