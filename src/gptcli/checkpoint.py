"""The one way to write and read a model directory (safetensors + JSON, never pickle)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.model import FORMAT_VERSION, GPT
from gptcli.store import atomic_path, read_json, write_json_atomic, write_text_atomic
from gptcli.tokenizer import Tokenizer


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: Tokenizer
    path: Path
    info: dict[str, Any] = field(default_factory=dict)  # train.json, if any

    @property
    def name(self) -> str:
        return self.path.name


def save_weights(path: Path, model: GPT) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.cpu() for k, v in model.weights().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "gptcli", "version": FORMAT_VERSION})


def write_model_dir(
    directory: Path, model: GPT, tokenizer: Tokenizer, info: dict[str, Any] | None = None
) -> None:
    """Writes every file of a model into `directory` (each one atomically)."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", model.config.to_dict())
    write_text_atomic(directory / "tokenizer.json", tokenizer.to_json())
    save_weights(directory / "model.safetensors", model)
    if info is not None:
        write_json_atomic(directory / "train.json", info)


def read_config(directory: Path) -> ModelConfig:
    return ModelConfig.from_dict(read_json(directory / "config.json"))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise GptError(f"{path}: weights file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            version = metadata.get("version", FORMAT_VERSION)
            if metadata.get("format", "gptcli") != "gptcli" or version != FORMAT_VERSION:
                raise GptError(f"{path}: unknown checkpoint format {metadata} (too new a gptcli?)")
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except SafetensorError as exc:
        raise GptError(f"{path}: not a valid safetensors file ({exc})") from None


def load_model(directory: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Reads config, tokenizer and weights of a model directory (ours or Hugging Face GPT-2)."""
    from gptcli import hf

    if hf.is_hf_dir(directory):  # converted on the fly, nothing is written
        config, weights, tokenizer = hf.read_hf_dir(directory)
    else:
        config = read_config(directory)
        tokenizer = Tokenizer.load(directory / "tokenizer.json")
        weights = read_weights(directory / "model.safetensors")
    if tokenizer.vocab_size > config.vocab_size:
        raise GptError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}"
        )
    model = GPT(config)
    model.load_weights(weights, directory)
    model.to(device)
    model.eval()
    info_path = directory / "train.json"
    info = read_json(info_path) if info_path.is_file() else {}
    return LoadedModel(model, tokenizer, directory, info)
