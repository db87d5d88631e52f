"""Hugging Face GPT-2 interop: a tiny random GPT-2 built with transformers, compared number for
number with ours (logits, greedy tokens, eval loss, tokenizer), and export/import round trips."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run

from gptcli.checkpoint import load_model, write_model_dir
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tokenizer import EOT, Tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local: never reach the Hub
transformers = pytest.importorskip("transformers")

TEXTS = [
    "Once upon a time, there was a fox.",
    "  two leading spaces\nand\ttabs\r\n",
    "naïve café, 日本語, emoji 🙂👍🏽 and <|endoftext|> inside",
    "Numbers 12345 and don't, can't, it's",
    "",
]


def train_gpt2_tokenizer(corpus: Path) -> Any:
    """A small byte-level BPE laid out like GPT-2's: <|endoftext|> is the last id."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    hf.train_from_iterator([corpus.read_text(encoding="utf-8")], trainer)
    hf.add_special_tokens([EOT])
    return hf


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """A random GPT-2 saved by transformers, with tokenizer.json (as save_pretrained writes)."""
    hf_tok = train_gpt2_tokenizer(corpus)
    eot = hf_tok.token_to_id(EOT)
    config = transformers.GPT2Config(
        vocab_size=hf_tok.get_vocab_size(),
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        bos_token_id=eot,
        eos_token_id=eot,
        initializer_range=0.2,  # larger than GPT-2's, so logits differ between tokens
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config)
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    model.save_pretrained(directory)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tok, bos_token=EOT, eos_token=EOT, unk_token=EOT
    )
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def hf_model(hf_dir: Path) -> Any:
    return transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()


@pytest.fixture(scope="module")
def hf_tokenizer(hf_dir: Path) -> Any:
    return transformers.AutoTokenizer.from_pretrained(hf_dir)


def variant(hf_dir: Path, tmp_path: Path, name: str = "variant") -> Path:
    """A copy of the fixture directory to alter."""
    return Path(shutil.copytree(hf_dir, tmp_path / name))


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def write_vocab_merges(hf_dir: Path, directory: Path) -> None:
    """vocab.json (with <|endoftext|>, as GPT-2's has it) and merges.txt of the fixture."""
    from tokenizers import Tokenizer as HFTokenizer

    hf = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    hf.model.save(str(directory))  # merges.txt, and a vocab.json without the added token
    vocab = hf.get_vocab(with_added_tokens=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))


def hf_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def test_logits_match_transformers(hf_dir: Path, hf_model: Any, home: Path) -> None:
    ids = torch.randint(
        0, hf_model.config.vocab_size, (3, 64), generator=torch.Generator().manual_seed(1)
    )
    expected = hf_logits(hf_model, ids)
    assert expected.std() > 1.0  # the comparison below is not between near-zero numbers
    loaded = load_model(hf_dir)  # a directory is read on the fly
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids)[0], expected, atol=1e-5, rtol=0)
    run("models", "import", str(hf_dir), "--name", "tiny-gpt2")
    stored = load_model(home / "models" / "tiny-gpt2")
    assert stored.model.config.block_size == 64 and stored.model.config.dropout == 0.1
    with torch.no_grad():
        torch.testing.assert_close(stored.model(ids)[0], expected, atol=1e-5, rtol=0)
    assert (home / "default").read_text().strip() == "tiny-gpt2"  # the store had none


def test_original_gpt2_layout_imports(hf_dir: Path, hf_model: Any, tmp_path: Path) -> None:
    """OpenAI's GPT-2 files: GPT2Model names (no `transformer.`), mask buffers, a tied head."""
    from safetensors.torch import load_file, save_file

    directory = variant(hf_dir, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    n = hf_model.config.n_positions
    original = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    for layer in range(hf_model.config.n_layer):
        original[f"h.{layer}.attn.bias"] = torch.tril(torch.ones(n, n)).view(1, 1, n, n)
        original[f"h.{layer}.attn.masked_bias"] = torch.tensor(-1e4)
    original["lm_head.weight"] = original["wte.weight"].clone()
    save_file(original, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "tokenizer.json").unlink()  # vocab.json + merges.txt only, like the original
    write_vocab_merges(hf_dir, directory)
    ids = torch.arange(40).view(1, 40)
    with torch.no_grad():
        ours = load_model(directory).model(ids)[0]
    torch.testing.assert_close(ours, hf_logits(hf_model, ids), atol=1e-5, rtol=0)
    shown = json.loads(run("models", "show", str(directory), "--json").stdout)
    assert shown["params"] == sum(p.numel() for p in hf_model.parameters())
    assert shown["context"] == n and shown["family"] == "gpt2"


def test_greedy_generation_matches_transformers(
    hf_dir: Path, hf_model: Any, hf_tokenizer: Any, home: Path
) -> None:
    prompt = "Once upon a time"
    result = run(
        "generate", prompt, "-m", str(hf_dir), "-n", "20", "--temperature", "0",
        "--ignore-eos", "--dtype", "float32", "--json",
    )  # fmt: skip
    ours = json.loads(result.stdout)
    ids = torch.tensor([hf_tokenizer(prompt)["input_ids"]])
    out = hf_model.generate(
        ids, max_new_tokens=20, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    new = out[0, ids.shape[1] :].tolist()
    assert len(new) == 20 and ours["generated_tokens"] == 20
    assert len(set(new)) > 3  # not one token repeated
    assert ours["text"] == hf_tokenizer.decode(new)
    assert not home.exists()  # -m DIR did not import anything


def test_eval_loss_matches_transformers(
    hf_dir: Path, hf_model: Any, hf_tokenizer: Any, tmp_path: Path, home: Path
) -> None:
    text = "The little fox ran to the river, and the river sang back.\nThe end.\n"
    path = tmp_path / "short.txt"
    path.write_text(text, encoding="utf-8")
    ours = json.loads(run("eval", str(hf_dir), "--data", str(path), "--json").stdout)
    ids = torch.tensor([hf_tokenizer(text)["input_ids"]])
    assert 2 < ids.shape[1] <= hf_model.config.n_positions
    with torch.no_grad():
        loss = hf_model(ids, labels=ids).loss.item()
    assert ours["tokens"] == ids.shape[1] - 1
    assert abs(ours["loss"] - loss) < 1e-5


def test_gpt2_tokenizer_round_trips_like_the_original(
    hf_dir: Path, hf_tokenizer: Any, tmp_path: Path
) -> None:
    files_dir = tmp_path / "vocab-merges"
    files_dir.mkdir()
    shutil.copy(hf_dir / "config.json", files_dir)
    write_vocab_merges(hf_dir, files_dir)
    reference = transformers.AutoTokenizer.from_pretrained(files_dir)  # GPT-2's, from the files
    assert "GPT2" in type(reference).__name__
    from gptcli import hf

    for tokenizer in (hf.read_hf_tokenizer(hf_dir), hf.read_hf_tokenizer(files_dir)):
        assert tokenizer.eot_id == hf_tokenizer.eos_token_id == len(hf_tokenizer) - 1
        assert tokenizer.kind == "bpe"
        for text in TEXTS:
            ids = tokenizer.encode(text)
            assert ids == hf_tokenizer(text)["input_ids"] == reference(text)["input_ids"]
            assert tokenizer.decode(ids) == text == hf_tokenizer.decode(ids)
    encoded = run("tokenize", "encode", TEXTS[2], "-m", str(files_dir), "--json").stdout
    assert json.loads(encoded)["ids"] == hf_tokenizer(TEXTS[2])["input_ids"]


def test_export_then_import_round_trips_bit_for_bit(
    hf_dir: Path, hf_model: Any, home: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    run("models", "import", str(hf_dir), "--name", "first")
    out = tmp_path / "exported"
    run("models", "export", "first", str(out))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in out.iterdir()
    }
    back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.arange(50).view(2, 25)
    torch.testing.assert_close(hf_logits(back, ids), hf_logits(hf_model, ids), atol=0, rtol=0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert set(tokenizer("a b")) == {"input_ids", "attention_mask"}  # no token_type_ids
    for text in TEXTS:
        assert tokenizer(text)["input_ids"] == load_model(out).tokenizer.encode(text)
    run("models", "import", str(out), "--name", "second")
    first, second = home / "models" / "first", home / "models" / "second"
    a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("config.json", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    refused = run("models", "export", "first", str(out), code=1)
    assert "not empty" in refused.stderr
    run("models", "export", "first", str(out), "--force")


def test_our_model_exports_with_same_logits(home: Path, tmp_path: Path) -> None:
    torch.manual_seed(3)
    config = ModelConfig(
        family="gpt2", vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32
    )
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    tokenizer = Tokenizer.train_char(["Once upon a time there was a fox"])
    write_model_dir(home / "models" / "ours", model, tokenizer)
    out = tmp_path / "ours-hf"
    run("models", "export", "ours", str(out))
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    ids = torch.randint(0, 300, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf_logits(hf, ids), model(ids)[0], atol=1e-5, rtol=0)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for text in ("Once upon a fox", "unseen: ünïcödé 🙂"):
        assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
        assert hf_tok.decode(tokenizer.encode(text)) == text
