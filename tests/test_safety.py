"""Nothing lost, nothing executed, no tracebacks: kills, divergence, locks, full disks."""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, run, snapshot
from safetensors.torch import load_file

RUN = [
    "--tokenizer",
    "char",
    "--max-steps",
    "40",
    "--save-every",
    "10",
    "--name",
    "m",
    "--dropout",
    "0.1",
    "--json",
    *TINY,
]


def gpt(home: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTCLI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GPTCLI_FAULT", None)
    if fault:
        env["GPTCLI_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict:
    home = tmp_path_factory.mktemp("uninterrupted")
    proc = gpt(home, "train", str(corpus), *RUN)
    assert proc.returncode == 0, proc.stderr
    return {
        "summary": json.loads(proc.stdout),
        "weights": load_file(str(home / "models/m/model.safetensors")),
    }


def checkpoint_step(model_dir: Path) -> int:
    """The step of the checkpoint on disk (train.json's live metrics may run ahead of it)."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "train_state.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["state"])["step"]


# (fault point, the step of the last completed checkpoint after the kill; None: no model yet)
KILLS = [
    ("save:1", None),  # killed as the first checkpoint begins
    ("staged:2", 10),  # killed with the second checkpoint fully written, not yet in place
    ("swap:2", 10),  # killed between moving the old checkpoint aside and the new one in
    ("save:3", 20),  # killed after two completed checkpoints
]


@pytest.mark.parametrize(("fault", "kept"), KILLS)
def test_kill_9_then_resume_equals_uninterrupted(
    tmp_path: Path, corpus: Path, uninterrupted: dict, fault: str, kept: int | None
) -> None:
    home = tmp_path / "store"
    killed = gpt(home, "train", str(corpus), *RUN, fault=fault)
    assert killed.returncode == -9
    if kept is None:
        assert not (home / "models" / "m" / "config.json").exists()  # no model yet
        resumed = gpt(home, "train", str(corpus), *RUN)  # nothing to resume: start again
    else:
        loaded = gpt(home, "generate", "Once", "-m", "m", "-n", "5")
        assert loaded.returncode == 0, loaded.stderr
        assert checkpoint_step(home / "models/m") == kept
        resumed = gpt(home, "train", str(corpus), *RUN, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["steps"] == 40
    assert summary["val_loss"] == uninterrupted["summary"]["val_loss"]
    weights = load_file(str(home / "models/m/model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in uninterrupted["weights"].items())
    assert not list((home / "models").glob(".*"))  # no staging or swap leftovers


@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_sigterm_and_ctrl_c_save_at_the_step_then_resume_equals_uninterrupted(
    tmp_path: Path, corpus: Path, uninterrupted: dict, sig: str
) -> None:
    home = tmp_path / "store"
    stopped = gpt(home, "train", str(corpus), *RUN, fault=f"step:13:{sig}")  # during step 13
    assert stopped.returncode == 0, stopped.stderr
    summary = json.loads(stopped.stdout)
    assert summary["steps"] == 13 and summary["stopped"] == "interrupted"
    assert checkpoint_step(home / "models/m") == 13  # saved then, not at the last checkpoint (10)
    resumed = gpt(home, "train", str(corpus), *RUN, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["val_loss"] == uninterrupted["summary"]["val_loss"]
    weights = load_file(str(home / "models/m/model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in uninterrupted["weights"].items())


def wait_for_step(train_json: Path, step: int, proc: subprocess.Popen) -> None:
    """Until the run's live metrics (train.json) show an evaluation at `step` or later."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            history = json.loads(train_json.read_text())["history"]
            if history and history[-1]["step"] >= step:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"the run did not reach step {step}: {proc.poll()}")


def test_sigterm_from_outside_saves_and_resumes(home: Path, corpus: Path) -> None:
    far = [*RUN, "--max-steps", "100000", "--save-every", "100000", "--eval-every", "5"]
    env = {**os.environ, "GPTCLI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "train", str(corpus), *far],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_step(home / "models/m/train.json", 5, proc)
        proc.send_signal(signal.SIGTERM)  # as slurm, docker stop or systemd would
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["stopped"] == "interrupted" and summary["steps"] >= 5
    assert checkpoint_step(home / "models/m") == summary["steps"]
    more = str(summary["steps"] + 3)
    resumed = gpt(home, "train", str(corpus), *far, "--resume", "--max-steps", more)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["steps"] == summary["steps"] + 3


def test_sigterm_to_one_torchrun_rank_stops_every_rank_at_one_step(
    home: Path, corpus: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    far = [*RUN, "--max-steps", "100000", "--save-every", "100000", "--eval-every", "5",
           "--log-every", "2", "--tracker", "csv", "--tracker-dir", str(home / "runs")]  # fmt: skip
    env = {**os.environ, "GPTCLI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
         f"--master-port={port}", "--master-addr=127.0.0.1",
         "-m", "gptcli", "train", str(corpus), *far, "--device", "cpu"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_step(home / "models/m/train.json", 5, launcher)
        ranks = {}
        for child in Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = next(v for v in environ if v.startswith(b"RANK="))
            ranks[int(rank[5:])] = int(child)
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 must learn of it and agree
        out, err = launcher.communicate(timeout=120)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.startswith("{")]
    summary = json.loads(lines[0])
    assert summary["stopped"] == "interrupted" and summary["steps"] >= 5
    assert checkpoint_step(home / "models/m") == summary["steps"]
    # only rank 0 records: each point once, one tracker run
    from gptcli.metrics import read_points

    steps = [p["step"] for p in read_points(home / "models/m/metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == summary["steps"]
    assert [d.name for d in (home / "runs").iterdir()] == ["m"]
    rows = (home / "runs/m/metrics.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in rows] == steps


def poison_loss_after(monkeypatch: pytest.MonkeyPatch, bad_steps: set[int]) -> None:
    """Makes the training loss NaN on the given training batches (1-based)."""
    import gptcli.model
    from gptcli.data import Batches

    original_sample, original_loss = Batches.sample, gptcli.model.lm_loss
    state = {"batch": 0, "poison": False}

    def sample(self, generator=None):  # type: ignore[no-untyped-def]
        if generator is None:
            state["batch"] += 1
            state["poison"] = state["batch"] in bad_steps
        else:
            state["poison"] = False
        return original_sample(self, generator)

    def loss(logits, targets):  # type: ignore[no-untyped-def]
        value = original_loss(logits, targets)
        return value * float("nan") if state["poison"] else value

    monkeypatch.setattr(Batches, "sample", sample)
    monkeypatch.setattr(gptcli.model, "lm_loss", loss)


def test_divergence_stops_and_keeps_last_good_checkpoint(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        poison_loss_after(patch, {13})
        result = run("train", str(corpus), *RUN, "--save-every", "5", code=1)
    assert result.stderr.startswith("error: training diverged")
    assert "previous checkpoint (step 10) is kept" in result.stderr
    assert checkpoint_step(home / "models/m") == 10
    run("generate", "Once", "-m", "m", "-n", "3")


def test_skip_nonfinite_continues(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        poison_loss_after(patch, {5, 9})
        out = json.loads(run("train", str(corpus), *RUN, "--skip-nonfinite", "2").stdout)
    assert out["steps"] == 40
    with monkeypatch.context() as patch:
        poison_loss_after(patch, {5, 9})
        result = run("train", str(corpus), *RUN, "--name", "n", "--skip-nonfinite", "1", code=1)
    assert "diverged" in result.stderr


def test_disk_full_keeps_previous_checkpoint(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors.torch

    original = safetensors.torch.save_file
    calls = {"n": 0}

    def save_file(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # the weights of the second checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(safetensors.torch, "save_file", save_file)
        result = run("train", str(corpus), *RUN, code=1)
    assert "error: the disk is full: the checkpoint needs about" in result.stderr
    assert "previous checkpoint (step 10) is kept" in result.stderr
    assert checkpoint_step(home / "models/m") == 10
    assert not list((home / "models").glob(".*"))
    run("generate", "Once", "-m", "m", "-n", "3")


HOLDER = """
import sys
from pathlib import Path
from gptcli.store import ModelLock
ModelLock(Path(sys.argv[1]), sys.argv[2], "gpt train").acquire()
print("holding", flush=True)
sys.stdin.read()
"""


def hold_lock(models: Path, name: str) -> subprocess.Popen:
    """Another process holding the model's lock, through the store's own code, until killed."""
    import gptcli

    src = str(Path(gptcli.__file__).resolve().parents[1])
    proc = subprocess.Popen(
        [sys.executable, "-S", "-c", HOLDER, str(models), name],
        env={"PYTHONPATH": src},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "holding\n"
    return proc


def test_second_writer_is_refused_and_a_killed_holders_lock_is_taken(
    home: Path, corpus: Path
) -> None:
    models = home / "models"
    holder = hold_lock(models, "m")
    try:
        refused = gpt(home, "train", str(corpus), *RUN)
    finally:
        holder.kill()
        holder.wait()
    assert refused.returncode == 1
    assert re.fullmatch(
        rf"error: model 'm' is being written by process {holder.pid} \(gpt train, since "
        r"[0-9: -]+\); wait for it or stop it\n",
        refused.stderr,
    ), refused.stderr
    assert not (models / "m").exists()
    assert (models / ".m.lock").exists()  # the dead holder's file: no longer locked
    run("train", str(corpus), *RUN, "--max-steps", "2")
    assert (models / "m").is_dir() and not (models / ".m.lock").exists()  # released on exit


def test_finetune_respects_the_lock(trained_home: Path, tmp_path: Path) -> None:
    text = tmp_path / "t.txt"
    text.write_text("more text " * 100)
    holder = hold_lock(trained_home / "models", "tuned")
    try:
        result = run("finetune", "tiny", str(text), "--name", "tuned", code=1)
    finally:
        holder.kill()
        holder.wait()
        (trained_home / "models" / ".tuned.lock").unlink()  # the session's store stays as it was
    assert f"being written by process {holder.pid}" in result.stderr
    assert not (trained_home / "models" / "tuned").exists()


class Boom:
    """Unpickling this would create a file: proof that no pickle is ever loaded."""

    marker: Path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    ("victim", "content", "message"),
    [
        ("model.safetensors", b"\x00" * 10, "model.safetensors"),
        ("model.safetensors", "PICKLE", "model.safetensors"),
        ("model.safetensors", b'\xff\x00\x00\x00\x00\x00\x00\x00{"a": 1}', "model.safetensors"),
        ("config.json", b"{not json", "config.json"),
        ("config.json", b'{"n_embd": 30, "n_head": 4}', "divisible"),
        ("config.json", b'{"block_size": -1}', "block_size"),
        ("config.json", b'{"vocab_size": 1e30}', "vocab_size"),
        ("tokenizer.json", b"garbage", "tokenizer.json"),
        ("train.json", b"[1, 2", "train.json"),
    ],
)
def test_corrupted_store_files_are_named(
    trained: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    victim: str,
    content: bytes | str,
    message: str,
) -> None:
    import shutil

    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    marker = tmp_path / "executed"
    if content == "PICKLE":
        Boom.marker = marker
        content = pickle.dumps(Boom())
    path = home / "models" / "tiny" / victim
    if victim == "config.json" and content.startswith(b'{"'):
        config = json.loads(path.read_text())
        config.update(json.loads(content))
        content = json.dumps(config).encode()
    path.write_bytes(content)
    before = snapshot(home)
    for command in (["generate", "x", "-n", "2"], ["eval"]):
        result = run(*command, code=1)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert snapshot(home) == before
    assert not marker.exists()


def test_debug_shows_traceback(tmp_path: Path) -> None:
    plain = gpt(tmp_path, "generate", "x", "-m", "missing")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    env = {**os.environ, "GPTCLI_HOME": str(tmp_path), "GPTCLI_DEBUG": "1"}
    debug = subprocess.run(
        [sys.executable, "-m", "gptcli", "generate", "x", "-m", "missing"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode != 0 and "Traceback" in debug.stderr
