"""`gpt models export`: the modern family into transformers (NanoChatForCausalLM) and back bit
for bit, chat templates as Jinja, and GGUF files read back with the gguf package's reader and,
where llama-cpp-python is installed, run by llama.cpp itself."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run

from gptcli.chat import ChatTemplate, PlainTemplate, add_chat_tokens, save_template
from gptcli.checkpoint import load_model, read_weights, write_model_dir
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tokenizer import EOT, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never reach the Hub

TEXTS = [
    "Once upon a time, there was a fox.",
    "  two leading spaces\nand\ttabs\r\n  \n\nend ",
    "naïve café, 日本語, emoji 🙂👍🏽 and <|endoftext|> inside",
    "Numbers 12345 and don't, can't, it's",
]
PROMPT = "Once upon a time"
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there, fox!"},
    {"role": "assistant", "content": "Hello.\nHow are you?"},
    {"role": "user", "content": "Fine, thanks."},
]


def random_model(config: ModelConfig, seed: int = 0) -> GPT:
    """A random model with weights large enough that greedy decoding does not repeat itself."""
    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return model.eval()


def shape(family: str, vocab: int, **extra: Any) -> ModelConfig:
    return ModelConfig(
        family=family, vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_embd=64, **extra
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A store with a modern and a gpt2 BPE model, a chat model, and models to refuse."""
    home = tmp_path_factory.mktemp("export-store")
    models = home / "models"
    text = corpus.read_text(encoding="utf-8")
    bpe = Tokenizer.train_bpe([text], 400)
    char = Tokenizer.train_char([text])
    info = {"kind": "train"}
    for name, family in (("modern", "modern"), ("gpt2", "gpt2")):
        write_model_dir(models / name, random_model(shape(family, 400)), bpe, info)
    chat_tok = Tokenizer(type(bpe.hf).from_str(bpe.to_json()))
    add_chat_tokens(chat_tok)
    for name, family in (("chat", "modern"), ("chat2", "gpt2")):
        model = random_model(shape(family, chat_tok.vocab_size), seed=1)
        write_model_dir(models / name, model, chat_tok, info)
        save_template(models / name, ChatTemplate())
    gains = shape("modern", 400, norms="gains")
    write_model_dir(models / "old", random_model(gains), bpe, info)
    write_model_dir(models / "char2", random_model(shape("gpt2", char.vocab_size)), char, info)
    labels = shape("modern", 400, labels=["neg", "pos"])
    write_model_dir(models / "clf", random_model(labels), bpe, info)
    return home


@pytest.fixture
def home(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPTCLI_HOME", str(store))
    return store


def greedy_text(name: str, n: int = 20) -> str:
    result = run(
        "generate", PROMPT, "-m", name, "-n", str(n), "--temperature", "0", "--ignore-eos",
        "--dtype", "float32", "--json",
    )  # fmt: skip
    out = json.loads(result.stdout)
    assert out["generated_tokens"] == n
    return out["text"]


# -- transformers ---------------------------------------------------------------------------
transformers_only = pytest.mark.skipif(
    not hasattr(pytest.importorskip("transformers"), "NanoChatForCausalLM"),
    reason="transformers has no NanoChatForCausalLM (it came in transformers 5)",
)


@transformers_only
def test_modern_export_computes_the_same_in_transformers(home: Path, tmp_path: Path) -> None:
    import transformers

    out = tmp_path / "modern-hf"
    result = run("models", "export", "modern", str(out))
    assert result.stdout.strip() == f"exported modern to {out}"
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "NanoChatForCausalLM"
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    loaded = load_model(home / "models" / "modern")
    for text in TEXTS:
        assert hf_tok(text)["input_ids"] == loaded.tokenizer.encode(text)
    ids = torch.randint(0, 400, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(ids).logits
        ours = loaded.model(ids)[0]
    assert ours.abs().max() > 1  # logits far from flat, so agreement means something
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    prompt = torch.tensor([hf_tok(PROMPT)["input_ids"]])
    new = hf.generate(prompt, max_new_tokens=20, do_sample=False, eos_token_id=None)
    new = new[0, prompt.shape[1] :].tolist()
    assert len(set(new)) > 3  # not one token repeated
    assert hf_tok.decode(new) == greedy_text("modern")


@transformers_only
def test_modern_export_imports_back_bit_for_bit(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "modern-hf"
    run("models", "export", "modern", str(out))
    run("models", "import", str(out), "--name", "back")
    try:
        before = read_weights(home / "models" / "modern" / "model.safetensors")
        after = read_weights(home / "models" / "back" / "model.safetensors")
        assert before.keys() == after.keys()
        for key, value in before.items():
            assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
        config = json.loads((home / "models" / "back" / "config.json").read_text())
        assert config["family"] == "modern" and config["norms"] == "plain"
        shown = json.loads(run("models", "show", "back", "--json").stdout)
        assert shown["params"] == load_model(home / "models" / "modern").model.num_params()
        assert greedy_text("back") == greedy_text("modern")
    finally:
        run("models", "rm", "back", code=None)


@transformers_only
@pytest.mark.parametrize("name", ["chat", "chat2", "modern"])
def test_chat_template_travels_as_jinja(name: str, home: Path, tmp_path: Path) -> None:
    import transformers

    out = tmp_path / name
    run("models", "export", name, str(out))
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert "{%" in config["chat_template"]
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    tokenizer = load_model(home / "models" / name).tokenizer
    template = ChatTemplate() if name.startswith("chat") else PlainTemplate()
    for prompt in (False, True):
        text = hf_tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=prompt)
        assert text == template.render(MESSAGES, prompt)
        ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        assert ids == template.render_ids(tokenizer, MESSAGES, prompt)[0]


def test_old_modern_models_load_but_are_not_exported(home: Path, tmp_path: Path) -> None:
    """A modern model saved before `norms` existed had gains: it still loads and generates."""
    path = home / "models" / "old" / "config.json"
    config = json.loads(path.read_text())
    del config["norms"]
    path.write_text(json.dumps(config))
    assert load_model(path.parent).model.config.norms == "gains"
    assert len(greedy_text("old", 5)) > 0
    result = run("models", "export", "old", str(tmp_path / "out"), code=1)
    assert result.stderr.startswith("error: old has learned norm gains")
    assert "NanoChatForCausalLM" in result.stderr and not (tmp_path / "out").exists()


def test_new_modern_models_have_plain_norms() -> None:
    model = GPT(shape("modern", 300))
    assert model.config.norms == "plain"
    assert not [n for n in model.weights() if "norm" in n or "ln_" in n]
    gains = GPT(shape("modern", 300, norms="gains"))
    assert gains.num_params() - model.num_params() == 2 * (2 * 64 + 2 * 32) + 64


@pytest.mark.parametrize("target", ["out", "out.gguf"])
def test_classifier_is_refused(target: str, home: Path, tmp_path: Path) -> None:
    result = run("models", "export", "clf", str(tmp_path / target), code=1)
    assert result.stderr.startswith("error: clf is a classifier")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / target).exists()


# -- GGUF -----------------------------------------------------------------------------------
GGUF_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "q8_0": "Q8_0"}


@pytest.mark.parametrize("dtype", list(GGUF_TYPES))
def test_gguf_file_layout(dtype: str, home: Path, tmp_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    path = tmp_path / "g.gguf"
    run("models", "export", "gpt2", str(path), "--dtype", dtype)
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.architecture"] == "gpt2" and fields["general.name"] == "gpt2"
    assert fields["gpt2.context_length"] == 64 and fields["gpt2.block_count"] == 2
    assert fields["gpt2.embedding_length"] == 64 and fields["gpt2.feed_forward_length"] == 256
    assert fields["gpt2.attention.head_count"] == 2
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    loaded = load_model(home / "models" / "gpt2")
    tokenizer, model = loaded.tokenizer, loaded.model
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens == [tokenizer.hf.id_to_token(i) for i in range(400)]
    eot = tokenizer.eot_id
    types = fields["tokenizer.ggml.token_type"]
    assert types[eot] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == 399
    merges = json.loads(tokenizer.to_json())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [
        m if isinstance(m, str) else " ".join(m) for m in merges
    ]
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == eot
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == PlainTemplate().jinja()

    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "position_embd.weight", "output_norm.weight", "output_norm.bias"}
    for i in range(2):
        for part in ("attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"):
            names |= {f"blk.{i}.{part}.weight", f"blk.{i}.{part}.bias"}
    assert set(tensors) == names  # no output.weight: llama.cpp ties it to token_embd
    weights = model.weights()
    pairs = [("token_embd.weight", "transformer.wte.weight")]
    pairs += [("position_embd.weight", "transformer.wpe.weight")]
    pairs += [("blk.1.attn_qkv.weight", "transformer.h.1.attn.c_attn.weight")]
    pairs += [("blk.0.ffn_down.weight", "transformer.h.0.mlp.c_proj.weight")]
    pairs += [("blk.0.ffn_down.bias", "transformer.h.0.mlp.c_proj.bias")]
    for theirs, ours in pairs:
        tensor, expected = tensors[theirs], weights[ours].numpy()
        assert list(tensor.shape) == list(reversed(expected.shape))  # GGUF lists ne0 first
        matrix = expected.ndim == 2 and theirs != "position_embd.weight"
        assert tensor.tensor_type.name == (GGUF_TYPES[dtype] if matrix else "F32")
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(expected.shape)
        tolerance = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3, "q8_0": 8e-3}[dtype]
        scale = abs(expected).max()
        assert abs(values - expected).max() <= tolerance * scale, theirs


def test_gguf_refusals_are_one_line(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    cases = {
        "modern": "error: modern is a modern-family model, and llama.cpp has no architecture",
        "char2": "error: char2 has a char tokenizer",
    }
    for name, message in cases.items():
        result = run("models", "export", name, str(tmp_path / "x.gguf"), code=1)
        assert result.stderr.startswith(message)
        assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
    refused = run("models", "export", "gpt2", str(tmp_path / "x"), "--dtype", "q8_0", code=1)
    assert "apply to GGUF exports" in refused.stderr
    run("models", "export", "gpt2", str(tmp_path / "x.gguf"))
    again = run("models", "export", "gpt2", str(tmp_path / "x.gguf"), code=1)
    assert "exists (use --force" in again.stderr
    run("models", "export", "gpt2", str(tmp_path / "x.gguf"), "--force", "--dtype", "q8_0")
    wrong = run("models", "export", "gpt2", str(tmp_path / "y"), "--format", "onnx", code=2)
    assert "onnx" in wrong.output and not (tmp_path / "y").exists()
    run("models", "export", "gpt2", str(tmp_path / "z.gguf"), "--dtype", "q4", code=2)


def test_ollama_modelfile(home: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    run("models", "export", "chat2", str(tmp_path / "chat.gguf"), "--ollama")
    modelfile = (tmp_path / "Modelfile").read_text()
    lines = modelfile.splitlines()
    assert lines[0] == "FROM ./chat.gguf" and lines[1].startswith('TEMPLATE """{{ range .Messages')
    assert 'PARAMETER stop "<|end|>"' in lines and f'PARAMETER stop "{EOT}"' in lines
    assert '{{ else if eq .Role "user" }}<|user|>' in modelfile


# -- llama.cpp ------------------------------------------------------------------------------
def llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError:
        pytest.skip("llama-cpp-python is not installed (pip install llama-cpp-python builds it)")
    return llama_cpp


@pytest.mark.parametrize("name", ["gpt2", "chat2"])
def test_llama_cpp_tokenizes_and_decodes_greedily_like_us(
    name: str, home: Path, tmp_path: Path
) -> None:
    import numpy as np

    lib = llama_cpp()
    path = tmp_path / f"{name}.gguf"
    run("models", "export", name, str(path), "--dtype", "float32")
    llm = lib.Llama(
        model_path=str(path), n_ctx=64, n_batch=64, n_threads=2, logits_all=True, verbose=False
    )
    tokenizer = load_model(home / "models" / name).tokenizer
    for text in [*TEXTS, ChatTemplate().render(MESSAGES, True)]:
        theirs = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert theirs == tokenizer.encode(text), text
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    new: list[int] = []
    llm.eval(ids)
    for _ in range(20):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        new.append(token)
        llm.eval([token])
    assert len(set(new)) > 3
    assert tokenizer.decode(new) == greedy_text(name)
