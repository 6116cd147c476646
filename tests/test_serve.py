"""`towergpt serve`：用官方 openai 客户端对着本机上真正跑起来的服务测试。

服务在后台线程里运行（uvicorn，随机空闲端口）；模型是随机初始化的小模型（用 save_model_files 存盘、
再用 checkpoint.load 读回）。“正确答案”由另一份读回的模型用 generate.py 单独算出：
服务必须逐字相同——不管是单独请求，还是 16 个请求同时流式进行。
"""

import asyncio
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import run_cli, tiny_gpt  # noqa: E402
from towergpt.chat_template import render_chat  # noqa: E402
from towergpt.checkpoint import load, save_model_files  # noqa: E402
from towergpt.generate import stream_generate, stream_text  # noqa: E402
from towergpt.inspect.cli import run_inspect  # noqa: E402
from towergpt.server.app import create_app  # noqa: E402
from towergpt.server.settings import ServerSettings  # noqa: E402
from towergpt.tokenizer import Tokenizer  # noqa: E402

MODEL = "tiny"
KEY = "secret-key-123"


class LiveServer:
    """在后台线程里运行 uvicorn；url 形如 http://127.0.0.1:PORT。"""

    def __init__(self, app):
        import uvicorn

        self.app = app
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))            # 端口先占住，不会和别人撞
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

    @property
    def engine(self):
        return self.app.state.engine

    def client(self, api_key="unused"):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)


def http(url, body=None, headers=None, method=None):
    """发一个原始 HTTP 请求，返回 (状态码, 响应正文文本)。"""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def assert_openai_error(status, text, expected_status, param=None):
    assert status == expected_status, text
    assert "Traceback" not in text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["code"], error                     # 每个错误都有 code，客户端靠它分辨，不能是 null
    if param is not None:
        assert error["param"] == param
    return error


# ---- 模型与服务 ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(news_tokenizer_dir, tmp_path_factory):
    tokenizer = Tokenizer.load(news_tokenizer_dir)
    # 权重放大到 std 0.3（见 conftest.tiny_gpt）：回答随提示词而变，两条序列的 KV 缓存串了才看得出来
    model = tiny_gpt(tokenizer.vocab_size, max_seq_len=128, weight_std=0.3)
    directory = tmp_path_factory.mktemp("serve") / "ckpt"
    save_model_files(model, tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def reference(ckpt):
    """另一份模型：在测试线程里算“正确答案”，不和服务线程共用同一个模型对象。"""
    return load(ckpt)


@pytest.fixture(scope="module")
def server(ckpt):
    model, tokenizer = load(ckpt)
    settings = ServerSettings(model_name=MODEL, max_active=8, max_waiting=16, max_tokens_limit=100,
                              max_body_bytes=20_000)
    with LiveServer(create_app(model, tokenizer, settings)) as live:
        yield live


def greedy(reference, prompt_ids, max_tokens, stop_ids):
    """单独、非并发地贪心生成：返回 (文字, 生成的 token 数, finish_reason)。"""
    model, tokenizer = reference
    tokens = list(stream_generate(model, torch.tensor([prompt_ids]), max_tokens, temperature=0.0,
                                  eos_id=stop_ids))
    text = "".join(stream_text(tokenizer, iter(tokens), stop_ids=set(stop_ids)))
    return text, len(tokens), "stop" if tokens[-1] in stop_ids else "length"


def chat_expectation(reference, messages, max_tokens):
    tokenizer = reference[1]
    ids = render_chat(tokenizer, messages, add_generation_prompt=True).ids
    return (*greedy(reference, ids, max_tokens, (tokenizer.im_end_id, tokenizer.eos_id)), len(ids))


def completion_expectation(reference, prompt, max_tokens):
    tokenizer = reference[1]
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    return (*greedy(reference, ids, max_tokens, (tokenizer.eos_id,)), len(ids))


MESSAGES = [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "今天北京天气怎么样？"}]


# ---- 基本接口 ------------------------------------------------------------------------

def test_models_health_and_page(server):
    assert [model.id for model in server.client().models.list()] == [MODEL]
    assert server.client().models.retrieve(MODEL).id == MODEL
    status, text = http(server.url + "/health")
    assert status == 200 and json.loads(text)["status"] == "ok"
    status, text = http(server.url + "/")
    assert status == 200 and "新对话" in text
    assert http(server.url + "/static/app.js")[0] == 200


def test_chat_equals_greedy_generation_with_usage(server, reference):
    text, count, reason, prompt_tokens = chat_expectation(reference, MESSAGES, 20)
    reply = server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=20)
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, count)
    assert reply.usage.total_tokens == prompt_tokens + count


def test_chat_streaming_chunks_in_openai_format(server, reference):
    text, count, reason, prompt_tokens = chat_expectation(reference, MESSAGES, 20)
    stream = server.client().chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=20,
                                                     stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert "".join(chunk.choices[0].delta.content or "" for chunk in with_choices) == text
    assert len(with_choices) > 3                                        # 真的是一段一段来的
    assert [chunk.choices[0].finish_reason for chunk in with_choices][-1] == reason
    assert all(chunk.choices[0].finish_reason is None for chunk in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count
    assert chunks[-1].usage.prompt_tokens == prompt_tokens

    # 原始的 SSE：每个事件一行 "data: ..."，空行分隔，最后是 data: [DONE]
    status, raw = http(server.url + "/v1/chat/completions",
                       {"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": 5, "stream": True})
    assert status == 200
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(event.startswith("data: {") for event in events[:-2])


def test_completions_use_bos_plus_prompt_like_generate(server, reference):
    prompt = "新华社北京１月１日电"
    text, count, reason, prompt_tokens = completion_expectation(reference, prompt, 25)
    client = server.client()
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=25)
    assert reply.object == "text_completion"
    assert reply.choices[0].text == text and reply.choices[0].finish_reason == reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, count)
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=25, stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed) == text
    assert streamed[-1].choices[0].finish_reason == reason


def test_stop_strings_cut_the_reply_in_both_modes(server, reference):
    prompt = "中国人民"
    full, _, _, _ = completion_expectation(reference, prompt, 40)
    stop = full[10:12]
    expected = full[:full.find(stop)]
    client = server.client()
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=40, stop=[stop, "不会出现的"])
    assert reply.choices[0].text == expected and reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < 40
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=40, stop=stop,
                                            stream=True))
    assert "".join(chunk.choices[0].text for chunk in chunks) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(server):
    client = server.client()

    def sample(seed):
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=1.0, top_p=0.9,
                                              max_tokens=15, seed=seed).choices[0].message.content

    assert sample(123) == sample(123)
    assert sample(123) != sample(124)


# ---- 错误 ------------------------------------------------------------------------------

def test_bad_requests_get_4xx_in_openai_error_format(server):
    client = server.client()
    bad = [
        (dict(max_tokens=101), "max_tokens"),                               # 超过服务的 max_tokens 上限
        (dict(max_tokens=100, messages=[{"role": "user", "content": "长" * 200}]), None),  # 放不进上下文
        (dict(temperature=3), "temperature"),
        (dict(n=2), "n"),
        (dict(messages=[]), "messages"),
        (dict(messages=[{"role": "robot", "content": "x"}]), "messages[0].role"),
    ]
    for overrides, param in bad:
        arguments = {"model": MODEL, "messages": MESSAGES, **overrides}
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(**arguments)
        assert caught.value.status_code == 400
        assert "Traceback" not in str(caught.value.body)
        if param:
            assert caught.value.body["param"] == param, caught.value.body
    context = assert_openai_error(*http(server.url + "/v1/completions",
                                        {"model": MODEL, "prompt": "长" * 200, "max_tokens": 50}), 400)
    assert context["code"] == "context_length_exceeded"

    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found"

    assert_openai_error(*http(server.url + "/v1/chat/completions", b"{not json"), 400)
    assert_openai_error(*http(server.url + "/v1/no-such-endpoint"), 404)
    wrong_host = assert_openai_error(*http(server.url + "/v1/models", headers={"Host": "evil.example:80"}), 400)
    assert wrong_host["code"] == "invalid_host"                       # 只监听本机：挡住 DNS 重绑定
    assert_openai_error(*http(server.url + "/v1/models", method="DELETE"), 405)
    too_big = {"model": MODEL, "prompt": "长" * 30_000}
    assert_openai_error(*http(server.url + "/v1/completions", too_big), 413)


def test_json_types_are_checked_strictly(server):
    """JSON 的布尔值不是整数、字符串不是数字：pydantic 的宽容转换会把 true 当成 1，这里必须回 400。"""
    wrong_types = [("max_tokens", True), ("max_tokens", 5.0), ("max_tokens", "5"), ("temperature", True),
                   ("temperature", "0.5"), ("seed", False), ("top_k", True), ("stream", 1), ("stop", 7)]
    for name, value in wrong_types:
        body = {"model": MODEL, "messages": MESSAGES, name: value}
        error = assert_openai_error(*http(server.url + "/v1/chat/completions", body), 400, param=name)
        assert error["code"] == "invalid_value"
        completion = {"model": MODEL, "prompt": "你好", name: value}
        assert_openai_error(*http(server.url + "/v1/completions", completion), 400, param=name)
    assert_openai_error(*http(server.url + "/v1/completions", {"model": MODEL, "prompt": [1, True]}), 400)
    # 整数可以用在要小数的地方：temperature: 0 照常工作
    status, text = http(server.url + "/v1/chat/completions",
                        {"model": MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": 3})
    assert status == 200, text


def test_api_key_is_required_when_set(ckpt):
    model, tokenizer = load(ckpt)
    with LiveServer(create_app(model, tokenizer, ServerSettings(model_name=MODEL, api_key=KEY))) as live:
        for wrong in ("unused", KEY + "x"):
            with pytest.raises(openai.AuthenticationError) as caught:
                live.client(api_key=wrong).models.list()
            assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
        error = assert_openai_error(*http(live.url + "/v1/chat/completions", b"{not json"), 401)
        assert error["code"] == "invalid_api_key"                       # 先验密钥，再看请求体
        reply = live.client(api_key=KEY).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        assert reply.usage.completion_tokens >= 1
        assert http(live.url + "/health")[0] == 200                       # 健康检查和网页不需要密钥
        assert http(live.url + "/")[0] == 200
        assert http(live.url + "/inspect")[0] == 200
        assert assert_openai_error(*http(live.url + "/v1/inspect", {"text": "中国"}), 401)["code"] == "invalid_api_key"
        assert http(live.url + "/v1/inspect", {"text": "中国"}, {"Authorization": f"Bearer {KEY}"})[0] == 200


# ---- 并发 ------------------------------------------------------------------------------

def test_sixteen_concurrent_streams_equal_greedy_one_at_a_time(server, reference):
    prompts = [[{"role": "user", "content": f"第{i}个问题：请介绍一下{city}。"}]
               for i, city in enumerate(["北京", "上海", "广州", "深圳", "天津", "重庆", "南京", "杭州",
                                          "武汉", "成都", "西安", "长沙", "沈阳", "青岛", "厦门", "昆明"])]
    max_tokens = 30
    expected = [chat_expectation(reference, messages, max_tokens)[0] for messages in prompts]
    finished_before = server.engine.stats()["finished"]

    first_text_at = []

    async def one(client, messages):
        stream = await client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                                      max_tokens=max_tokens, stream=True)
        pieces = []
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                if not pieces:
                    first_text_at.append(time.perf_counter() - started)
                pieces.append(chunk.choices[0].delta.content)
        return "".join(pieces)

    async def all_at_once():
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                                      timeout=60) as client:
            return await asyncio.gather(*(one(client, messages) for messages in prompts))

    started = time.perf_counter()
    replies = asyncio.run(all_at_once())
    concurrent_s = time.perf_counter() - started
    assert replies == expected
    # 每条都不同、且大多够长：请求之间串了就会被发现（随机模型偶尔一开口就生成 eos，允许少数很短）
    assert len(set(expected)) == 16 and sum(len(reply) > 10 for reply in expected) >= 12
    assert server.engine.stats()["finished"] - finished_before == 16

    client = server.client()
    started = time.perf_counter()
    for messages in prompts:
        client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=max_tokens)
    sequential_s = time.perf_counter() - started
    print(f"\n16 streams at once: {concurrent_s:.2f} s (every stream had its first text after at most "
          f"{max(first_text_at):.2f} s); the same 16 requests one after another: {sequential_s:.2f} s")


@pytest.fixture
def slow_server(ckpt):
    """每次前向慢 20 ms、只有 1 个槽位、不许排队：方便观察断开和拒绝。"""
    model, tokenizer = load(ckpt)
    model.register_forward_pre_hook(lambda module, inputs: time.sleep(0.02))
    settings = ServerSettings(model_name=MODEL, max_active=1, max_waiting=0)
    with LiveServer(create_app(model, tokenizer, settings)) as live:
        yield live


def open_stream(live, max_tokens=100):
    """开始一个流式续写，读到第一段文字为止；返回 (连接, 响应)。"""
    import http.client

    connection = http.client.HTTPConnection(live.url.removeprefix("http://"), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps(
        {"model": MODEL, "prompt": "中国", "max_tokens": max_tokens, "temperature": 0, "stream": True}),
        {"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")
    return connection, response


def test_disconnect_mid_stream_frees_the_slot_at_once(slow_server):
    connection, response = open_stream(slow_server)                   # 生成完要 100 × 20 ms = 2 s
    assert slow_server.engine.stats()["active"] == 1
    response.close()
    connection.close()
    closed = time.perf_counter()
    while slow_server.engine.stats()["active"]:
        assert time.perf_counter() - closed < 1.0, "slot not freed after the client left"
        time.sleep(0.01)
    assert slow_server.engine.stats()["cancelled"] == 1
    # 槽位空出来了：下一个请求（不许排队）立刻被接受
    reply = slow_server.client().completions.create(model=MODEL, prompt="中国", max_tokens=3)
    assert reply.usage.completion_tokens == 3


def test_disconnect_while_waiting_for_a_non_streamed_reply_frees_the_slot(slow_server):
    import http.client

    connection = http.client.HTTPConnection(slow_server.url.removeprefix("http://"), timeout=30)
    connection.request("POST", "/v1/completions", json.dumps({"model": MODEL, "prompt": "中国", "max_tokens": 100}),
                       {"Content-Type": "application/json"})
    deadline = time.perf_counter() + 5
    while not slow_server.engine.stats()["active"]:
        assert time.perf_counter() < deadline
        time.sleep(0.01)
    connection.close()                                                # 不等回答就走了
    closed = time.perf_counter()
    while slow_server.engine.stats()["active"]:
        assert time.perf_counter() - closed < 1.0, "slot not freed after the client left"
        time.sleep(0.01)
    assert slow_server.engine.stats()["cancelled"] == 1


def test_full_queue_answers_503_in_openai_format(slow_server):
    connection, response = open_stream(slow_server)
    try:
        with pytest.raises(openai.InternalServerError) as caught:
            slow_server.client().chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
        assert caught.value.status_code == 503 and caught.value.body["code"] == "server_busy"
    finally:
        response.close()
        connection.close()


def test_internal_failure_is_a_500_without_traceback(ckpt):
    model, tokenizer = load(ckpt)

    def broken(module, inputs):
        raise RuntimeError("simulated bug")

    model.register_forward_pre_hook(broken)
    with LiveServer(create_app(model, tokenizer, ServerSettings(model_name=MODEL))) as live:
        error = assert_openai_error(*http(live.url + "/v1/completions", {"model": MODEL, "prompt": "x"}), 500)
        assert "simulated" not in error["message"]
        status, raw = http(live.url + "/v1/completions", {"model": MODEL, "prompt": "x", "stream": True})
        assert '"error"' in raw and "simulated" not in raw and "Traceback" not in raw
        assert http(live.url + "/health")[0] == 200                       # 服务还活着


# ---- 检视器 /v1/inspect ---------------------------------------------------------------

def test_inspect_returns_the_same_report_as_run_inspect(server, reference):
    """服务在线程池里用同一个模型检视；结果必须与直接调用 run_inspect 逐字相同（JSON 里的每个数）。"""
    model, tokenizer = reference
    status, text = http(server.url + "/v1/inspect", {"text": "中国人民的艺术", "top_k": 3})
    assert status == 200, text
    report = json.loads(text)
    assert report["schema"] == "towergpt.inspect/1" and report["mode"] == "text"
    assert report == json.loads(json.dumps(run_inspect(model, tokenizer, "中国人民的艺术", 3)))
    assert all(len(row["top"]) == 3 for row in report["predictions"])

    chat = {"text": "你好", "chat": True, "system": "你是一个助手。", "reply": "你好！"}
    status, text = http(server.url + "/v1/inspect", chat)
    assert status == 200, text
    report = json.loads(text)
    assert [m["role"] for m in report["text"]] == ["system", "user", "assistant"]
    assert any(token["template"] for token in report["tokens"])

    status, text = http(server.url + "/inspect")
    assert status == 200 and "/static/inspect.js" in text
    assert http(server.url + "/static/inspect.js")[0] == 200


def test_inspect_rejects_bad_input_naming_the_field(server):
    bad = [({"text": "  "}, "text"), ({}, "text"), ({"text": "中国" * 200}, "text"),   # 空的、没给、太长
           ({"text": "x", "top_k": 0}, "top_k"), ({"text": "x", "top_k": 51}, "top_k"),
           ({"text": "x", "top_k": True}, "top_k"), ({"text": "x", "chat": 1}, "chat"),
           ({"text": "x", "system": "s"}, "system"), ({"text": "x", "reply": "r"}, "reply")]
    for body, param in bad:
        error = assert_openai_error(*http(server.url + "/v1/inspect", body), 400, param)
        assert "\n" not in error["message"], error
    empty = assert_openai_error(*http(server.url + "/v1/inspect", {"text": ""}), 400, "text")
    assert "空" in empty["message"] and "empty" in empty["message"]           # 中文在前、英文在后的一行话


def test_inspect_runs_beside_generation_without_taking_a_slot(slow_server):
    """检视只读权重、不经过引擎：唯一的槽位正被占着（也不许排队）时，它照样马上回答。"""
    connection, response = open_stream(slow_server)
    try:
        status, text = http(slow_server.url + "/v1/inspect", {"text": "中国人民"})
        assert status == 200, text
        assert slow_server.engine.stats()["active"] == 1                  # 那条回答还在生成
    finally:
        response.close()
        connection.close()


def test_cli_reports_user_errors_in_one_line(tmp_path):
    result = run_cli("serve", "--ckpt", tmp_path / "missing", timeout=120)
    assert result.returncode == 2
    assert "错误 / error" in result.stderr and "Traceback" not in result.stderr
