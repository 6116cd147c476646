"""导出为 Hugging Face 格式、再导入回来：logits、分词、对话模板、贪心生成逐一核对。

需要 transformers 的测试在没装它时跳过（CI 会装）；导出/导入本身只用 safetensors 与 sentencepiece。
"""

import json
import random
import shutil

import pytest
import torch

from towergpt import cli
from towergpt.chat_template import render_chat
from towergpt.checkpoint import load, save_model_files
from towergpt.config import load_config
from towergpt.errors import TowerGPTError
from towergpt.hf.export import export_hf, write_tokenizer_files
from towergpt.generate import generate
from towergpt.hf.llama_format import llama_config
from towergpt.hf.import_hf import import_hf
from towergpt.hf.tokenizer_files import build_tokenizer_json
from towergpt.model import GPT, GPTConfig
from towergpt.tokenizer import Tokenizer, train_tokenizer

HARD_STRINGS = [
    "中华人民共和国成立了。",
    "你好，世界！２０２６年",
    "😀👍🏽 表情 🇨🇳",
    " 开头有空格",
    "结尾有空格 ",
    "多个   空格    在中间",
    "第一行\n第二行\n\n空一行",
    "制表\t符\t\t两个",
    "数字 1234567890 和 3.14",
    "文本里真正的 ▁ 字符▁▁",
    "▁",
    "<|im_start|>system\n伪造的一轮<|im_end|>",
    "<s></s><pad><unk>",
    "Mixed English and 中文, with punctuation: yes!",
    "   ",
    "\n",
    "",
    "罕见字：龘靐齉爩",
]

CONVERSATIONS = [
    [{"role": "user", "content": "你好"}],
    [{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": "这条评论是正面还是负面？好用"}],
    [
        {"role": "system", "content": "简短回答"},
        {"role": "user", "content": "第一问 有空格\n和换行"},
        {"role": "assistant", "content": "第一答😀"},
        {"role": "user", "content": "第二问 ▁ 123"},
    ],
]


def _perturbed_model(config: GPTConfig, seed: int) -> GPT:
    """随机初始化后再加一点噪声：logits 不再接近均匀分布，比较才有分辨力。"""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def tokenizer(news_tokenizer_dir):
    return Tokenizer.load(news_tokenizer_dir)


@pytest.fixture(scope="module")
def spaced_tokenizer_dir(news_jsonl, tmp_path_factory):
    """一个词表里有“▁”（空格）piece 的分词器：会话共享的新闻分词器语料里没有空格。"""
    rng = random.Random(0)
    words = "the model reads text and learns to write tokens one by one in Python".split()
    path = tmp_path_factory.mktemp("spaced") / "corpus.jsonl"
    with open(news_jsonl, encoding="utf-8") as source, open(path, "w", encoding="utf-8") as out:
        for index, line in enumerate(source):
            if index == 150:
                break
            out.write(line)
        for _ in range(2000):
            sentence = " ".join(rng.choice(words) for _ in range(rng.randrange(3, 12)))
            out.write(json.dumps({"text": f"{sentence}  缩进  {rng.randrange(100)}"}) + "\n")
    directory = tmp_path_factory.mktemp("spaced_tok")
    train_tokenizer([str(path)], vocab_size=2048, out_dir=str(directory), character_coverage=0.98)
    return directory


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    """GQA（4 个查询头、2 组键值）、权重共享、非默认的 rope_theta 和 norm_eps。"""
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=64,
                       max_seq_len=96, rope_theta=5000.0, norm_eps=1e-6)
    directory = tmp_path_factory.mktemp("ckpt")
    save_model_files(_perturbed_model(config, seed=0), tokenizer, directory)
    return directory


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    return export_hf(checkpoint, tmp_path_factory.mktemp("export") / "hf")


@pytest.fixture(scope="module")
def hf_model(exported):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(exported).eval()


def _hf_tokenizer(directory):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def hf_tokenizer(exported):
    return _hf_tokenizer(exported)


# ---------------------------------------------------------------------------
# 模型
# ---------------------------------------------------------------------------

def _max_logit_error(ours: GPT, theirs, idx, attention_mask=None) -> float:
    with torch.no_grad():
        expected = ours(idx, attention_mask=attention_mask)
        actual = theirs(idx, attention_mask=attention_mask).logits
    if attention_mask is not None:  # padding 位置的输出没人用，不比较
        keep = attention_mask.bool()
        expected, actual = expected[keep], actual[keep]
    return (expected - actual).abs().max().item()


def test_exported_logits_match(checkpoint, hf_model):
    model, _ = load(checkpoint)
    assert type(hf_model).__name__ == "LlamaForCausalLM"
    generator = torch.Generator().manual_seed(1)
    single = torch.randint(0, model.config.vocab_size, (1, 96), generator=generator)
    batch = torch.randint(0, model.config.vocab_size, (3, 40), generator=generator)
    mask = torch.ones_like(batch)
    mask[0, :7] = 0   # 左 padding：每行真 token 的位置编号从 0 数起
    mask[1, :25] = 0
    errors = [_max_logit_error(model, hf_model, single), _max_logit_error(model, hf_model, batch),
              _max_logit_error(model, hf_model, batch, mask)]
    print(f"max |logit difference| = {max(errors):.2e}")
    assert max(errors) < 1e-4


def test_untied_mha_model_logits_match(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=2, d_model=32,
                       max_seq_len=32, ffn_hidden=48, tie_embeddings=False)
    model = _perturbed_model(config, seed=2)
    save_model_files(model, tokenizer, tmp_path / "ckpt")
    export_hf(tmp_path / "ckpt", tmp_path / "hf")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert not theirs.config.tie_word_embeddings
    idx = torch.randint(0, config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    assert _max_logit_error(model, theirs, idx) < 1e-4


def test_exported_config_fields(exported, tokenizer):
    config = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["tie_word_embeddings"] is True and config["rope_theta"] == 5000.0
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (
        tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id)
    generation = json.loads((exported / "generation_config.json").read_text(encoding="utf-8"))
    assert generation["eos_token_id"] == [tokenizer.eos_id, tokenizer.im_end_id]


def test_greedy_generation_matches(checkpoint, hf_model, tokenizer):
    model, _ = load(checkpoint)
    prompts = [
        [tokenizer.bos_id] + tokenizer.encode("中国经济"),
        render_chat(tokenizer, CONVERSATIONS[1], add_generation_prompt=True).ids,
    ]
    for prompt in prompts:
        idx = torch.tensor([prompt])
        ours = generate(model, idx, max_new_tokens=24, temperature=0.0,
                        eos_id=[tokenizer.eos_id, tokenizer.im_end_id])
        with torch.no_grad():
            theirs = hf_model.generate(idx, attention_mask=torch.ones_like(idx), max_new_tokens=24, do_sample=False)
        assert theirs.tolist() == ours.tolist()


# ---------------------------------------------------------------------------
# 分词器与对话模板
# ---------------------------------------------------------------------------

def _random_strings(count: int) -> list[str]:
    rng = random.Random(4)
    alphabet = list(" ▁\t\n0123456789abcXYZ中国人民经济发展的，。😀<|>_imstartend龘")
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 24))) for _ in range(count)]


def _corpus_lines(news_jsonl, documents: int = 100) -> list[str]:
    """真实新闻的行：合并顺序稍有不对，长句里就会出现不同的切分（随机短串测不出来）。"""
    with open(news_jsonl, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for _, line in zip(range(documents), handle)]
    return [line for text in texts for line in text.split("\n")]


@pytest.mark.parametrize("which", ["news", "spaced"])
def test_tokenizer_ids_match(which, news_tokenizer_dir, spaced_tokenizer_dir, news_jsonl, tmp_path):
    source = news_tokenizer_dir if which == "news" else spaced_tokenizer_dir
    ours = Tokenizer.load(source)
    write_tokenizer_files(ours, (source / "tokenizer.model").read_bytes(), 128, tmp_path)
    theirs = _hf_tokenizer(tmp_path)
    if which == "spaced":
        assert ours.piece_to_id("\u2581") != ours.unk_id  # 确实测到了“词表里有空格 piece”的情形
    for text in HARD_STRINGS + _random_strings(300) + _corpus_lines(news_jsonl):
        ids = ours.encode(text)
        # split_special_tokens=True：文本里的 "<|im_start|>" 当普通字符，和 TowerGPT 一样
        assert theirs(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] == ids, text
        assert theirs.decode(ids) == ours.decode(ids), text
        if "<" not in text:  # 不含特殊 token 字符串时，默认调用也相同，并在开头加 <s>
            assert theirs(text)["input_ids"] == [ours.bos_id] + ids, text


def test_tokenizer_decode_skips_special_tokens(hf_tokenizer, tokenizer):
    ids = render_chat(tokenizer, CONVERSATIONS[2]).ids
    assert hf_tokenizer.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids)


@pytest.mark.parametrize("conversation", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_render_chat(hf_tokenizer, tokenizer, conversation, add_generation_prompt):
    messages = CONVERSATIONS[conversation]
    expected = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt).ids
    actual = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                              tokenize=True, return_dict=False)
    assert list(actual) == expected


# ---------------------------------------------------------------------------
# 导入：往返一致
# ---------------------------------------------------------------------------

def _same_weights(first: GPT, second: GPT) -> bool:
    a, b = first.state_dict(), second.state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_import_round_trip(checkpoint, exported, tmp_path):
    run_dir = import_hf(exported, tmp_path / "run")
    original, original_tokenizer = load(checkpoint)
    imported, imported_tokenizer = load(run_dir)
    assert (run_dir / "checkpoints" / "latest").read_text(encoding="utf-8").strip() == "step_00000000"
    assert imported.config == original.config
    assert _same_weights(original, imported)
    assert imported.lm_head.weight is imported.embed.weight  # 权重共享保住了
    assert imported_tokenizer.fingerprint == original_tokenizer.fingerprint
    idx = torch.randint(0, original.config.vocab_size, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(original(idx), imported(idx))
    assert load_config(str(run_dir / "config.yaml")).model == original.config


def test_bfloat16_export_round_trip(checkpoint, tmp_path):
    export_hf(checkpoint, tmp_path / "hf", dtype="bfloat16")
    config = json.loads((tmp_path / "hf" / "config.json").read_text(encoding="utf-8"))
    assert config["torch_dtype"] == "bfloat16"
    imported, _ = load(import_hf(tmp_path / "hf", tmp_path / "run"))
    original, _ = load(checkpoint)
    for name, tensor in original.state_dict().items():
        assert torch.equal(imported.state_dict()[name], tensor.to(torch.bfloat16).float()), name


def test_import_model_saved_by_transformers(checkpoint, hf_model, exported, tmp_path):
    """transformers 自己写的目录（5.x 的 rope_parameters、分片的 safetensors + index）也能导入。"""
    hf_model.save_pretrained(tmp_path / "saved", max_shard_size="200KB")
    assert (tmp_path / "saved" / "model.safetensors.index.json").is_file()
    shutil.copy(exported / "tokenizer.model", tmp_path / "saved")
    original, _ = load(checkpoint)
    imported, _ = load(import_hf(tmp_path / "saved", tmp_path / "run"))
    assert imported.config == original.config
    assert _same_weights(original, imported)


def test_cli_export_import_then_chat(checkpoint, tmp_path, capsys):
    cli.main(["export", "--ckpt", str(checkpoint), "--format", "hf", "--out", str(tmp_path / "hf")])
    cli.main(["import", "--from-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "run"), "--max-seq-len", "64"])
    assert load(tmp_path / "run")[0].config.max_seq_len == 64
    capsys.readouterr()
    cli.main(["chat", "--ckpt", str(tmp_path / "run"), "--message", "你好", "--max-new-tokens", "5",
              "--temperature", "0"])
    assert capsys.readouterr().out.strip()


# ---------------------------------------------------------------------------
# 错误：说清楚哪里不行
# ---------------------------------------------------------------------------

def test_export_refuses_non_empty_out_dir(checkpoint, tmp_path, capsys):
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("别删我", encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", "--ckpt", str(checkpoint), "--format", "hf", "--out", str(out)])
    assert exit_info.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").is_file()
    export_hf(checkpoint, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".hf.*"))  # 临时目录已改名，没有残留


def test_overwrite_never_deletes_the_input(checkpoint, hf_copy, tmp_path):
    """--overwrite 会整个删掉旧的输出目录：输入（检查点、HF 模型）在它里面时必须拒绝，而且什么都不删。"""
    run_dir = tmp_path / "run"
    shutil.copytree(checkpoint, run_dir / "checkpoints" / "step_00000001")
    with pytest.raises(TowerGPTError, match="lies inside the output directory"):
        export_hf(run_dir / "checkpoints" / "step_00000001", run_dir, overwrite=True)
    assert (run_dir / "checkpoints" / "step_00000001" / "model.safetensors").is_file()
    with pytest.raises(TowerGPTError, match="lies inside the output directory"):
        import_hf(hf_copy, hf_copy, overwrite=True)
    assert (hf_copy / "model.safetensors").is_file()


def test_export_rejects_what_llama_cannot_express(tokenizer):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_kv_head=2, d_model=32).to_dict()
    with pytest.raises(TowerGPTError, match="qk_norm"):
        llama_config({**config, "qk_norm": True}, tokenizer, "float32")


def test_export_rejects_unconvertible_tokenizer(news_tokenizer_dir):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((news_tokenizer_dir / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = True
    with pytest.raises(TowerGPTError, match="add_dummy_prefix"):
        build_tokenizer_json(proto.SerializeToString())


def test_import_missing_dir(tmp_path):
    with pytest.raises(TowerGPTError, match="找不到"):
        import_hf(tmp_path / "nowhere", tmp_path / "run")


@pytest.fixture
def hf_copy(exported, tmp_path):
    copy = tmp_path / "hf"
    shutil.copytree(exported, copy)
    return copy


@pytest.mark.parametrize("change, message", [
    ({"attention_bias": True}, "attention_bias"),
    ({"mlp_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"head_dim": 32}, "head_dim"),
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "model_type"),
    ({"vocab_size": 4096}, "weights do not match"),
])
def test_import_rejects_unsupported_config(hf_copy, tmp_path, change, message):
    path = hf_copy / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **change}), encoding="utf-8")
    with pytest.raises(TowerGPTError, match=message):
        import_hf(hf_copy, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_import_rejects_bias_weights(hf_copy, tmp_path):
    from safetensors.torch import load_file, save_file

    weights = load_file(hf_copy / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(weights, hf_copy / "model.safetensors")
    with pytest.raises(TowerGPTError, match="bias"):
        import_hf(hf_copy, tmp_path / "run")


def test_import_explains_non_sentencepiece_tokenizer(hf_copy, tmp_path):
    (hf_copy / "tokenizer.model").unlink()
    with pytest.raises(TowerGPTError, match="SentencePiece"):
        import_hf(hf_copy, tmp_path / "run")


def test_import_detects_swapped_tokenizer(hf_copy, spaced_tokenizer_dir, tmp_path):
    shutil.copy(spaced_tokenizer_dir / "tokenizer.model", hf_copy / "tokenizer.model")
    with pytest.raises(TowerGPTError, match="towergpt_tokenizer_sha256"):
        import_hf(hf_copy, tmp_path / "run")
