"""把一个（已通过 schemas.py 检查的）请求变成 GenerationRequest：提示词的 token id + 采样参数。

- 聊天：用训练时**同一个**对话模板（chat_template.render_chat，末尾接上“轮到助手了”），
  生成到 <|im_end|> 或 </s> 为止。
- 续写：[<s>] + encode(prompt)，与 `towergpt generate` 相同，生成到 </s> 为止。

长度检查：模型一次最多看 max_seq_len 个 token，所以“提示词 + 最多生成的 token 数”必须放得下。
放不下就回 400（code 为 context_length_exceeded，与 OpenAI 相同），而不是悄悄截断。
"""

from __future__ import annotations

from towergpt.chat_template import render_chat
from towergpt.errors import TowerGPTError
from towergpt.server.errors import APIError
from towergpt.server.schemas import ChatCompletionRequest, CompletionRequest, SamplingRequest
from towergpt.server.sequence import GenerationRequest
from towergpt.server.settings import ServerSettings


def chat_generation(request: ChatCompletionRequest, tokenizer, settings: ServerSettings,
                    max_seq_len: int) -> GenerationRequest:
    # OpenAI 新增的 developer 角色就是 system 的新名字
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    prompt_ids = _encoded(lambda: render_chat(tokenizer, messages, add_generation_prompt=True).ids, "messages")
    stop_ids = (tokenizer.im_end_id, tokenizer.eos_id)
    return _generation(request, prompt_ids, stop_ids, settings, max_seq_len, "messages")


def completion_generation(request: CompletionRequest, tokenizer, settings: ServerSettings,
                          max_seq_len: int) -> GenerationRequest:
    prompt = request.prompt
    if isinstance(prompt, list) and prompt and all(isinstance(item, int) for item in prompt):
        bad = [token for token in prompt if not 0 <= token < tokenizer.vocab_size]
        if bad:
            raise APIError(400, f"prompt 里的 token id {bad[0]} 超出词表 [0, {tokenizer.vocab_size}) / "
                                f"token id out of range", "prompt")
        prompt_ids = list(prompt)                        # 直接给 token id：原样使用
    else:
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise APIError(400, "一次只能续写 1 个 prompt / exactly one prompt per request", "prompt")
            prompt = prompt[0]
        prompt_ids = _encoded(lambda: [tokenizer.bos_id] + tokenizer.encode(prompt), "prompt")
    return _generation(request, prompt_ids, (tokenizer.eos_id,), settings, max_seq_len, "prompt")


def token_budget(prompt_tokens: int, requested: int | None, settings: ServerSettings, max_seq_len: int,
                 prompt_param: str) -> int:
    """这次最多生成多少个 token；放不下时抛 400。"""
    if requested is not None and requested > settings.max_tokens_limit:
        raise APIError(400, f"max_tokens 最大为 {settings.max_tokens_limit}，收到 {requested} / "
                            f"max_tokens is limited to {settings.max_tokens_limit}", "max_tokens")
    room = max_seq_len - prompt_tokens
    if room < 1 or (requested is not None and requested > room):
        wanted = requested if requested is not None else 1
        raise APIError(
            400,
            f"模型上下文只有 {max_seq_len} 个 token，提示词就占了 {prompt_tokens} 个，再生成 {wanted} 个放不下"
            f"（缩短消息或减小 max_tokens）/ this model's maximum context length is {max_seq_len} tokens; "
            f"the prompt has {prompt_tokens} tokens and {wanted} more were requested",
            prompt_param if room < 1 else "max_tokens", "context_length_exceeded",
        )
    return requested if requested is not None else min(room, settings.max_tokens_limit)


def _generation(request: SamplingRequest, prompt_ids: list[int], stop_ids: tuple[int, ...],
                settings: ServerSettings, max_seq_len: int, prompt_param: str) -> GenerationRequest:
    request.reject_unsupported()
    max_tokens = token_budget(len(prompt_ids), request.requested_max_tokens(), settings, max_seq_len, prompt_param)
    return GenerationRequest(
        prompt_ids=prompt_ids,
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,   # OpenAI 的默认值是 1
        top_p=request.top_p,
        top_k=request.top_k,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        seed=request.seed,
        stop_ids=stop_ids,
        stop_strings=request.stop_strings(),
    )


def _encoded(encode, param: str) -> list[int]:
    """分词器对用户无法编码的文字抛 TowerGPTError：变成 400。"""
    try:
        return encode()
    except TowerGPTError as error:
        raise APIError(400, str(error), param) from None
