"""--tracker tensorboard: event files in RUN-DIR (`tensorboard --logdir runs`).

Each point's values are scalars under their own names (train_loss, val_loss, lr, ...), at
the point's step; the run's settings go in as hyperparameters (the HPARAMS tab) and as a
table of text. On --resume the writer purges from the resumed step on, so TensorBoard shows
each step once after a kill; a directory without events of the earlier run gets its points
from metrics.jsonl. Writes through torch's SummaryWriter (the tensorboard package, the
`tensorboard` extra).
"""

from __future__ import annotations

from typing import Any

from gptcli.trackers.base import Point, RunInfo, missing_extra, scalars


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, run: RunInfo, writer: Any) -> None:
        self.writer = writer
        self.params = scalars({"run": run.name, "model": run.model, **run.params})

    def start(self, run: RunInfo, fresh: bool) -> None:
        from torch.utils.tensorboard.summary import hparams

        if fresh:  # no events of the earlier run here: they come from metrics.jsonl
            for point in run.earlier:
                self._scalars(point)
        for summary in hparams(self.params, {"val_loss": 0.0, "train_loss": 0.0}):
            self.writer.file_writer.add_summary(summary)
        table = "\n".join(f"| {k} | {v} |" for k, v in self.params.items())
        self.writer.add_text("settings", "| setting | value |\n|---|---|\n" + table)
        self.writer.flush()

    def _scalars(self, point: Point) -> None:
        step = point["step"]
        for key, value in point.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def log(self, point: Point) -> None:
        self._scalars(point)
        self.writer.flush()

    def finish(self, result: dict[str, Any], status: str) -> None:
        kept = result.get("kept") or {}
        if kept.get("val_loss") is not None:
            self.writer.add_scalar("kept_val_loss", kept["val_loss"], kept["step"])
        lines = [f"status: {status}"] + [f"{k}: {v}" for k, v in result.items()]
        self.writer.add_text("result", "\n\n".join(lines))
        self.writer.close()

    def ids(self) -> dict[str, Any]:
        return {}


def open_tracker(run: RunInfo) -> TensorBoardTracker:
    try:
        import tensorboard  # noqa: F401  (torch's writer needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise missing_extra("tensorboard", "tensorboard") from None
    had_events = run.directory.is_dir() and any(run.directory.glob("events.out.tfevents.*"))
    continues = run.resumed_step is not None and had_events
    # TensorBoard drops the events of earlier files from the purge step on: after the resumed
    # step, or all of them when a new run reuses the directory
    purge = run.resumed_step + 1 if continues else (0 if had_events else None)
    writer = SummaryWriter(str(run.directory), purge_step=purge)
    tracker = TensorBoardTracker(run, writer)
    tracker.start(run, fresh=not continues)
    run.say(
        f"tensorboard: logging to {run.directory} (tensorboard --logdir {run.directory.parent})"
    )
    return tracker
