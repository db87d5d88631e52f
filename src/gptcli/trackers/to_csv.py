"""--tracker csv: RUN-DIR/metrics.csv, one row a point, and RUN-DIR/params.json.

The columns are `base.POINT_KEYS`; a cell is empty where the point has no value (the
validation loss between evaluations). Each row is flushed as it is written. On --resume the
file is written again from metrics.jsonl's points up to the resumed step, so a killed and
resumed run has each step once. Standard library only.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any

from gptcli.trackers.base import POINT_KEYS, Point, RunInfo

CSV_FILE = "metrics.csv"
PARAMS_FILE = "params.json"


def row(point: Point) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(
        ["" if point.get(k) is None else point[k] for k in POINT_KEYS]
    )
    return buffer.getvalue()


class CsvTracker:
    name = "csv"

    def __init__(self, run: RunInfo) -> None:
        self.directory = run.directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / CSV_FILE
        self.params: dict[str, Any] = {"run": run.name, "model": run.model, **run.params}
        self._write_params()
        self.last: Point | None = run.earlier[-1] if run.earlier else None
        self.last_row = row(self.last) if self.last else ""
        text = row(dict(zip(POINT_KEYS, POINT_KEYS, strict=True))) + "".join(
            row(p) for p in run.earlier
        )
        self.path.write_text(text, encoding="utf-8")

    def _write_params(self) -> None:
        text = json.dumps(self.params, indent=2, ensure_ascii=False, default=str) + "\n"
        (self.directory / PARAMS_FILE).write_text(text, encoding="utf-8")

    def log(self, point: Point) -> None:
        if self.last is not None and point["step"] == self.last["step"]:
            point = {**self.last, **point}
            line = row(point)
            with open(self.path, "r+b") as f:  # the step's row, completed
                f.seek(0, os.SEEK_END)
                f.truncate(f.tell() - len(self.last_row.encode("utf-8")))
                f.seek(0, os.SEEK_END)
                f.write(line.encode("utf-8"))
        else:
            line = row(point)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
        self.last, self.last_row = point, line

    def finish(self, result: dict[str, Any], status: str) -> None:
        self.params["result"] = {**result, "status": status}
        self._write_params()

    def ids(self) -> dict[str, Any]:
        return {}


def open_tracker(run: RunInfo) -> CsvTracker:
    tracker = CsvTracker(run)
    run.say(f"csv: logging to {tracker.path}")
    return tracker
