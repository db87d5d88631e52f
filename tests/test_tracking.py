"""metrics.jsonl and the trackers: every point on disk as it is made, each step once after a
kill and a resume, and what each tool reads back (with its own reader) equal to metrics.jsonl."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run

from gptcli.metrics import read_points

RUN = ["--tokenizer", "char", "--max-steps", "30", "--log-every", "5", "--eval-every", "10"]


def points(home: Path, name: str) -> list[dict]:
    return read_points(home / "models" / name / "metrics.jsonl")


def said(stderr: str, line: str) -> bool:
    """Whether stderr has the line, wherever the console wrapped it (a long path may be cut
    anywhere)."""
    return "".join(line.split()) in "".join(stderr.split())


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(directory: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def test_points_go_to_metrics_jsonl_csv_and_tensorboard(
    home: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    monkeypatch.chdir(tmp_path)  # ./runs is where they go by default
    result = run("train", str(corpus), "--name", "m", *TINY, *RUN,
                 "--tracker", "csv", "--tracker", "tensorboard")  # fmt: skip
    assert result.exit_code == 0
    record = points(home, "m")
    assert [p["step"] for p in record] == [0, 5, 10, 15, 20, 25, 30]
    assert [p["step"] for p in record if "val_loss" in p] == [0, 10, 20, 30]
    last = record[-1]
    assert {"tokens", "seconds", "train_loss", "lr", "muon_lr", "grad_norm"} <= set(last)
    assert last["tokens"] == 30 * 8 * 32 and last["grad_norm"] > 0
    assert record[1]["train_loss"] > last["train_loss"]  # it learns
    history = json.loads((home / "models/m/train.json").read_text())["history"]
    assert [(h["step"], h["val_loss"]) for h in history] == series(record, "val_loss")

    rows = csv_rows(tmp_path / "runs" / "m" / "metrics.csv")
    for key in ("train_loss", "val_loss", "lr", "grad_norm"):
        assert series(rows, key) == series(record, key)
    params = json.loads((tmp_path / "runs/m/params.json").read_text())
    assert params["max_steps"] == 30 and params["model.n_layer"] == 2
    assert params["model.params"] > 0 and params["data.train_tokens"] > 0
    assert params["result"]["kept"]["step"] == 30 and params["result"]["status"] == "finished"

    for key in ("train_loss", "val_loss", "lr"):
        read = tensorboard_scalars(tmp_path / "runs" / "m", key)
        expected = series(record, key)
        assert [s for s, _ in read] == [s for s, _ in expected]
        assert [v for _, v in read] == pytest.approx([v for _, v in expected], rel=1e-6)
    kept = tensorboard_scalars(tmp_path / "runs" / "m", "kept_val_loss")
    assert kept == [(30, pytest.approx(record[-1]["val_loss"], rel=1e-6))]
    # a second run of the same name does not mix its events into the first one's
    run("train", str(corpus), "--name", "m", *TINY, *RUN, "--tracker", "csv", "--force")
    assert (tmp_path / "runs" / "m-2" / "metrics.csv").is_file()


def gpt(home: Path, cwd: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTCLI_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GPTCLI_FAULT", None)
    if fault:
        env["GPTCLI_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


KILL_RUN = [*RUN, "--max-steps", "40", "--save-every", "10", "--tracker", "csv", *TINY]


def test_killed_and_resumed_run_has_every_step_once(tmp_path: Path, corpus: Path) -> None:
    with_tensorboard = []
    try:
        import tensorboard  # noqa: F401

        with_tensorboard = ["--tracker", "tensorboard"]
    except ImportError:
        pass
    args = ["train", str(corpus), "--name", "m", *KILL_RUN, *with_tensorboard]
    # killed (SIGKILL) during step 28: the checkpoint of step 20 is kept, the point of step 25
    # is on disk past it
    killed = gpt(tmp_path, tmp_path, *args, fault="step:28")
    assert killed.returncode == -9
    live = points(tmp_path, "m")
    assert [p["step"] for p in live] == [0, 5, 10, 15, 20, 25]  # flushed as they came
    resumed = gpt(tmp_path, tmp_path, *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr

    record = points(tmp_path, "m")
    assert [p["step"] for p in record] == [0, 5, 10, 15, 20, 25, 30, 35, 40]  # each step once
    # the resumed run made step 25 again, exactly (resume is exact): its point replaced the
    # killed run's
    for key in ("train_loss", "grad_norm", "lr", "tokens"):
        assert [(s, v) for s, v in series(record, key) if s <= 25] == series(live, key)

    rows = csv_rows(tmp_path / "runs" / "m" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [p["step"] for p in record]
    assert series(rows, "train_loss") == series(record, "train_loss")
    if with_tensorboard:
        read = tensorboard_scalars(tmp_path / "runs" / "m", "train_loss")
        assert [s for s, _ in read] == [s for s, _ in series(record, "train_loss")]
        assert [v for _, v in read] == pytest.approx(
            [v for _, v in series(record, "train_loss")], rel=1e-6
        )


def test_a_failing_tracker_warns_once_and_the_run_goes_on(
    home: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcli.trackers.to_csv import CsvTracker

    calls = {"n": 0}

    def full_disk(self: CsvTracker, point: dict) -> None:
        calls["n"] += 1
        if calls["n"] >= 3:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(CsvTracker, "log", full_disk)
    result = run("train", str(corpus), "--name", "m", *TINY[:-1], *RUN,
                 "--tracker", "csv", "--tracker-dir", str(tmp_path / "runs"))  # fmt: skip
    assert result.stderr.count("warning:") == 1
    assert said(
        result.stderr,
        "warning: the csv tracker failed to log ([Errno 28] No space left on device); "
        "training goes on without it (metrics.jsonl keeps every point)",
    )
    assert calls["n"] == 3
    assert json.loads((home / "models/m/train.json").read_text())["result"]["steps"] == 30
    assert [p["step"] for p in points(home, "m")][-1] == 30


@pytest.mark.parametrize("tool", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_library_says_how_to_install_it(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, tool: str
) -> None:
    monkeypatch.setitem(sys.modules, tool, None)  # as if it were not installed
    result = run("train", str(corpus), "--name", "m", *TINY, *RUN, "--tracker", tool, code=1)
    assert result.stderr == (
        f'error: --tracker {tool} needs {tool}: pip install "gptcli[{tool}]"\n'
    )
    assert not (home / "models" / "m").exists()


def test_tracker_flags_are_checked_and_not_needed_to_resume(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    result = run("train", str(corpus), "--tracker", "tensorbored", code=1)
    assert result.stderr == "error: --tracker must be one of tensorboard, wandb, mlflow, csv\n"
    result = run("train", str(corpus), "--log-every", "0", code=1)
    assert result.stderr == "error: --log-every must be at least 1\n"
    runs = str(tmp_path / "runs")
    run("train", str(corpus), "--name", "m", *TINY, *RUN)
    # a resumed run may log where the first did not, under the name it had, every 5 steps
    # as before
    run("train", str(corpus), "--name", "m", "--resume", "--max-steps", "40", "--quiet",
        "--tracker", "csv", "--tracker-dir", runs)  # fmt: skip
    rows = csv_rows(tmp_path / "runs" / "m" / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [p["step"] for p in points(home, "m")]
    assert [int(r["step"]) for r in rows][-3:] == [30, 35, 40]
    stored = json.loads((home / "models/m/train.json").read_text())
    assert stored["tracking"] == {"run_name": "m"}
    assert stored["train"]["tracker"] == ["csv"]  # and a later --resume goes on logging there
    run("train", str(corpus), "--name", "m", "--resume", "--max-steps", "50", "--quiet",
        "--log-every", "10", "--tracker-dir", runs)  # fmt: skip
    rows = csv_rows(tmp_path / "runs" / "m" / "metrics.csv")
    assert [int(r["step"]) for r in rows][-3:] == [35, 40, 50]


def test_mlflow_reads_back_the_points_and_a_resumed_run_has_each_step_once(
    home: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("mlflow")
    from mlflow import MlflowClient
    from test_resume import ctrl_c_when

    from gptcli.data import Batches

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)
    args = ["train", str(corpus), "--name", "m", *TINY[:-1], *RUN, "--tracker", "mlflow"]
    undo = ctrl_c_when(monkeypatch, Batches, lambda n: n == 13)  # stops after step 13
    cut = run(*args, "--json")
    undo()
    assert json.loads(cut.stdout)["steps"] == 13
    assert said(cut.stderr, f"mlflow: logging to {uri}, run ")
    run(*args, "--resume")
    record = points(home, "m")
    assert [p["step"] for p in record] == [0, 5, 10, 13, 15, 20, 25, 30]

    client = MlflowClient(uri)
    first, resumed = sorted(client.search_runs(["0"]), key=lambda r: r.info.start_time)
    assert first.info.status == "KILLED" and resumed.info.status == "FINISHED"
    assert resumed.data.tags["gptcli.resumed_from"] == first.info.run_id
    assert resumed.info.run_name == first.info.run_name == "m"
    for key in ("train_loss", "val_loss", "lr", "grad_norm"):
        history = client.get_metric_history(resumed.info.run_id, key)
        assert [(m.step, m.value) for m in history] == series(record, key)
    assert resumed.data.params["max_steps"] == "30" and resumed.data.params["model.n_layer"] == "2"
    kept = client.get_metric_history(resumed.info.run_id, "kept_val_loss")
    assert [(m.step, m.value) for m in kept] == [(30, record[-1]["val_loss"])]
    assert resumed.data.tags["gptcli.kept_step"] == "30"


def wandb_records(path: Path) -> list:
    """The records of a .wandb file, decoded with the schema wandb ships (wandb.proto). The
    file is a LevelDB-style log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks
    of chunks, each with a 7-byte header (CRC, length, type: full, first, middle or last).
    wandb 0.31 ships no Python reader for it any more, only the schema."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full, last
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def item_key(item: object) -> str:
    """A wandb history, config or summary item's key (plain, or nested as a path)."""
    return item.key or "/".join(item.nested_key)  # type: ignore[attr-defined]


def test_wandb_runs_offline_without_a_login_and_reads_back(
    home: Path, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    result = run("train", str(corpus), "--name", "m", *TINY[:-1], *RUN, "--tracker", "wandb",
                 "--run-name", "first try")  # fmt: skip
    (directory,) = tmp_path.glob("wandb/offline-run-*")
    assert said(
        result.stderr,
        f"wandb: not logged in, so logging offline to {directory} (upload it with "
        f"`wandb sync {directory}`, or set WANDB_MODE)",
    )
    (run_file,) = directory.glob("run-*.wandb")
    records = wandb_records(run_file)
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = record.history.item
            rows.append({item_key(item): json.loads(item.value_json) for item in items})
    rows = [{**r, "step": r["_step"]} for r in rows]
    record = points(home, "m")
    assert [r["step"] for r in rows] == [p["step"] for p in record]  # each step once
    for key in ("train_loss", "val_loss", "lr", "grad_norm", "tokens"):
        assert series(rows, key) == series(record, key)
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.display_name == "first try" and started.project == "gptcli"
    config = {  # as the run started, and as updated since
        item_key(item): json.loads(item.value_json)
        for r in records
        for item in (
            r.run.config.update
            if r.WhichOneof("record_type") == "run"
            else r.config.update
            if r.WhichOneof("record_type") == "config"
            else []
        )
        if not item_key(item).startswith("_")
    }
    assert config["max_steps"] == 30 and config["model.params"] > 0
    summary = {
        item_key(item): json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for item in r.summary.update
    }
    assert summary["kept_step"] == 30 and summary["kept_val_loss"] == record[-1]["val_loss"]


def test_models_show_draws_every_point_and_compare_shows_what_differs(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    run("train", str(corpus), "--name", "a", *TINY, *RUN)
    run("train", str(corpus), "--name", "b", *TINY, *RUN, "--lr", "0.01", "--log-every", "3")
    shown = json.loads(run("models", "show", "a", "--json").stdout)
    assert shown["points"] == points(home, "a")
    from gptcli.cli.compare import loss_series

    train, val = loss_series(shown)
    assert [s for s, _ in train] == [5, 10, 15, 20, 25, 30]  # every point, not the evaluations
    assert [s for s, _ in val] == [0, 10, 20, 30]

    compared = json.loads(run("models", "show", "a", "b", "--compare", "--json").stdout)
    assert [m["name"] for m in compared["models"]] == ["a", "b"]
    assert compared["differ"] == {"lr": [0.003, 0.01]}  # not --log-every: how it was watched
    text = run("models", "show", "a", "b", "--compare").stdout
    assert "settings that differ" in text and "0.003" in text and "0.01" in text
    lines = text.splitlines()
    titles = [line for line in lines if line.split() == ["a", "b"] and line.startswith("a")]
    assert len(titles) == 1  # the charts' titles, on one line
    assert sum(line.count("┤") == 2 for line in lines) >= 3  # the two charts side by side
    assert f"{compared['models'][1]['val_loss']:.4f}" in text
    picture = tmp_path / "both.png"
    run("models", "show", "a", "b", "--compare", "--plot", str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        run("models", "show", "a", "b", code=2)
        .stderr.splitlines()[-1]
        .startswith("error: one model at a time, or --compare")
    )
    assert "--compare needs two or more" in run("models", "show", "a", "--compare", code=2).stderr


def test_finetune_logs_too_and_a_classifier_its_accuracy(base_home: Path, tmp_path: Path) -> None:
    from test_resume import task_data

    data = str(task_data("classify", tmp_path))
    run("finetune", "tiny", data, "--name", "c", "--max-steps", "8", "--eval-every", "4",
        "--log-every", "2", "--batch-size", "4", "--quiet", "--tracker", "csv",
        "--tracker-dir", str(tmp_path / "runs"))  # fmt: skip
    record = points(base_home, "c")
    assert [p["step"] for p in record] == [0, 2, 4, 6, 8]
    accuracy = [p["val_accuracy"] for p in record if "val_loss" in p]
    assert len(accuracy) == 3 and all(0.0 <= a <= 1.0 for a in accuracy)
    rows = csv_rows(tmp_path / "runs" / "c" / "metrics.csv")
    assert series(rows, "val_accuracy") == series(record, "val_accuracy")
    params = json.loads((tmp_path / "runs/c/params.json").read_text())
    assert params["kind"] == "finetune" and params["task"] == "classify"
    assert params["base"] == "tiny"
