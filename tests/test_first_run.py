"""A first run that generalizes: keep the best checkpoint, resume it exactly, a long context by
default, regularization for small corpora."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, run
from safetensors import safe_open
from safetensors.torch import load_file

# a small text and a high learning rate: the validation loss turns up within 80 steps
OVERFIT = [
    "--tokenizer",
    "char",
    "--preset",
    "tiny",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--max-steps",
    "80",
    "--eval-every",
    "10",
    "--lr",
    "0.01",
    "--muon-lr",
    "0.06",
    "--warmup-steps",
    "5",
    "--quiet",
]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = (EXAMPLES / "stories" / "the-lantern-keeper.txt").read_text(encoding="utf-8")
    path = tmp_path_factory.mktemp("small") / "small.txt"
    path.write_text(text[:1500], encoding="utf-8")
    return path


def record(home: Path, name: str) -> dict:
    return json.loads((home / "models" / name / "train.json").read_text())


def latest_weights(home: Path, name: str) -> dict[str, torch.Tensor]:
    """The weights train_state.safetensors keeps for --resume (when not model.safetensors')."""
    with safe_open(str(home / "models" / name / "train_state.safetensors"), "pt") as f:
        return {k[6:]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}  # noqa: SIM118


def test_keep_best_stores_the_best_validation_checkpoint(home: Path, small: Path) -> None:
    best = json.loads(run("train", str(small), *OVERFIT, "--name", "best", "--json").stdout)
    last = json.loads(
        run("train", str(small), *OVERFIT, "--name", "last", "--keep", "last", "--json").stdout
    )
    history = record(home, "best")["history"]
    scored = [(h["val_loss"], h["step"]) for h in history if h["step"] > 0]
    lowest, at = min(scored)
    assert at < 80, "the fixture must overfit: the last evaluation is not the best"
    assert best["kept"] == {"step": at, "val_loss": lowest, "why": "best"}
    assert last["kept"]["step"] == 80 and last["kept"]["why"] == "last"
    assert best["val_loss"] == last["val_loss"]  # same training; only what is stored differs

    stored, final = (
        load_file(str(home / "models" / "best" / "model.safetensors")),
        weights(home, "last"),
    )
    assert any(not torch.equal(stored[k], final[k]) for k in final)
    resumable = latest_weights(home, "best")  # the latest state is kept for --resume
    assert all(torch.equal(resumable[k], final[k]) for k in final)
    assert latest_weights(home, "last") == {}

    # the stored model scores better on the held-out text than the last checkpoint
    scores = {
        name: json.loads(run("eval", name, "--stride", "32", "--json").stdout)["loss"]
        for name in ("best", "last")
    }
    assert scores["best"] < scores["last"]
    assert scores["best"] == pytest.approx(lowest, abs=1e-5)  # the same windows

    show = json.loads(run("models", "show", "best", "--json").stdout)
    assert show["kept"]["step"] == at
    text = run("models", "show", "best").stdout
    assert f"stored     step {at}: the best validation loss ({lowest:.4f})" in text
    # the first losses are the stored weights', then the last evaluation's, named as such
    losses = text.split("  losses")[1].splitlines()
    assert losses[0].endswith(f"validation {lowest:.4f} (step {at})")
    assert losses[1].strip().startswith("last evaluation (step 80): train ")
    assert losses[1].endswith(f", validation {best['val_loss']:.4f}")
    listed = {m["name"]: m for m in json.loads(run("models", "list", "--json").stdout)["models"]}
    assert listed["best"]["kept_val_loss"] == lowest
    assert listed["best"]["val_loss"] == best["val_loss"] > lowest  # as before: the last one's
    assert listed["last"]["kept_val_loss"] == listed["last"]["val_loss"] == last["val_loss"]
    table = run("models", "list").stdout.splitlines()
    row = next(line for line in table if line.lstrip("* ").startswith("best "))
    assert f" {lowest:.4f} " in row and f"{best['val_loss']:.4f}" not in row
    line = run("train", str(small), *OVERFIT, "--name", "again").stdout
    assert line.strip().endswith(f"kept step {at}: the best validation loss ({lowest:.4f})")


def weights(home: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(home / "models" / name / "model.safetensors"))


def test_resume_after_keep_best_continues_exactly(
    home: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = json.loads(run("train", str(small), *OVERFIT, "--name", "full", "--json").stdout)
    from gptcli.data import Batches

    original = Batches.sample
    calls = {"n": 0}

    def sample_then_ctrl_c(self, generator=None):  # type: ignore[no-untyped-def]
        if generator is None:
            calls["n"] += 1
            if calls["n"] == 75:  # after the best evaluation, before the end
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, generator)

    monkeypatch.setattr(Batches, "sample", sample_then_ctrl_c)
    cut = json.loads(run("train", str(small), *OVERFIT, "--name", "cut", "--json").stdout)
    assert cut["steps"] == 75 and cut["kept"]["step"] < 75
    monkeypatch.setattr(Batches, "sample", original)
    resumed = json.loads(
        run("train", str(small), *OVERFIT, "--name", "cut", "--resume", "--json").stdout
    )
    assert resumed["steps"] == 80
    assert resumed["kept"] == full["kept"]
    assert resumed["val_loss"] == full["val_loss"]
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], abs=1e-6)
    a, b = weights(home, "full"), weights(home, "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    a, b = latest_weights(home, "full"), latest_weights(home, "cut")
    assert a and all(torch.equal(a[k], b[k]) for k in a)


def test_default_model_has_a_long_context_reached_by_seq_warmup(
    home: Path, small: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpt train's default: context 256, trained on 64 then 128 tokens first at the same tokens
    per step; a small corpus gets dropout, and the summary says it was seen many times."""
    from gptcli.data import Batches

    shapes: list[tuple[int, int]] = []
    original = Batches.sample

    def recording(self, generator=None):  # type: ignore[no-untyped-def]
        batch = original(self, generator)
        if generator is None:
            shapes.append(tuple(batch["idx"].shape))
        return batch

    monkeypatch.setattr(Batches, "sample", recording)
    args = [str(small), "--tokenizer", "char", "--max-steps", "8", "--eval-every", "4"]
    result = run("train", *args, "--name", "default")
    assert "note: 12 passes over 1,350 training tokens: expect overfitting" in result.stderr
    assert "dropout 0.2: 1,350 training tokens are few" in result.stderr
    config = json.loads((home / "models" / "default" / "config.json").read_text())
    assert config["block_size"] >= 256 and config["dropout"] == 0.2
    assert record(home, "default")["train"]["seq_warmup"] == 0.5
    assert shapes == [(32, 64)] * 2 + [(16, 128)] * 2 + [(8, 256)] * 4

    shapes.clear()  # an explicit shape trains at its own length, without dropout
    run("train", *args, "--name", "mini", "--preset", "mini", "--block-size", "64", "--quiet")
    config = json.loads((home / "models" / "mini" / "config.json").read_text())
    assert config["dropout"] == 0.0 and record(home, "mini")["train"]["seq_warmup"] == 0.0
    assert set(shapes) == {(16, 64)}


def test_a_short_cpu_budget_gets_the_micro_shape_and_short_run_rates(
    home: Path, small: Path
) -> None:
    """--max-time up to 2 minutes on a CPU: 3 x 96 at context 256 with the short-run learning
    rates (issue 18, B1); a learning-rate flag given keeps the general defaults for the rest."""
    from gptcli.pretrain import SHORT_RUN_RATES

    args = [str(small), "--tokenizer", "char", "--max-time", "2s", "--quiet"]
    run("train", *args, "--name", "short")
    config = json.loads((home / "models" / "short" / "config.json").read_text())
    assert (config["preset"], config["n_layer"], config["n_embd"]) == ("micro", 3, 96)
    assert config["block_size"] == 256
    train = record(home, "short")["train"]
    assert {k: train[k] for k in SHORT_RUN_RATES} == SHORT_RUN_RATES
    assert train["batch_size"] == 8 and train["seq_warmup"] == 0.5

    run("train", *args, "--name", "given", "--lr", "5e-3")
    train = record(home, "given")["train"]
    assert (train["lr"], train["muon_lr"], train["warmup_steps"]) == (5e-3, 0.02, 20)

    run("train", *args[:-3], "--max-time", "3m", "--max-steps", "2", "--name", "longer", "--quiet")
    assert json.loads((home / "models" / "longer" / "config.json").read_text())["preset"] == "mini"
