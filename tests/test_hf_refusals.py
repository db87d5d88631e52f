"""Refusals of `gpt models import/export` that need no `transformers`: pickle checkpoints,
unsupported GPT-2 configs, untied heads, directories that are not Hugging Face models.

The Hugging Face directory here is one `gpt models export` wrote, so these run on every install.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import run

from gptcli.checkpoint import write_model_dir
from gptcli.config import ModelConfig
from gptcli.model import GPT
from gptcli.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GPT-2 in Hugging Face layout, as `gpt models export` writes it."""
    store = tmp_path_factory.mktemp("export-store")
    torch.manual_seed(0)
    config = ModelConfig(
        family="gpt2", vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32
    )
    write_model_dir(
        store / "models" / "small", GPT(config), Tokenizer.train_char(["Once upon a time"])
    )
    directory = tmp_path_factory.mktemp("hf") / "tiny-gpt2"
    old = os.environ.get("GPTCLI_HOME")
    os.environ["GPTCLI_HOME"] = str(store)
    try:
        run("models", "export", "small", str(directory))
    finally:
        if old is None:
            os.environ.pop("GPTCLI_HOME", None)
        else:
            os.environ["GPTCLI_HOME"] = old
    return directory


def variant(hf_dir: Path, tmp_path: Path, name: str = "variant") -> Path:
    """A copy of the fixture directory to alter."""
    return Path(shutil.copytree(hf_dir, tmp_path / name))


def edit_config(directory: Path, **changes: object) -> None:
    path = directory / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_modern_model_with_norm_gains_export_is_refused(home: Path, tmp_path: Path) -> None:
    config = ModelConfig(
        family="modern", vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=16,
        norms="gains",
    )  # fmt: skip
    write_model_dir(home / "models" / "mod", GPT(config), Tokenizer.train_char(["abc"]))
    result = run("models", "export", "mod", str(tmp_path / "out"), code=1)
    assert result.stderr.startswith("error: mod has learned norm gains")
    assert not (tmp_path / "out").exists()


def test_pickle_checkpoint_is_refused_and_never_loaded(
    hf_dir: Path, tmp_path: Path, home: Path
) -> None:
    directory = variant(hf_dir, tmp_path)
    (directory / "model.safetensors").unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    (directory / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    result = run("models", "import", str(directory), "--name", "x", code=1)
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("error: ")
    assert "pytorch_model.bin is a pickle checkpoint" in line and "save_pretrained" in line
    assert not marker.exists()
    run("generate", "hi", "-m", str(directory), code=1)
    assert not marker.exists() and not (home / "models").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"activation_function": "gelu"}, "activation_function 'gelu' is not supported"),
        ({"activation_function": "relu"}, "activation_function 'relu' is not supported"),
        ({"scale_attn_weights": False}, "scale_attn_weights: false"),
        ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx: true"),
        ({"add_cross_attention": True}, "add_cross_attention: true"),
        ({"n_inner": 64}, "an MLP width of 64 (n_inner) is not supported"),
        ({"model_type": "gpt_neo"}, "model_type 'gpt_neo' is not supported"),
        ({"n_layer": 3}, "config.json describes 3 layers of width 32"),
    ],
)
def test_unsupported_configs_are_refused(
    hf_dir: Path, tmp_path: Path, home: Path, changes: dict[str, Any], message: str
) -> None:
    directory = variant(hf_dir, tmp_path)
    edit_config(directory, **changes)
    result = run("models", "import", str(directory), "--name", "bad", code=1)
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert not (home / "models" / "bad").exists()


def test_import_on_a_full_disk_says_so(
    hf_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(*args: Any, **kwargs: Any) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    result = run("models", "import", str(hf_dir), "--name", "full", code=1)
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: the disk is full: model 'full' needs about ")
    assert f" in {home / 'models'}, " in result.stderr and " free" in result.stderr
    assert not (home / "models" / "full").exists()
    assert not list((home / "models").glob(".*.staging"))


def test_accepted_config_variants(hf_dir: Path, tmp_path: Path, home: Path) -> None:
    directory = variant(hf_dir, tmp_path)
    edit_config(
        directory,
        n_inner=128,
        reorder_and_upcast_attn=True,
        activation_function="gelu_pytorch_tanh",
    )
    run("models", "import", str(directory), "--name", "fine")
    again = run("models", "import", str(directory), "--name", "fine", code=1)
    assert "already exists" in again.stderr
    run("models", "import", str(directory), "--name", "fine", "--force", "--json")


def test_untied_head_is_refused(hf_dir: Path, tmp_path: Path, home: Path) -> None:
    from safetensors.torch import load_file, save_file

    directory = variant(hf_dir, tmp_path)
    tensors = load_file(directory / "model.safetensors")
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"] + 1
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})
    edit_config(directory, tie_word_embeddings=False)
    result = run("models", "import", str(directory), "--name", "untied", code=1)
    assert "untied output heads are not supported" in result.stderr


def test_import_needs_a_hf_directory(tmp_path: Path, home: Path) -> None:
    result = run("models", "import", str(tmp_path / "nowhere"), "--name", "x", code=1)
    assert "not a directory" in result.stderr
    result = run("models", "import", str(tmp_path), "--name", "x", code=1)
    assert "not a Hugging Face model directory" in result.stderr
