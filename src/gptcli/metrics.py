"""metrics.jsonl: a run's record point by point, kept whatever the trackers.

One JSON object a line, one line a point (every --log-every steps and at each evaluation):
step, tokens, train_loss, lr, grad_norm, val_loss, ... (see `tracking.make_point`). The file
lives in the model's directory:

- while the run trains, each point is appended and flushed as it is made, so a killed process
  loses none (the directory must be this run's: one it created, or the model it resumes; a
  model that `--force` replaces is left untouched, and the points wait in memory for the
  first checkpoint);
- each checkpoint writes the points up to its step into the staged directory it commits
  (`write_into`), so a committed model carries its own record;
- `--resume` keeps the points up to the resumed step and drops any logged after it, so a run
  killed and resumed has each step exactly once.

Knows files and JSON only: nothing of torch, the loop or the trackers.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from gptcli.store import write_text_atomic

METRICS_FILE = "metrics.jsonl"

Point = dict[str, Any]


def encode(point: Point) -> str:
    """One line; a loss that is not finite is written as null (JSON has no NaN)."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in point.items()
    }
    return json.dumps(clean, ensure_ascii=False) + "\n"


def read_points(path: Path, up_to: int | None = None) -> list[Point]:
    """The points of a metrics.jsonl (those with step <= `up_to` when given); a torn last line
    (a process killed while writing it) is left out, as is a missing file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    points = []
    for line in text.splitlines():
        try:
            point = json.loads(line)
        except json.JSONDecodeError:
            continue
        ok = isinstance(point, dict) and isinstance(point.get("step"), int)
        if ok and (up_to is None or point["step"] <= up_to):
            points.append(point)
    return points


class MetricsLog:
    """The metrics.jsonl of one run, appended to as points come (main process only)."""

    def __init__(self, directory: Path, live: bool) -> None:
        self.path = directory / METRICS_FILE
        self.live = live  # the directory is this run's: write there now
        self.pending: list[str] = []  # lines not in the file (until the first checkpoint)
        self.last: Point | None = None
        self.last_line = ""

    def start(self, resumed_step: int | None) -> list[Point]:
        """A new run starts an empty file (a dead run's leftover goes); a resumed one keeps the
        points up to its step. Returns the points kept."""
        kept = [] if resumed_step is None else read_points(self.path, resumed_step)
        if self.live:
            write_text_atomic(self.path, "".join(encode(p) for p in kept))
        if kept:
            self.last, self.last_line = kept[-1], encode(kept[-1])
        return kept

    def add(self, point: Point) -> Point:
        """Appends a point; a second one for the step of the last merges into it (an
        evaluation at the end of a run, after that step's point was written). Returns the
        point as recorded."""
        if self.last is not None and point["step"] == self.last["step"]:
            point = {**self.last, **point}
            self._replace_last(encode(point))
        else:
            self._append(encode(point))
        self.last = point
        return point

    def _append(self, line: str) -> None:
        if self.live:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        else:
            self.pending.append(line)
        self.last_line = line

    def _replace_last(self, line: str) -> None:
        if not self.live:
            self.pending[-1:] = [line]
        else:
            size = len(self.last_line.encode("utf-8"))
            with open(self.path, "r+b") as f:
                f.seek(0, os.SEEK_END)
                f.truncate(max(0, f.tell() - size))
                f.seek(0, os.SEEK_END)
                f.write(line.encode("utf-8"))
        self.last_line = line

    def write_into(self, staging: Path, step: int) -> None:
        """A checkpoint's copy: the points up to `step`, into the directory it stages."""
        lines = [encode(p) for p in read_points(self.path, step)] if self.live else []
        lines += [line for line in self.pending if json.loads(line)["step"] <= step]
        write_text_atomic(staging / METRICS_FILE, "".join(lines))

    def committed(self) -> None:
        """The staged directory is in place: from now on the points go straight to its file."""
        self.live = True
        self.pending.clear()
