"""The one way to write and read a model directory: safetensors and JSON only."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import SafetensorError, safe_open

from gptcli import hf
from gptcli.config import ModelConfig, weights_mismatch
from gptcli.errors import GptError
from gptcli.lora import merged_weights
from gptcli.model import FORMAT_VERSION, GPT
from gptcli.record import RECORD_FILE, read_record
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


def stored_weights(model: GPT) -> dict[str, torch.Tensor]:
    """A copy of the tensors of model.safetensors, on the CPU (they do not change as the model
    trains on): a model fine-tuned with adapters is saved merged, and loads like any other."""
    return {k: v.to("cpu", copy=True) for k, v in model.weights(merged_weights(model)).items()}


def save_weights(path: Path, model: GPT, weights: dict[str, torch.Tensor] | None = None) -> None:
    """`weights` (from `stored_weights`, e.g. an earlier checkpoint's) or the model's now."""
    tensors = weights if weights is not None else stored_weights(model)
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(
            tensors, str(tmp), metadata={"format": "gptcli", "version": FORMAT_VERSION}
        )


def write_model_dir(
    directory: Path,
    model: GPT,
    tokenizer: Tokenizer,
    info: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> None:
    """Writes every file of a model into `directory` (each one atomically); the weights are
    `weights` when given, else the model's."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json_atomic(directory / "config.json", model.config.to_dict())
    write_text_atomic(directory / "tokenizer.json", tokenizer.to_json())
    save_weights(directory / "model.safetensors", model, weights)
    if info is not None:
        write_json_atomic(directory / RECORD_FILE, info)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
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


def read_model_files(
    directory: Path,
) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, weights and tokenizer of a model directory, ours or Hugging Face's (GPT-2,
    NanoChat: converted on the fly, nothing is written), each file read once."""
    raw = read_json(directory / "config.json")
    if hf.is_hf_config(raw):
        return hf.read_hf_dir(directory, raw)
    config = ModelConfig.from_dict(raw)
    tokenizer = Tokenizer.load(directory / "tokenizer.json")
    return config, read_weights(directory / "model.safetensors"), tokenizer


def load_model(directory: Path, device: torch.device | str = "cpu") -> LoadedModel:
    """Reads config, tokenizer and weights of a model directory (ours or Hugging Face's)."""
    config, weights, tokenizer = read_model_files(directory)
    mismatch = weights_mismatch(config, {k: tuple(v.shape) for k, v in weights.items()})
    if mismatch:  # before the model is built: a wrong config could ask for terabytes
        raise GptError(f"{directory}: {mismatch}")
    if tokenizer.vocab_size > config.vocab_size:
        raise GptError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model only "
            f"{config.vocab_size}"
        )
    model = GPT(config)
    model.load_weights(weights, directory)
    model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, directory, read_record(directory))


# -- training state, for exact --resume ------------------------------------------------------


def optimizer_tensors(optimizers: list[torch.optim.Optimizer]) -> tuple[dict, list]:
    """Splits optimizer state dicts into flat tensors and JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    described = []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in sd["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"opt{i}.{index}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        described.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return tensors, described


def save_train_state(
    path: Path,
    optimizers: list[torch.optim.Optimizer],
    state: dict[str, Any],
    data_generator: torch.Generator,
    latest: dict[str, torch.Tensor] | None = None,
) -> None:
    """Optimizers, RNGs and the loop's state; `latest`: the weights to resume from, when
    model.safetensors holds others (--keep best kept an earlier checkpoint)."""
    tensors, described = optimizer_tensors(optimizers)
    for key, value in (latest or {}).items():
        tensors[f"model.{key}"] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.data"] = data_generator.get_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    metadata = {
        "format": "gptcli-train-state",
        "version": FORMAT_VERSION,
        "state": json.dumps(state),
        "optimizers": json.dumps(described),
    }
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=metadata)


def check_resumable(directory: Path) -> None:
    """Refuses --resume, saying why, for a model without its optimizer state."""
    if (directory / "train_state.safetensors").is_file():
        return
    dropped = read_record(directory).get("train_state") == "dropped"
    why = (
        "its training state was dropped (by --no-train-state or `gpt models prune`)"
        if dropped
        else "it has no training state (train_state.safetensors)"
    )
    raise GptError(
        f"cannot resume {directory.name!r}: {why}, and the optimizer cannot continue without it; "
        f"fine-tune from it instead (gpt finetune {directory.name} DATA --name NEW)"
    )


def load_train_state(
    path: Path,
    optimizers: list[torch.optim.Optimizer],
    data_generator: torch.Generator,
    model: GPT,
) -> dict[str, Any]:
    """Restores optimizers, RNGs and (when saved apart from model.safetensors) the latest
    weights into `model`, in place; returns the saved loop state."""
    check_resumable(path.parent)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        state = json.loads(metadata["state"])
        described = json.loads(metadata["optimizers"])
    except (SafetensorError, KeyError, json.JSONDecodeError) as exc:
        raise GptError(f"{path}: not a valid training state ({exc})") from None
    if len(described) != len(optimizers):
        raise GptError(f"{path}: saved for a different optimizer setup")
    for i, (opt, desc) in enumerate(zip(optimizers, described, strict=True)):
        per_param: dict[int, dict[str, Any]] = {}
        for index, entry in desc["scalars"].items():
            per_param.setdefault(int(index), {}).update(entry)
        prefix = f"opt{i}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, name = key[len(prefix) :].split(".", 1)
                per_param.setdefault(int(index), {})[name] = value
        try:
            opt.load_state_dict({"state": per_param, "param_groups": desc["param_groups"]})
        except (ValueError, KeyError) as exc:
            raise GptError(f"{path}: optimizer state does not fit this model ({exc})") from None
    latest = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    if latest:
        model.load_weights(latest, path)
    torch.set_rng_state(tensors["rng.torch"])
    data_generator.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return state
