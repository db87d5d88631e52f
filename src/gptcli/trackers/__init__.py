"""The trackers a run can log to (--tracker): TensorBoard, Weights & Biases, MLflow, CSV.

`open_trackers(names, run)` opens each one asked for, importing its module (and so its
library) only then: `import gptcli` and `gpt --help` import none of them. `Trackers` fans a
point out to all of them; one that fails mid-run (disk full, network gone) is dropped with a
single warning and the training goes on. The tool modules each own one library; this package
knows their names and the interface in `base.py`, nothing of the loop.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from gptcli.trackers.base import Point, RunInfo, Tracker, missing_extra

MODULES = {
    "tensorboard": "gptcli.trackers.to_tensorboard",
    "wandb": "gptcli.trackers.to_wandb",
    "mlflow": "gptcli.trackers.to_mlflow",
    "csv": "gptcli.trackers.to_csv",
}


class Trackers:
    """The open trackers of a run, each one kept only while it works."""

    def __init__(self, trackers: list[Tracker], run: RunInfo) -> None:
        self.trackers = trackers
        self.run = run
        self.failed: dict[str, str] = {}

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # a tool's failure must never stop the training
                self.trackers.remove(tracker)
                why = self.failed[tracker.name] = str(exc) or type(exc).__name__
                self.run.say(
                    f"warning: the {tracker.name} tracker failed {what} ({why}); "
                    "training goes on without it (metrics.jsonl keeps every point)"
                )

    def log(self, point: Point) -> None:
        self._each("to log", lambda t: t.log(point))

    def finish(self, result: dict[str, Any], status: str) -> None:
        self._each("to finish", lambda t: t.finish(result, status))
        self.trackers = []

    def ids(self) -> dict[str, Any]:
        ids: dict[str, Any] = {}
        for tracker in self.trackers:
            ids.update(tracker.ids())
        return ids


LIBRARIES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # and extras


def check_installed(names: list[str]) -> None:
    """Refuses, before anything is read or written, a tracker whose library is missing (found
    without importing it)."""
    for name in names:
        library = LIBRARIES.get(name)
        if library is None:
            continue
        try:
            found = importlib.util.find_spec(library) is not None
        except ValueError:  # in sys.modules as None: blocked
            found = False
        if not found:
            raise missing_extra(name, library)


def open_trackers(names: list[str], run: RunInfo) -> Trackers:
    """Opens the trackers named (in order, each once); a missing library or a tool that cannot
    start is a GptError, before the training begins."""
    opened: list[Tracker] = []
    try:
        for name in dict.fromkeys(names):
            module = importlib.import_module(MODULES[name])
            opened.append(module.open_tracker(run))
    except BaseException:
        Trackers(opened, run).finish({}, "failed")
        raise
    return Trackers(opened, run)


__all__ = ["MODULES", "Point", "RunInfo", "Tracker", "Trackers", "check_installed", "open_trackers"]
