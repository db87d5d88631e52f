"""Resume: an interrupted and resumed fine-tune, per task, equals an uninterrupted one; a run
bounded by --max-time, interrupted and resumed, ends at the total budget with its learning rate
cooled down as if it had never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, TINY, run
from safetensors.torch import load_file

from gptcli.data import Batches
from gptcli.tasks.examples import ExampleBatches

FAST = ["--batch-size", "4", "--eval-every", "4", "--quiet", "--json"]


def ctrl_c_when(
    monkeypatch: pytest.MonkeyPatch, cls: type, when: Callable[[int], bool]
) -> Callable[[], None]:
    """Sends Ctrl+C while a training batch is drawn, the first time `when(calls)` holds;
    returns a function that undoes the patch."""
    original = cls.sample
    calls = {"n": 0, "sent": False}

    def sample_then_ctrl_c(self, generator=None):  # type: ignore[no-untyped-def]
        if generator is None:  # not the fixed validation batches
            calls["n"] += 1
            if not calls["sent"] and when(calls["n"]):
                calls["sent"] = True
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, generator)

    monkeypatch.setattr(cls, "sample", sample_then_ctrl_c)
    return lambda: monkeypatch.setattr(cls, "sample", original)


def task_data(task: str, tmp_path: Path) -> Path:
    if task == "chat":
        return EXAMPLES / "chat.jsonl"
    if task == "classify":
        rng = random.Random(0)
        path = tmp_path / "labelled.jsonl"
        words = ["sun", "rain", "cat", "dog", "hill", "sea"]
        lines = [
            {"text": " ".join(rng.choice(words) for _ in range(4)), "label": rng.choice("ab")}
            for _ in range(40)
        ]
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path
    path = tmp_path / "more.txt"
    path.write_text("The owl said hoo. The fox said yip. " * 100)
    return path


@pytest.mark.parametrize("task", ["text", "chat", "classify"])
def test_finetune_interrupted_then_resumed_equals_uninterrupted(
    base_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str
) -> None:
    data = str(task_data(task, tmp_path))
    args = [data, "--max-steps", "12", *FAST]
    full = json.loads(run("finetune", "tiny", *args, "--name", "full").stdout)
    undo = ctrl_c_when(monkeypatch, Batches if task == "text" else ExampleBatches, lambda n: n == 5)
    cut = json.loads(run("finetune", "tiny", *args, "--name", "cut").stdout)
    undo()
    assert cut["stopped"] == "interrupted" and cut["steps"] == 5
    resumed = json.loads(
        run("finetune", "tiny", data, "--name", "cut", "--resume", "--quiet", "--json").stdout
    )
    assert resumed["steps"] == 12 and resumed["stopped"] == "max_steps"
    assert resumed["val_loss"] == full["val_loss"]
    a = load_file(str(base_home / "models/full/model.safetensors"))
    b = load_file(str(base_home / "models/cut/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


BUDGET = 4.0
NO_WARMUP = ["--warmup-steps", "0", *FAST]


def check_budget(home: Path, name: str, cut: dict, resumed: dict, wall: float) -> None:
    assert cut["stopped"] == "interrupted" and cut["seconds"] >= BUDGET / 2 - 0.1
    assert resumed["stopped"] == "max_time" and resumed["steps"] > cut["steps"]
    # the total, not the resumed part, is the budget (a budget counted again from zero ends
    # past cut + BUDGET)
    assert BUDGET <= resumed["seconds"] < BUDGET + 1.0, (cut, resumed)
    history = json.loads((home / "models" / name / "train.json").read_text())["history"]
    assert history[-1]["step"] == resumed["steps"]
    # time goes on from where the cut run stopped: it never restarts in the history. The last
    # point is the last evaluation: when the final step is an --eval-every step, that one, made
    # just before the clock passed the budget (3.999 s of 4 once), and no extra one after it
    seconds = [h["seconds"] for h in history]
    assert seconds == sorted(seconds) and seconds[-1] > BUDGET - 0.5, history
    assert wall < BUDGET - cut["seconds"] + 2.0, (wall, cut)  # the resumed part: the rest
    # the time-based schedule reached its end: cooled down from the peak it held
    peak = max(h["lr"] for h in history)
    assert history[-1]["lr"] < 0.6 * peak, history


def after_seconds(seconds: float) -> Callable[[int], bool]:
    start: list[float] = []

    def when(calls: int) -> bool:
        start.append(time.perf_counter()) if not start else None
        return time.perf_counter() - start[0] >= seconds

    return when


def test_train_max_time_resumed_ends_at_the_total_budget(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [str(corpus), "--tokenizer", "char", "--name", "timed", "--warmup-steps", "0", "--json"]
    undo = ctrl_c_when(monkeypatch, Batches, after_seconds(BUDGET / 2))
    cut = json.loads(run("train", *args, "--max-time", f"{BUDGET}s", *TINY).stdout)
    undo()
    start = time.perf_counter()
    resumed = json.loads(run("train", *args, "--resume", "--quiet").stdout)
    check_budget(home, "timed", cut, resumed, time.perf_counter() - start)


def test_finetune_max_time_resumed_ends_at_the_total_budget(
    base_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(task_data("text", tmp_path))
    undo = ctrl_c_when(monkeypatch, Batches, after_seconds(BUDGET / 2))
    cut = json.loads(
        run("finetune", "tiny", data, "--name", "ft", "--max-time", f"{BUDGET}s", *NO_WARMUP).stdout
    )
    undo()
    # no budget flag on resume: the stored run's budget holds
    start = time.perf_counter()
    resumed = json.loads(
        run("finetune", "tiny", data, "--name", "ft", "--resume", "--quiet", "--json").stdout
    )
    check_budget(base_home, "ft", cut, resumed, time.perf_counter() - start)
