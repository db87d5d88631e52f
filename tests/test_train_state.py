"""Training state (the optimizer state --resume needs) is shown, can be left out, and dropped."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from conftest import TINY, run


def train(corpus: Path, name: str, *flags: str) -> dict:
    args = [str(corpus), "--name", name, "--tokenizer", "char", "--max-steps", "4", *TINY]
    return json.loads(run("train", *args, *flags, "--json").stdout)


def show(name: str) -> dict:
    return json.loads(run("models", "show", name, "--json").stdout)


def test_show_lists_weights_and_train_state_sizes(home: Path, corpus: Path) -> None:
    train(corpus, "m")
    directory = home / "models" / "m"
    row = show("m")
    weights = (directory / "model.safetensors").stat().st_size
    state = (directory / "train_state.safetensors").stat().st_size
    assert row["weights_bytes"] == weights and row["train_state_bytes"] == state
    assert state > weights  # a moment or two (Muon, AdamW) per weight
    text = run("models", "show", "m").stdout
    assert "weights " in text and "training state " in text and "gpt models prune" in text


def test_no_train_state_drops_it_when_the_run_ends(home: Path, corpus: Path) -> None:
    train(corpus, "lean", "--no-train-state")
    directory = home / "models" / "lean"
    assert (directory / "model.safetensors").is_file()
    assert not (directory / "train_state.safetensors").exists()
    assert show("lean")["train_state_bytes"] is None
    assert "no training state" in run("models", "show", "lean").stdout
    run("generate", "Once", "-m", "lean", "-n", "3")  # the model itself is whole
    result = run("train", str(corpus), "--name", "lean", "--resume", "--max-steps", "8", code=1)
    assert result.stderr == (
        "error: cannot resume 'lean': its training state was dropped (by --no-train-state or "
        "`gpt models prune`), and the optimizer cannot continue without it; fine-tune from it "
        "instead (gpt finetune lean DATA --name NEW)\n"
    )


def test_an_interrupted_run_keeps_its_state_to_resume(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcli.data import Batches

    original = Batches.sample
    calls = {"n": 0}

    def sample_then_ctrl_c(self, generator=None):  # type: ignore[no-untyped-def]
        if generator is None:
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, generator)

    monkeypatch.setattr(Batches, "sample", sample_then_ctrl_c)
    cut = train(corpus, "cut", "--no-train-state")
    assert cut["stopped"] == "interrupted" and cut["steps"] == 2
    assert (home / "models" / "cut" / "train_state.safetensors").is_file()
    monkeypatch.setattr(Batches, "sample", original)
    resumed = run("train", str(corpus), "--name", "cut", "--resume", "--json").stdout
    assert json.loads(resumed)["steps"] == 4
    assert not (home / "models" / "cut" / "train_state.safetensors").exists()  # now finished


def test_prune_drops_the_state_of_a_stored_model(home: Path, corpus: Path) -> None:
    train(corpus, "m")
    state = home / "models" / "m" / "train_state.safetensors"
    size = state.stat().st_size
    pruned = json.loads(run("models", "prune", "m", "--json").stdout)
    assert pruned == {"pruned": "m", "freed_bytes": size}
    assert not state.exists() and show("m")["train_state_bytes"] is None
    assert run("models", "prune", "m").stdout == "m has no training state to drop\n"
    result = run("train", str(corpus), "--name", "m", "--resume", "--max-steps", "8", code=1)
    assert "its training state was dropped (by --no-train-state or `gpt models prune`)" in (
        result.stderr
    )
    run("generate", "Once", "-m", "m", "-n", "3")
    assert "no model named 'ghost'" in run("models", "prune", "ghost", code=1).stderr


def test_finetune_no_train_state(trained_home: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    home = tmp_path / "store"
    shutil.copytree(trained_home, home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    text = tmp_path / "more.txt"
    text.write_text("The cat sat on the mat. " * 200)
    run("finetune", "tiny", str(text), "--name", "tuned", "--max-steps", "3", "--quiet",
        "--no-train-state")  # fmt: skip
    assert (home / "models" / "tuned" / "model.safetensors").is_file()
    assert not (home / "models" / "tuned" / "train_state.safetensors").exists()
