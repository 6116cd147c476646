"""导出 GGUF / Ollama：文件里写的是什么、llama.cpp 算出来的是否与 TowerGPT 相同。

前半部分只需要 `gguf` 包（读回文件核对）；后半部分用真正的 llama.cpp（PyPI 的 llama-cpp-python，
安装时从源码编译 llama.cpp，2 核约 6 分钟；没装就跳过）。手动跑这一组：

    pip install -e ".[llamacpp]" && python -m pytest -q tests/test_gguf.py
"""

import json
import re

import numpy as np
import pytest
import torch

from towergpt.chat_template import render_chat
from towergpt.checkpoint import load, save_model_files
from towergpt.cli import main as cli_main
from towergpt.generate import generate
from towergpt.hf.tokenizer_files import CHAT_TEMPLATE
from towergpt.model import GPT, GPTConfig, apply_rope, rope_tables
from towergpt.tokenizer import IM_END_PIECE, IM_START_PIECE, Tokenizer

gguf = pytest.importorskip("gguf")

from towergpt.llamacpp.export_gguf import export_gguf  # noqa: E402  （需要 gguf 包）
from towergpt.llamacpp.gguf_tensors import interleaved_to_rotate_half, rotate_half_to_interleaved  # noqa: E402
from towergpt.llamacpp.ollama import TEMPLATE, export_ollama  # noqa: E402

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "这条评论是正面还是负面？好用"}],
    [
        {"role": "system", "content": "简短回答"},
        {"role": "user", "content": "第一问 有空格\n和换行"},
        {"role": "assistant", "content": "第一答😀"},
        {"role": "user", "content": "第二问  123"},
    ],
]
TEXTS = ["中国经济持续发展", "今天天气很好，我们去公园。", "2026年12月2日 有空格  两个空格", "换行\n制表\t符😀", " 首尾空格 "]


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """GQA（4 个查询头、2 组键值）、权重共享、非默认的 rope_theta 和 norm_eps；权重加了噪声，logits 不接近均匀。"""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                       max_seq_len=96, rope_theta=5000.0, norm_eps=1e-6)
    torch.manual_seed(0)
    model = GPT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    directory = tmp_path_factory.mktemp("ckpt")
    save_model_files(model, tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def gguf_files(checkpoint, tmp_path_factory):
    """同一个检查点导出三种精度：{"f32": 路径, "f16": 路径, "q8_0": 路径}。"""
    out = tmp_path_factory.mktemp("gguf")
    return {dtype: export_gguf(checkpoint, out / f"model-{dtype}.gguf", dtype)[0] for dtype in ("f32", "f16", "q8_0")}


# ---------------------------------------------------------------------------
# 1. RoPE 的两种写法：行重排之后注意力分数相同
# ---------------------------------------------------------------------------

def interleaved_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """llama.cpp 的 llama 结构的 RoPE：第 2i 维与第 2i+1 维一对，转 p·theta^(-2i/D)。x：(T, heads, D)。"""
    T, _, D = x.shape
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)           # (D/2,)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)[:, None, :]    # (T, 1, D/2)
    even, odd = x[..., 0::2].double(), x[..., 1::2].double()
    rotated = torch.stack([even * angles.cos() - odd * angles.sin(), odd * angles.cos() + even * angles.sin()], -1)
    return rotated.reshape(x.shape).float()


def test_row_permutation_makes_interleaved_rope_equal_rotate_half():
    """我们的 rotate_half RoPE 用原权重、llama.cpp 的相邻配对 RoPE 用重排后的权重：q·k 相同；不重排就不同。"""
    torch.manual_seed(0)
    T, C, H, D, theta = 12, 32, 4, 8, 10000.0
    x = torch.randn(T, C)
    w_q, w_k = torch.randn(H * D, C), torch.randn(H * D, C)
    cos, sin = rope_tables(D, T, theta)

    def ours(weight):
        heads = (x @ weight.T).view(T, H, D).transpose(0, 1)[None]          # (1, H, T, D)
        return apply_rope(heads, cos[None, None], sin[None, None])[0]       # (H, T, D)

    def theirs(weight):
        return interleaved_rope((x @ weight.T).view(T, H, D), theta).transpose(0, 1)   # (H, T, D)

    expected = ours(w_q) @ ours(w_k).transpose(-1, -2)
    permuted = theirs(rotate_half_to_interleaved(w_q, H)) @ theirs(rotate_half_to_interleaved(w_k, H)).transpose(-1, -2)
    forgotten = theirs(w_q) @ theirs(w_k).transpose(-1, -2)
    assert torch.allclose(permuted, expected, atol=1e-4)
    assert not torch.allclose(forgotten, expected, atol=1e-1)
    assert torch.equal(interleaved_to_rotate_half(rotate_half_to_interleaved(w_q, H), H), w_q)


# ---------------------------------------------------------------------------
# 2. 读回文件：元数据、词表、权重
# ---------------------------------------------------------------------------

def _field(reader, key):
    field = reader.fields[key]
    return field.contents()


def test_gguf_metadata_describes_the_model_and_tokenizer(gguf_files, checkpoint, tokenizer):
    reader = gguf.GGUFReader(gguf_files["f32"])
    config = load(checkpoint)[0].config
    expected = {
        "general.architecture": "llama", "llama.context_length": 96, "llama.embedding_length": 64,
        "llama.block_count": 2, "llama.feed_forward_length": config.ffn_hidden, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": tokenizer.vocab_size,
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": tokenizer.bos_id,
        "tokenizer.ggml.eos_token_id": tokenizer.eos_id, "tokenizer.ggml.padding_token_id": tokenizer.pad_id,
        "tokenizer.ggml.unknown_token_id": tokenizer.unk_id, "tokenizer.ggml.eot_token_id": tokenizer.im_end_id,
        "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": False,
        "tokenizer.ggml.add_space_prefix": False, "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    for key, value in expected.items():
        assert _field(reader, key) == value, key
    assert _field(reader, "llama.rope.freq_base") == pytest.approx(5000.0)
    assert _field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)

    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert tokens == [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    assert tokens[tokenizer.piece_to_id("<0x0A>")] == "<0x0A>" and types[tokenizer.piece_to_id("<0x0A>")] == 6
    for special in (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id, tokenizer.im_start_id, tokenizer.im_end_id):
        assert types[special] == 3                      # 控制 token：不会从普通文本里编码出来
    assert types[tokenizer.unk_id] == 2
    assert sum(kind == 6 for kind in types) == 256      # 256 个字节 piece


def test_gguf_f32_weights_are_ours_bit_for_bit(gguf_files, checkpoint):
    """f32 的每个张量都与检查点相同（q/k 按行重排回去之后）；权重共享时不写 output.weight。"""
    model = load(checkpoint)[0]
    state = model.state_dict()
    tensors = {t.name: torch.from_numpy(np.array(t.data)).reshape([int(n) for n in reversed(t.shape)])
               for t in gguf.GGUFReader(gguf_files["f32"]).tensors}
    assert "output.weight" not in tensors
    assert len(tensors) == 2 + 9 * 2
    assert torch.equal(tensors["token_embd.weight"], state["embed.weight"])
    assert torch.equal(tensors["output_norm.weight"], state["final_norm.weight"])
    H, Hkv, D = 4, 2, 16
    q, k, v = state["blocks.1.attn.qkv.weight"].split([H * D, Hkv * D, Hkv * D])
    assert torch.equal(interleaved_to_rotate_half(tensors["blk.1.attn_q.weight"], H), q)
    assert torch.equal(interleaved_to_rotate_half(tensors["blk.1.attn_k.weight"], Hkv), k)
    assert torch.equal(tensors["blk.1.attn_v.weight"], v)
    assert torch.equal(tensors["blk.1.ffn_down.weight"], state["blocks.1.ffn.down_proj.weight"])


def test_gguf_dtypes_shrink_the_file_and_keep_norms_in_f32(gguf_files):
    sizes = {dtype: path.stat().st_size for dtype, path in gguf_files.items()}
    assert sizes["f16"] < 0.6 * sizes["f32"] and sizes["q8_0"] < 0.75 * sizes["f16"]
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(gguf_files["q8_0"]).tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_cli_export_gguf_and_its_errors(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    cli_main(["export", "--ckpt", str(checkpoint), "--format", "gguf", "--out", str(out), "--dtype", "q8_0"])
    assert out.is_file() and "已导出 GGUF" in capsys.readouterr().out
    for argv, message in [
        (["--out", str(out)], "--overwrite"),                                 # 已存在：拒绝覆盖
        (["--out", str(tmp_path)], "是一个目录"),                              # --out 是目录
        (["--out", str(tmp_path / "x.gguf"), "--dtype", "bfloat16"], "q8_0"),  # GGUF 不支持的精度
    ]:
        with pytest.raises(SystemExit) as info:
            cli_main(["export", "--ckpt", str(checkpoint), "--format", "gguf", *argv])
        error = capsys.readouterr().err.strip()
        assert info.value.code == 2 and message in error and "\n" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]   # 出错时不留半个文件


# ---------------------------------------------------------------------------
# 3. Ollama：Modelfile 的 Go 模板渲染出来的，就是 render_chat
# ---------------------------------------------------------------------------

def render_go_template(template: str, messages: list[dict]) -> str:
    """Go text/template 的一个小子集：文字、{{ .Role }}、{{ .Content }}、{{ range .Messages }}…{{ end }}，
    以及去空白的 {{- 和 -}}。遇到别的写法就报错（模板改了而这里不认识，测试会明确失败，而不是悄悄算错）。"""
    parts = re.split(r"({{-?\s*.*?\s*-?}})", template)
    for index, part in enumerate(parts):               # 先处理去空白标记
        if part.startswith("{{-") and index > 0:
            parts[index - 1] = parts[index - 1].rstrip()
        if part.endswith("-}}") and index + 1 < len(parts):
            parts[index + 1] = parts[index + 1].lstrip()
    output, stack, position = [], [], 0

    def emit(text):
        if not stack or stack[-1]["index"] is not None:
            output.append(text)

    while position < len(parts):
        part = parts[position]
        action = re.fullmatch(r"{{-?\s*(.*?)\s*-?}}", part)
        if not action:
            emit(part)
        elif action.group(1) == "range .Messages":
            stack.append({"start": position, "index": 0 if messages else None})
        elif action.group(1) == "end":
            loop = stack[-1]
            if loop["index"] is not None and loop["index"] + 1 < len(messages):
                loop["index"] += 1
                position = loop["start"]
            else:
                stack.pop()
        elif action.group(1) in (".Role", ".Content"):
            emit(messages[stack[-1]["index"]][action.group(1)[1:].lower()])
        else:
            raise AssertionError(f"测试里的 Go 模板渲染器不认识 {part!r}")
        position += 1
    return "".join(output)


def encode_with_markers(tokenizer, text: str) -> list[int]:
    """Ollama / llama.cpp 编码模板渲染结果的规则：对话标记的文字认成特殊 token，其余按普通文本编码，开头加 <s>。"""
    ids = [tokenizer.bos_id]
    specials = {IM_START_PIECE: tokenizer.im_start_id, IM_END_PIECE: tokenizer.im_end_id}
    for piece in re.split(f"({re.escape(IM_START_PIECE)}|{re.escape(IM_END_PIECE)})", text):
        ids += [specials[piece]] if piece in specials else tokenizer.encode(piece) if piece else []
    return ids


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_ollama_template_renders_render_chat(conversation, tokenizer):
    rendered = render_go_template(TEMPLATE, conversation)
    assert encode_with_markers(tokenizer, rendered) == render_chat(tokenizer, conversation, add_generation_prompt=True).ids


def test_go_template_renderer_follows_go_semantics():
    """渲染器自己的检查：range 逐条展开，{{- 去掉前面的空白，空列表什么也不输出。"""
    template = "A  {{- range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}  B"
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    assert render_go_template(template, messages) == "A[user:x][assistant:y]  B"
    assert render_go_template("a{{ range .Messages }}x{{ end }}b", []) == "ab"


def test_export_ollama_writes_gguf_and_modelfile(checkpoint, tmp_path):
    out, _ = export_ollama(checkpoint, tmp_path / "ollama")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    text = (out / "Modelfile").read_text(encoding="utf-8")
    assert "FROM ./model.gguf" in text
    assert re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1) == TEMPLATE
    assert re.findall(r'PARAMETER stop "(.*?)"', text) == [IM_END_PIECE, IM_START_PIECE, "</s>"]
    assert "PARAMETER num_ctx 96" in text        # 模型训练时的上下文长度
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(out / "model.gguf").tensors}
    assert kinds["blk.0.ffn_up.weight"] == gguf.GGMLQuantizationType.F16   # Ollama 默认 f16


# ---------------------------------------------------------------------------
# 4. 真正的 llama.cpp（llama-cpp-python）
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_cpp():
    return pytest.importorskip("llama_cpp")


def _open(llama_cpp, path):
    # KV 缓存用 f32（llama.cpp 默认 f16）：比较 f32 文件时，差别只来自计算顺序
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(model_path=str(path), n_ctx=96, logits_all=True, n_threads=2, verbose=False,
                           type_k=f32, type_v=f32)


@pytest.fixture(scope="module")
def llamas(llama_cpp, gguf_files):
    opened = {dtype: _open(llama_cpp, path) for dtype, path in gguf_files.items()}
    yield opened
    for llm in opened.values():
        llm.close()


def _prompts(tokenizer):
    plain = [[tokenizer.bos_id] + tokenizer.encode(text) for text in TEXTS[:3]]
    chats = [render_chat(tokenizer, conversation, add_generation_prompt=True).ids for conversation in CONVERSATIONS]
    return plain + chats


def _llama_greedy(llm, prompt, new_tokens, stop):
    """llama.cpp 算 logits、我们取 argmax：逐 token 喂进去，用的是 llama.cpp 自己的 KV 缓存。"""
    llm.reset()
    llm.eval(prompt)
    out = list(prompt)
    for _ in range(new_tokens):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        if token in stop or len(out) == len(prompt) + new_tokens:
            break
        llm.eval([token])
    return out


def _logit_error(llm, model, ids) -> float:
    llm.reset()
    llm.eval(ids)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0].numpy()
    return float(np.abs(np.array(llm.scores[:len(ids)]) - ours).max())


def test_llama_cpp_greedy_equals_towergpt_at_f32(llamas, checkpoint, tokenizer):
    model = load(checkpoint)[0]
    stop = [tokenizer.eos_id, tokenizer.im_end_id]
    for prompt in _prompts(tokenizer):
        new_tokens = min(30, 96 - len(prompt))          # 不超出训练时的上下文 96
        ours = generate(model, torch.tensor([prompt]), max_new_tokens=new_tokens, temperature=0.0, eos_id=stop)
        ours = ours[0].tolist()
        assert _llama_greedy(llamas["f32"], prompt, new_tokens, stop) == ours
        assert _logit_error(llamas["f32"], model, ours) < 1e-4


def test_llama_cpp_is_close_at_f16_and_q8_0(llamas, checkpoint, tokenizer):
    """f16 / q8_0 的 logits 与 f32 的模型相差多少（docs/export.md 的表就是这些数）。"""
    model = load(checkpoint)[0]
    with torch.no_grad():
        scale = max(float(model(torch.tensor([p]))[0].abs().max()) for p in _prompts(tokenizer))
    errors = {dtype: max(_logit_error(llamas[dtype], model, p) for p in _prompts(tokenizer)) for dtype in ("f16", "q8_0")}
    assert errors["f16"] < 0.01 * scale
    assert errors["q8_0"] < 0.05 * scale
    assert errors["f16"] < errors["q8_0"]


def test_llama_cpp_tokenizer_equals_towergpt(llamas, tokenizer, news_jsonl):
    llm = llamas["f32"]
    lines = [json.loads(line)["text"] for line in news_jsonl.read_text(encoding="utf-8").splitlines()[:50]]
    for text in TEXTS + lines:
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        assert theirs == [tokenizer.bos_id] + tokenizer.encode(text), text[:40]
        assert llm.detokenize(theirs[1:]).decode("utf-8") == text
    # 已知的唯一不同（docs/export.md）：文本里真正的“▁”字符，llama.cpp 当成空格，TowerGPT 用三个字节 piece
    assert llm.tokenize("▁".encode("utf-8"), add_bos=False, special=False) == tokenizer.encode(" ")
    assert tokenizer.encode("▁") == [tokenizer.piece_to_id(f"<0x{b:02X}>") for b in "▁".encode("utf-8")]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama_cpp_chat_template_equals_render_chat(llamas, llama_cpp, tokenizer, conversation):
    """llama-cpp-python 的 create_chat_completion：用 GGUF 里的 Jinja 模板渲染，再按特殊 token 编码。
    同一段对话的 id 必须与 render_chat 相同；Ollama 的 Go 模板（上面）也编码成同样的 id。"""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = llamas["f32"]
    formatter = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                                    eos_token="</s>", bos_token="<s>")
    prompt = formatter(messages=conversation).prompt
    ids = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)   # 与 create_chat_completion 相同
    assert ids == render_chat(tokenizer, conversation, add_generation_prompt=True).ids
    ollama_text = render_go_template(TEMPLATE, conversation)
    assert llm.tokenize(ollama_text.encode("utf-8"), add_bos=True, special=True) == ids


def test_llama_cpp_chat_completion_answers_like_towergpt(llamas, checkpoint, tokenizer):
    """真正的客户端调用：create_chat_completion（贪心）的回答文字与 TowerGPT 贪心生成的相同。"""
    model = load(checkpoint)[0]
    conversation = CONVERSATIONS[1]
    prompt = render_chat(tokenizer, conversation, add_generation_prompt=True).ids
    ours = generate(model, torch.tensor([prompt]), max_new_tokens=12, temperature=0.0,
                    eos_id=[tokenizer.eos_id, tokenizer.im_end_id])[0, len(prompt):].tolist()
    reply = llamas["f32"].create_chat_completion(messages=conversation, temperature=0.0, top_k=1,
                                                 repeat_penalty=1.0, max_tokens=12)
    expected = tokenizer.decode([t for t in ours if t not in (tokenizer.eos_id, tokenizer.im_end_id)])
    assert reply["choices"][0]["message"]["content"] == expected
