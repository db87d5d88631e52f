"""What every tracker is: a sink for a run's points, behind one small interface.

A tracker module (`to_csv`, `to_tensorboard`, `to_wandb`, `to_mlflow`) has one function,
`open_tracker(run: RunInfo) -> Tracker`, which imports its library (an optional extra) and
starts the tool's run. The run is fed points (`tracking.Recorder`) and ends with `finish`.
Trackers know the tool they write to, nothing of torch, the loop or the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gptcli.errors import GptError

Point = dict[str, Any]  # "step" and metric values: see tracking.make_point
# The keys a point may have, in the order tables show them (tracking.make_point makes them)
POINT_KEYS = (
    "step",
    "tokens",
    "seconds",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "lr",
    "muon_lr",
    "grad_norm",
    "tokens_per_second",
)


@dataclass
class RunInfo:
    """What a tracker is told of the run it watches, when it opens."""

    name: str  # the run's name in the tools (--run-name, or the model's name)
    model: str  # the model's name in the store
    directory: Path  # tensorboard and csv: --tracker-dir / name
    params: dict[str, Any]  # hyperparameters, flat: settings, model shape, data
    resumed_step: int | None = None  # --resume: the step the run goes on from
    earlier: list[Point] = field(default_factory=list)  # metrics.jsonl up to resumed_step
    ids: dict[str, Any] = field(default_factory=dict)  # each tool's ids, from the last time
    say: Callable[[str], None] = print  # one line to the person (stderr)


class Tracker(Protocol):
    name: str

    def log(self, point: Point) -> None:
        """One point; a second one for the same step carries only what it adds."""
        ...

    def finish(self, result: dict[str, Any], status: str) -> None:
        """The run ended (`status`: finished, interrupted or failed); `result`: the kept step
        and its validation loss, the last step and losses."""
        ...

    def ids(self) -> dict[str, Any]:
        """What a resumed run needs to find this tool's run again (JSON values)."""
        ...


def missing_extra(tool: str, extra: str) -> GptError:
    """The one-line hint for a tracker whose library is not installed."""
    return GptError(f'--tracker {tool} needs {extra}: pip install "gptcli[{extra}]"')


def scalars(params: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as the tools take them: numbers, text and booleans; lists as text;
    None left out."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out
