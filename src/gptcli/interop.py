"""Models in and out of the store in other formats: `gpt models import` and `gpt models export`.

Conversion is `hf.py`'s (with `nanochat.py` for the modern family) and `gguf_export.py`'s;
this module resolves names, refuses what must not be overwritten or cannot be exported, and
writes through the store's staged write (`ModelStore.staged`) or an atomic file, so a failed
import or export leaves nothing half-written behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli import hf, nanochat
from gptcli.chat import load_template
from gptcli.checkpoint import load_model, write_model_dir
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.record import RunRecord
from gptcli.store import ModelStore, disk_full_message, is_disk_full, write_text_atomic


def import_hf_dir(
    directory: Path, name: str, force: bool, store: ModelStore, source: str | None = None
) -> dict[str, Any]:
    """Converts a Hugging Face GPT-2 or NanoChat directory into a stored model; a summary.

    `source` is what the record names as the origin (a Hub repo and commit), else the path."""
    target = store.model_dir(name)
    if target.exists() and not force:
        raise GptError(f"a model named {name!r} already exists (use --force to replace it)")
    if not directory.is_dir():
        raise GptError(f"{directory}: not a directory")
    if not hf.is_hf_dir(directory):
        raise GptError(
            f"{directory}: not a Hugging Face model directory (no config.json with a model_type)"
        )
    loaded = load_model(directory)  # validates shapes and vocabulary, the one loader
    origin = source or str(directory.resolve())
    record = RunRecord("import", source=origin, tokenizer=loaded.tokenizer.kind)
    try:
        with store.staged(target, force=force) as staging:
            write_model_dir(staging, loaded.model, loaded.tokenizer, record.to_dict())
    except Exception as exc:  # the staging directory is gone by now: what is free is free
        if not is_disk_full(exc):
            raise
        size = sum(t.numel() * t.element_size() for t in loaded.model.weights().values())
        raise GptError(disk_full_message(store.models_dir, size, f"model {name!r}")) from None
    if store.default_name() is None:
        store.set_default(name)
    return {
        "name": name,
        "path": str(target),
        "source": record.source,
        "params": loaded.model.num_params(),
        "context": loaded.model.config.block_size,
        "vocab_size": loaded.model.config.vocab_size,
    }


def export_hf_dir(ref: str, directory: Path, force: bool, store: ModelStore) -> dict[str, Any]:
    """Writes the stored model `ref` as a Hugging Face directory (GPT-2 or NanoChat); returns
    a summary."""
    loaded = load_model(store.resolve(ref))
    config = loaded.model.config
    refuse_classifier(config, loaded.name)
    if config.family == "modern":
        nanochat.check_exportable(config, loaded.name)
    if directory.exists() and not directory.is_dir():
        raise GptError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise GptError(f"{directory}: not empty (use --force to replace it)")
    directory = directory.absolute()
    with store.staged(directory, force=force) as staging:
        template = load_template(loaded.path, loaded.tokenizer).jinja()
        hf.write_hf_files(staging, loaded.model, loaded.tokenizer, template)
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()  # an empty directory is replaced, --force or not
    return {
        "name": loaded.name,
        "path": str(directory),
        "files": sorted(p.name for p in directory.iterdir()),
    }


def export_gguf(
    ref: str, path: Path, dtype: str, ollama: bool, force: bool, store: ModelStore
) -> dict[str, Any]:
    """Writes the stored model `ref` to the GGUF file `path`, and with `ollama` a Modelfile
    beside it; returns a summary."""
    from gptcli import gguf_export

    gguf_export.import_gguf()  # say that the package is missing before loading anything
    gguf_export.check_dtype(dtype)
    loaded = load_model(store.resolve(ref))
    refuse_classifier(loaded.model.config, loaded.name)
    gguf_export.check_exportable(loaded.model, loaded.tokenizer, loaded.name)
    path = path.absolute()
    if path.is_dir():
        raise GptError(f"{path}: is a directory (a GGUF export is one file, e.g. model.gguf)")
    model_file = path.parent / "Modelfile"
    existing = [p for p in ([path, model_file] if ollama else [path]) if p.exists()]
    if existing and not force:
        raise GptError(f"{existing[0]}: exists (use --force to replace it)")
    template = load_template(loaded.path, loaded.tokenizer)
    gguf_export.write_gguf(path, loaded.model, loaded.tokenizer, loaded.name, dtype, template)
    files = [str(path)]
    if ollama:
        write_text_atomic(model_file, gguf_export.modelfile(path, template, loaded.tokenizer))
        files.append(str(model_file))
    return {"name": loaded.name, "path": str(path), "dtype": dtype, "files": files}


def refuse_classifier(config: ModelConfig, name: str) -> None:
    if config.labels:
        raise GptError(
            f"{name} is a classifier ({len(config.labels)} labels): its head reads the hidden "
            "state at a marked token, which no causal-LM format has a place for; only language "
            "models are exported"
        )
