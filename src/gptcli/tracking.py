"""What a run records as it trains: a point every --log-every steps and at each evaluation,
into metrics.jsonl (always) and the trackers asked for (--tracker).

A point: step, tokens seen, train_loss (the mean loss of the steps since the last point),
lr (and muon_lr), grad_norm (of the point's step, before clipping), tokens_per_second (since
the last point), seconds (training time, across resumes), and at evaluations val_loss (and
val_accuracy for classifiers). `Recorder` is the part of the run's observer that makes them
(`monitor.RunMonitor` calls it); `start_tracking` opens the record and the trackers for one
run (main process only), with the run's settings, shape and data as hyperparameters.

Knows the loop's StepStats by their fields, metrics.jsonl and the trackers' interface.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from gptcli.config import TrainConfig
from gptcli.metrics import MetricsLog, Point
from gptcli.record import RunRecord
from gptcli.trackers import RunInfo, Trackers, open_trackers

DEFAULT_TRACKER_DIR = "runs"
DEFAULT_LOG_EVERY = 10


class Recorder:
    """Turns the loop's StepStats into points; hands each to metrics.jsonl and the trackers."""

    def __init__(
        self, metrics: MetricsLog, trackers: Trackers | None, every: int, say: Any = print
    ) -> None:
        self.metrics = metrics
        self.trackers = trackers
        self.every = every
        self.say = say
        self.failed = False  # metrics.jsonl could not be written: said once
        self.seen = -1  # the last step whose loss is in the window
        self.losses: list[float] = []  # the steps' losses since the last point
        self.previous: Any = None  # the StepStats of the last point made in this process

    def _count(self, stats: Any) -> None:
        if stats.step > self.seen and stats.step_loss is not None and stats.step > 0:
            self.losses.append(stats.step_loss)
        self.seen = max(self.seen, stats.step)

    def on_step(self, stats: Any) -> None:
        self._count(stats)
        if stats.step % self.every == 0:
            self._point(stats, evaluated=False)

    def on_eval(self, stats: Any) -> None:
        self._count(stats)
        self._point(stats, evaluated=True)

    def _point(self, stats: Any, evaluated: bool) -> None:
        last = self.metrics.last
        if last is not None and last["step"] == stats.step:  # an evaluation after the point
            extra = {"val_loss": stats.val_loss, **stats.val_metrics} if evaluated else {}
            if extra:
                self._record({"step": stats.step, **extra})
            return
        point = make_point(stats, self.losses, self.previous, evaluated)
        self.losses, self.previous = [], stats
        self._record(point)

    def _record(self, point: Point) -> None:
        try:
            self.metrics.add(point)
        except OSError as exc:  # the checkpoint says more if the disk is full
            if not self.failed:
                self.say(f"warning: could not append to metrics.jsonl ({exc.strerror or exc})")
            self.failed = True
        if self.trackers is not None:
            self.trackers.log(point)


def make_point(stats: Any, losses: list[float], previous: Any, evaluated: bool) -> Point:
    """One point from the loop's StepStats (see the module's docstring)."""
    point: Point = {"step": stats.step, "tokens": stats.tokens, "seconds": round(stats.seconds, 3)}
    if losses:
        point["train_loss"] = sum(losses) / len(losses)
    if evaluated and stats.val_loss is not None:
        point["val_loss"] = stats.val_loss
        point.update(stats.val_metrics)
    if stats.step == 0:  # the starting evaluation: no step taken yet
        return point
    point.update(stats.lrs or {"lr": stats.lr})  # the rates the point's step used
    if stats.grad_norm is not None:
        point["grad_norm"] = float(stats.grad_norm)
    rate = stats.tokens_per_second
    if previous is not None and stats.seconds > previous.seconds:
        rate = (stats.tokens - previous.tokens) / (stats.seconds - previous.seconds)
    point["tokens_per_second"] = rate
    return point


def hyperparameters(record: RunRecord, model_config: dict[str, Any], params: int) -> dict[str, Any]:
    """The run's settings (train.json's "train"), the model's shape and parameter count, and the
    data described in a few numbers, as one flat dict."""
    values: dict[str, Any] = {"kind": record.kind}
    if record.task:
        values["task"] = record.task
    if record.base:
        values["base"] = record.base.get("name")
    values.update({k: v for k, v in (record.train or {}).items() if k not in ("tracker",)})
    values.update({f"model.{k}": v for k, v in model_config.items()})
    values["model.params"] = params
    values["tokenizer"] = record.tokenizer
    data = record.data or {}
    files = data.get("files", [])
    values["data.files"] = len(files)
    sizes = [f.get("bytes") for f in files if isinstance(f, dict)]
    if sizes and all(isinstance(b, int) for b in sizes):
        values["data.bytes"] = sum(sizes)
    for key, value in data.items():
        if key != "files" and isinstance(value, (int, float, str)):
            values[f"data.{key}"] = value
    return values


def run_name(cfg: TrainConfig, model: str, stored: dict[str, Any], resume: bool) -> str:
    """--run-name; else on --resume the name the run had; else the model's name, with -2, -3,
    ... when --tracker-dir already has a run of that name."""
    if cfg.run_name:
        return cfg.run_name
    if resume and stored.get("run_name"):
        return str(stored["run_name"])
    base = tracker_dir(cfg)
    name, n = model, 1
    while (base / name).exists():
        n += 1
        name = f"{model}-{n}"
    return name


def tracker_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.tracker_dir or DEFAULT_TRACKER_DIR).expanduser()


def safe_dir_name(name: str) -> str:
    """A run name as one directory name (no separators)."""
    return re.sub(r"[/\\\x00]", "-", name).strip() or "run"


@dataclasses.dataclass
class Tracking:
    """One run's record and trackers, as `start_tracking` opened them."""

    recorder: Recorder
    trackers: Trackers | None
    name: str

    def ids(self) -> dict[str, Any]:
        ids = self.trackers.ids() if self.trackers is not None else {}
        return {"run_name": self.name, **ids}

    def finish(self, result: dict[str, Any], status: str) -> None:
        if self.trackers is not None:
            self.trackers.finish(result, status)


def start_tracking(
    cfg: TrainConfig,
    model_name: str,
    directory: Path,
    live: bool,
    resumed_step: int | None,
    record: RunRecord,
    hyper: dict[str, Any],
    say: Any,
) -> Tracking:
    """metrics.jsonl in `directory` (appended to now when `live`), and the trackers of
    `cfg.tracker`; `record.tracking` (the ids of an earlier run, on --resume) is replaced by
    this run's."""
    metrics = MetricsLog(directory, live)
    earlier = metrics.start(resumed_step)
    stored = record.tracking or {}
    name = run_name(cfg, model_name, stored, resumed_step is not None)
    trackers = None
    if cfg.tracker:
        info = RunInfo(
            name=name,
            model=model_name,
            directory=tracker_dir(cfg) / safe_dir_name(name),
            params=hyper,
            resumed_step=resumed_step,
            earlier=earlier,
            ids=stored,
            say=say,
        )
        trackers = open_trackers(cfg.tracker, info)
    recorder = Recorder(metrics, trackers, cfg.log_every or DEFAULT_LOG_EVERY, say)
    tracking = Tracking(recorder, trackers, name)
    record.tracking = tracking.ids()
    return tracking
