"""Models in and out of the store in other formats: `gpt models import` and `gpt models export`.

Conversion is `hf.py`'s; this module resolves names, refuses what must not be overwritten, and
writes through the store's staged write (`ModelStore.staged`), so a failed import or export
leaves nothing half-written behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli import hf
from gptcli.checkpoint import load_model, write_model_dir
from gptcli.errors import GptError
from gptcli.record import RunRecord
from gptcli.store import ModelStore


def import_hf_dir(directory: Path, name: str, force: bool, store: ModelStore) -> dict[str, Any]:
    """Converts a Hugging Face GPT-2 directory into a stored model; returns a summary."""
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
    record = RunRecord("import", source=str(directory.resolve()), tokenizer=loaded.tokenizer.kind)
    with store.staged(target, force=force) as staging:
        write_model_dir(staging, loaded.model, loaded.tokenizer, record.to_dict())
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
    """Writes the stored model `ref` as a Hugging Face GPT-2 directory; returns a summary."""
    loaded = load_model(store.resolve(ref))
    config = loaded.model.config
    if config.family != "gpt2":
        raise GptError(
            f"{loaded.name} is a {config.family}-family model (rotary positions, RMSNorm, "
            "no biases): only gpt2-family models can be exported as Hugging Face GPT-2"
        )
    if directory.exists() and not directory.is_dir():
        raise GptError(f"{directory}: exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise GptError(f"{directory}: not empty (use --force to replace it)")
    directory = directory.absolute()
    with store.staged(directory, force=force) as staging:
        hf.write_hf_files(staging, loaded.model, loaded.tokenizer)
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()  # an empty directory is replaced, --force or not
    return {
        "name": loaded.name,
        "path": str(directory),
        "files": sorted(p.name for p in directory.iterdir()),
    }
