"""--tracker wandb: a Weights & Biases run.

Honours wandb's environment (WANDB_MODE, WANDB_PROJECT, WANDB_DIR, WANDB_ENTITY, ...). It never
prompts: without an API key (WANDB_API_KEY or `wandb login`) and without WANDB_MODE, the run is
logged offline, said in one line with the `wandb sync` that uploads it. The project is
WANDB_PROJECT, else "gptcli". Each point is one `log` at its step; the settings are the run's
config; at the end the kept step and its validation loss go in the summary. A resumed run is
a new wandb run with the same name that starts with the earlier points (from metrics.jsonl,
up to the resumed step) and names the run it continues in its config, since wandb keeps
every step a killed run had logged past its checkpoint.
"""

from __future__ import annotations

import netrc
import os
from typing import Any
from urllib.parse import urlparse

from gptcli.errors import GptError
from gptcli.trackers.base import Point, RunInfo, missing_extra, scalars

DEFAULT_PROJECT = "gptcli"


def has_api_key() -> bool:
    """An API key in the environment or in ~/.netrc (where `wandb login` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker:
    name = "wandb"

    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, point: Point) -> None:
        values = {k: v for k, v in point.items() if k != "step" and v is not None}
        self.run.log(values, step=point["step"])

    def finish(self, result: dict[str, Any], status: str) -> None:
        kept = result.get("kept") or {}
        if kept:
            self.run.summary["kept_step"] = kept.get("step")
            self.run.summary["kept_val_loss"] = kept.get("val_loss")
        self.run.finish(exit_code=0 if status != "failed" else 1)

    def ids(self) -> dict[str, Any]:
        return {"wandb_run_id": self.run.id}


def open_tracker(run: RunInfo) -> WandbTracker:
    try:
        import wandb
    except ImportError:
        raise missing_extra("wandb", "wandb") from None
    offline = not os.environ.get("WANDB_MODE") and not has_api_key()
    config = scalars(run.params)
    if run.resumed_step is not None and run.ids.get("wandb_run_id"):
        config["resumed_from"] = run.ids["wandb_run_id"]
    try:
        started = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
            name=run.name,
            config=config,
            mode="offline" if offline else None,
            settings=wandb.Settings(console="off", silent=True),
        )
    except Exception as exc:
        raise GptError(f"wandb: cannot start a run ({exc})") from None
    tracker = WandbTracker(started)
    for point in run.earlier:
        tracker.log(point)
    where = getattr(started.settings, "sync_dir", None) or "./wandb"
    if offline:
        run.say(
            f"wandb: not logged in, so logging offline to {where} (upload it with "
            f"`wandb sync {where}`, or set WANDB_MODE)"
        )
    else:
        run.say(f"wandb: logging to {started.url or where}")
    return tracker
