"""检视器的两个 URL（不是 OpenAI 的接口，是 TowerGPT 自己的）：

    POST /v1/inspect   看模型怎样读一段文字：token、下一词预测、注意力、logit lens（格式见 towergpt/inspect/report.py）
    GET  /inspect      检视器网页（towergpt/web/inspect.html），它只是 /v1/inspect 的一个客户端

为什么检视可以和生成同时进行？模型不是线程安全的：生成会改 KV 缓存等状态，所以生成只在引擎那一个线程里做。
检视器不一样：它只读权重，不挂 hook、不用 KV 缓存（见 towergpt/inspect/walk.py），所以可以在别的线程里
直接用同一个模型对象，不必排进引擎的队列，也不占生成的槽位。

守门的中间件（guards.py）照常生效：/v1/inspect 在 /v1/ 下，设了 --api-key 就要带密钥；
请求体大小上限、只接受本机 Host 头也一样。网页本身和聊天页面一样不需要密钥。
"""

from __future__ import annotations

import threading

from fastapi.responses import FileResponse, JSONResponse

from towergpt.errors import TowerGPTError
from towergpt.inspect.cli import run_inspect
from towergpt.server.errors import APIError
from towergpt.server.routes import PAGE_HEADERS, WEB_DIR
from towergpt.server.schemas import InspectRequest


def register_inspect_routes(app, model, tokenizer) -> None:
    # 同一时间只做一次检视：它很吃 CPU（生成线程也要用），内存也不少（注意力有 层数×头数×T×T 个数）。
    # 几个请求一起挤，谁都不会更快；排队一个一个来，每个反而更早做完。
    one_at_a_time = threading.Lock()

    # 普通的 def（不是 async def）：FastAPI 会把它放进线程池里运行。检视要算上几百毫秒，
    # 放在事件循环里算的话，这段时间里其他请求（包括正在流式输出的回答）全都得等着。
    @app.post("/v1/inspect")
    def inspect(body: InspectRequest):
        body.reject_unpaired()
        with one_at_a_time:
            report = inspect_or_400(model, tokenizer, body)
        # 直接交给 JSONResponse（json.dumps），不经过 FastAPI 逐个检查每个值的 jsonable_encoder：
        # 报告里有几十万个浮点数，那一步要慢好几倍
        return JSONResponse(report)

    @app.get("/inspect")
    async def inspect_page():
        return FileResponse(WEB_DIR / "inspect.html", headers=PAGE_HEADERS)


def inspect_or_400(model, tokenizer, body: InspectRequest) -> dict:
    """检视；输入有问题（文字是空的、token 太多）时，run_inspect 的那一行话原样变成 400。

    top_k 的范围和各字段的类型在 InspectRequest 里已经检查过，所以这里剩下的错误都出在文字上：param 是 "text"。
    """
    try:
        return run_inspect(model, tokenizer, body.text, body.top_k, body.chat, body.system, body.reply)
    except TowerGPTError as error:
        raise APIError(400, str(error), "text") from None
