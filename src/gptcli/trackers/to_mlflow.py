"""--tracker mlflow: a run in MLflow's tracking store, through `MlflowClient`.

Honours MLflow's environment: MLFLOW_TRACKING_URI (unset: MLflow's own default, said in one
line), MLFLOW_EXPERIMENT_NAME or MLFLOW_EXPERIMENT_ID (unset: the default experiment). Each
point's values are metrics at its step; the settings are params; at the end the kept step and
its validation loss are metrics, and the run's status is set. A resumed run is a new MLflow
run with the same name that starts with the earlier points (from metrics.jsonl, up to the
resumed step) and names the run it continues (tag gptcli.resumed_from), since MLflow cannot
take back points logged after the checkpoint by a run that was killed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from gptcli.errors import GptError
from gptcli.trackers.base import Point, RunInfo, missing_extra, scalars

BATCH = 1000  # MLflow's limit of metrics per log_batch call
PARAM_CHARS = 6000  # and of a param value's length
STATUS = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class MlflowTracker:
    name = "mlflow"

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log(self, point: Point) -> None:
        self._metrics([point])

    def _metrics(self, points: list[Point]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, point["step"])
            for point in points
            for key, value in point.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + BATCH])

    def finish(self, result: dict[str, Any], status: str) -> None:
        kept = result.get("kept") or {}
        if kept.get("val_loss") is not None:
            self.client.log_metric(
                self.run_id, "kept_val_loss", kept["val_loss"], step=kept["step"]
            )
        if kept.get("step") is not None:
            self.client.set_tag(self.run_id, "gptcli.kept_step", str(kept["step"]))
        self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))

    def ids(self) -> dict[str, Any]:
        return {"mlflow_run_id": self.run_id}


def experiment_id(client: Any) -> str:
    """MLFLOW_EXPERIMENT_ID, or the experiment MLFLOW_EXPERIMENT_NAME names (made if new), or
    MLflow's default experiment."""
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if not name:
        return "0"
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else client.create_experiment(name)


def open_tracker(run: RunInfo) -> MlflowTracker:
    try:
        import mlflow
        from mlflow.entities import Param
    except ImportError:
        raise missing_extra("mlflow", "mlflow") from None
    uri = mlflow.get_tracking_uri()
    try:
        client = mlflow.MlflowClient(uri)
        tags = {"gptcli.model": run.model}
        earlier = run.ids.get("mlflow_run_id")
        if run.resumed_step is not None and earlier:
            tags["gptcli.resumed_from"] = earlier
        created = client.create_run(experiment_id(client), run_name=run.name, tags=tags)
    except Exception as exc:
        raise GptError(f"mlflow: cannot start a run at {uri} ({exc})") from None
    run_id = created.info.run_id
    params = [Param(k, str(v)[:PARAM_CHARS]) for k, v in scalars(run.params).items()]
    for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
        client.log_batch(run_id, params=params[start : start + 100])
    tracker = MlflowTracker(client, run_id)
    tracker._metrics(run.earlier)
    run.say(f"mlflow: logging to {uri}, run {run_id}")
    return tracker
