"""Failures that say what happened: a full disk, a config.json that disagrees with its weights,
a damaged entry in `gpt models list`."""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run, snapshot


@pytest.fixture
def store_copy(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session's trained store (model `tiny`), safe to damage."""
    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    return home


def edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def limited_memory() -> None:
    """In the child: 8 GB of address space, so a regression fails fast instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))


def test_a_config_far_larger_than_its_weights_is_refused_before_building(store_copy: Path) -> None:
    edit_config(store_copy / "models" / "tiny", n_layer=9000, n_embd=65536)
    proc = subprocess.run(
        [sys.executable, "-m", "gptcli", "generate", "Once", "-n", "2"],
        env={**os.environ, "GPTCLI_HOME": str(store_copy)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limited_memory,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {store_copy / 'models' / 'tiny'}: config.json ")
    assert "describes 9,000 layers of width 65,536 and " in proc.stderr
    assert "the weights have 2 layers of width 64 and " in proc.stderr


def test_a_mismatched_config_is_named_everywhere(store_copy: Path) -> None:
    model_dir = store_copy / "models" / "tiny"
    edit_config(model_dir, n_layer=3)
    before = snapshot(store_copy)
    for command in (
        ["generate", "x", "-n", "2"],
        ["eval"],
        ["generate", "x", "-m", str(model_dir)],
    ):
        lines = run(*command, code=1).stderr.splitlines()
        assert len(lines) == 1 and "describes 3 layers of width 64" in lines[0], lines
    assert snapshot(store_copy) == before

    table = run("models", "list").stdout
    row = next(line for line in table.splitlines() if "tiny" in line)
    assert "damaged: wrong config.json" in row
    assert len(table.splitlines()) == 2  # header and one row: nothing wrapped
    listed = json.loads(run("models", "list", "--json").stdout)["models"][0]
    assert listed["damaged"] == "wrong config.json"
    assert "describes 3 layers" in listed["error"]


@pytest.mark.parametrize(
    ("victim", "content", "reason"),
    [
        ("config.json", "{not json", "bad config.json"),
        ("model.safetensors", "\x00" * 10, "bad weights file"),
        ("model.safetensors", None, "weights missing"),
        ("config.json", '{"n_embd": 30, "n_head": 4}', "impossible config"),
    ],
)
def test_models_list_shows_damage_in_a_few_words(
    store_copy: Path, victim: str, content: str | None, reason: str
) -> None:
    path = store_copy / "models" / "tiny" / victim
    if content is None:
        path.unlink()
    elif content.startswith('{"'):
        edit_config(path.parent, **json.loads(content))
    else:
        path.write_text(content)
    table = run("models", "list").stdout.splitlines()
    assert len(table) == 2 and f"damaged: {reason}" in table[1], table


def safetensors_disk_full(after: int):  # type: ignore[no-untyped-def]
    """safetensors' save_file, failing as on a full disk from its `after`+1-th call on."""
    import safetensors.torch
    from safetensors import SafetensorError

    original = safetensors.torch.save_file
    calls = {"n": 0}

    def save_file(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] > after:
            raise SafetensorError(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            )
        return original(*args, **kwargs)

    return save_file


@pytest.mark.parametrize("kind", ["safetensors", "oserror"])
def test_a_full_disk_while_saving_says_so(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    import safetensors.torch

    if kind == "safetensors":
        failing = safetensors_disk_full(after=2)  # the first checkpoint is weights + state
    else:

        def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing)
    args = ["--tokenizer", "char", "--max-steps", "20", "--save-every", "10", "--name", "m"]
    result = run("train", str(corpus), *args, *TINY, code=1)
    line = result.stderr
    assert line.count("\n") == 1 and line.startswith("error: the disk is full: "), line
    assert "the checkpoint needs about " in line and f" in {home / 'models'}, " in line
    assert " free; step " in line
    if kind == "safetensors":
        assert line.endswith("step 20 was not saved, the previous checkpoint (step 10) is kept\n")
    else:
        assert line.endswith("step 10 was not saved, no checkpoint had been saved yet\n")
    assert not list((home / "models").glob(".*.staging"))
