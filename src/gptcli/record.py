"""train.json, a model's run record: how it was made, its result and its loss curve.

`RunRecord` is what a run (or an import) says about itself; `train.json` is
`record | {"result": ..., "history": [...]}`. `RunDirectory` owns the directory of a run that
has not saved its first checkpoint yet: it claims it, writes live metrics into it after each
evaluation (so `gpt models show NAME` draws the curve of a run in progress), and discards it
when the run fails before any weights are saved. Checkpoints commit the whole directory
(`run.CheckpointWriter`), train.json included.

Readers take train.json as a dict (`LoadedModel.info`): old files stay readable as they are.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import GptError
from gptcli.store import ModelStore, read_json, write_json_atomic

RECORD_FILE = "train.json"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclass
class RunRecord:
    """The settled part of train.json; fields left None are not written."""

    kind: str  # train, finetune or import
    task: str | None = None  # finetune: text, chat or classify
    run: str | None = None  # the run's id: which process may write live metrics
    created: str = field(default_factory=timestamp)
    source: str | None = None  # import: the directory it came from
    config: dict[str, Any] | None = None  # the command's settings, as --print-config shows them
    base: dict[str, Any] | None = None  # finetune: {"name", "path"} of the base model
    train: dict[str, Any] | None = None  # TrainConfig.to_dict() (and the task's options)
    tokenizer: str | None = None
    data: dict[str, Any] | None = None
    tracking: dict[str, Any] | None = None  # the run's name and its ids in the trackers

    def to_dict(
        self, result: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The JSON of train.json, with `result` and `history` when given."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        if result is not None:
            values["result"] = result
        if history is not None:
            values["history"] = history
        return values


def continued(kind: str, stored: dict[str, Any], resume: bool, **fields: Any) -> RunRecord:
    """The record of a new run, or of a resumed one: its id, date and settings carried on."""
    if resume:
        fields["config"] = stored.get("config")
        fields["tracking"] = stored.get("tracking")
    return RunRecord(
        kind,
        run=stored.get("run") or new_run_id(),
        created=stored.get("created") or timestamp(),
        **fields,
    )


def checkpoint_result(
    steps: int,
    tokens: int,
    train_loss: float | None,
    val_loss: float | None,
    seconds: float,
    stopped: str,
) -> dict[str, Any]:
    """train.json's "result": where the run stands ("running" until it has stopped)."""
    return {
        "steps": steps,
        "tokens": tokens,
        "train_loss": train_loss,
        "val_loss": val_loss,
        "seconds": round(seconds, 3),
        "stopped": stopped or "running",
    }


class RunDirectory:
    """NAME/ while it is this run's: one it created for a new model, or one whose train.json
    carries this run's id (a resumed model, or a replaced one once its first checkpoint is in
    place). A model that `--force` will replace is left untouched until then."""

    def __init__(
        self, store: ModelStore, name: str, record: RunRecord, history: list[dict[str, Any]]
    ) -> None:
        self.directory = store.model_dir(name)
        self.record = record  # carries "run", this run's id
        self.history = history  # the loop's TrainState.history, appended to in place

    def claim(self) -> bool:
        """Makes the directory this run's if no model is stored there yet (a crashed run's
        leftover without weights counts as none). True when it did: the first checkpoint must
        then replace it."""
        if (self.directory / "config.json").is_file():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write({"steps": 0, "stopped": "running"})
        return True

    def owns(self) -> bool:
        path = self.directory / RECORD_FILE
        try:
            return path.is_file() and read_json(path).get("run") == self.record.run
        except (GptError, AttributeError):
            return False

    def record_live(self, stats: Any) -> None:
        """After an evaluation: the result so far, and the curve (`stats`: a loop.StepStats)."""
        if self.owns():
            self._write(
                checkpoint_result(
                    stats.step,
                    stats.tokens,
                    stats.train_loss,
                    stats.val_loss,
                    stats.seconds,
                    "",
                )
            )

    def _write(self, result: dict[str, Any]) -> None:
        write_json_atomic(self.directory / RECORD_FILE, self.record.to_dict(result, self.history))


KEPT_WHY = {
    "best": "the best validation loss",
    "best, the last": "the last, with the best validation loss",
    "last": "the last (--keep last)",
    "last, no validation split": "the last (no validation split)",
    "last, no better evaluation": "the last (no evaluation was better)",
}


def describe_kept(kept: dict[str, Any] | None) -> str:
    """Which checkpoint a run stored, and why (train.json's result["kept"])."""
    if not kept:
        return "kept the last step"
    why = KEPT_WHY.get(kept["why"], kept["why"])
    loss = f" ({kept['val_loss']:.4f})" if kept["why"] == "best" else ""
    return f"kept step {kept['step']}: {why}{loss}"


def read_record(directory: Path) -> dict[str, Any]:
    """A model's train.json as it is on disk ({} for a model without one, e.g. a Hugging Face
    directory)."""
    path = directory / RECORD_FILE
    return read_json(path) if path.is_file() else {}


def discard_unsaved(directory: Path) -> None:
    """Removes a run's directory if no model was saved in it (only its metrics are there)."""
    if directory.is_dir() and not (directory / "config.json").is_file():
        shutil.rmtree(directory, ignore_errors=True)
