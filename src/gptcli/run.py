"""One training run, from request to stored model: the pipeline `train` and `finetune` share.

    lock -> check -> device -> prepare (the job's) -> optimizers -> resume -> record, monitor,
         tracking -> loop (checkpoints through CheckpointWriter) -> trackers finish
         -> the new default model

A job (`pretrain.TrainRequest`, `finetune.FinetuneRequest`) says what to check and builds the
model, the tokenizer and the batches; everything else happens here, once. A run-level feature
(a checkpoint rule, keep-best, a new summary field) goes in this module.

Keep-best (`--keep best`, the default): model.safetensors holds the weights of the evaluation
with the lowest validation loss; when that is not the latest step, train_state.safetensors also
holds the latest weights, so `--resume` continues the run exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from gptcli.checkpoint import (
    check_resumable,
    load_train_state,
    save_train_state,
    stored_weights,
    write_model_dir,
)
from gptcli.config import TRACKING, TrainConfig
from gptcli.errors import GptError
from gptcli.hardware import keep_freed_memory
from gptcli.loop import (
    BatchSource,
    Diverged,
    TrainObserver,
    TrainState,
    make_optimizers,
    train_model,
)
from gptcli.metrics import MetricsLog
from gptcli.model import GPT
from gptcli.monitor import monitor_for
from gptcli.record import RunDirectory, RunRecord, checkpoint_result, discard_unsaved
from gptcli.runtime import Distributed, pick_device
from gptcli.store import (
    ModelLock,
    ModelStore,
    check_name,
    disk_full_message,
    fault_point,
    is_disk_full,
    write_text_atomic,
)
from gptcli.tokenizer import Tokenizer
from gptcli.trackers import check_installed
from gptcli.tracking import Tracking, hyperparameters, start_tracking

Log = Callable[[str], None]


def silent(message: str) -> None:
    """The default log: says nothing."""


@dataclass
class Prepared:
    """A run ready for the loop, as its job built it."""

    model: GPT
    tokenizer: Tokenizer
    train: BatchSource
    val: BatchSource | None
    cfg: TrainConfig  # the loop's settings
    record: RunRecord  # train.json, less the result and the history
    sample_prompt: str | None = None  # samples while training; None for none
    extra_files: dict[str, str] = field(default_factory=dict)  # more files of the model
    summary: dict[str, Any] = field(default_factory=dict)  # more keys of the run's summary


class Job(Protocol):
    """What `execute` needs of a request."""

    command: ClassVar[str]  # for the lock: "gpt train"
    name: str
    cfg: TrainConfig  # as given (on resume, the budget flags)
    force: bool
    resume: bool

    def check(self, store: ModelStore) -> None:
        """Refuses a bad request before anything is read or written."""
        ...

    def prepare(
        self, store: ModelStore, device: torch.device, dist: Distributed, log: Log
    ) -> Prepared: ...


@contextlib.contextmanager
def model_lock(store: ModelStore, name: str, command: str) -> Iterator[None]:
    """The writer's lock on a model name (rank 0 only under torchrun); clears stale staging."""
    if not Distributed().is_main:
        yield
        return
    with ModelLock(store.models_dir, check_name(name), command):
        for leftover in store.models_dir.glob(f".{name}.*.staging"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a run that was killed
        yield


def check_target(store: ModelStore, name: str, force: bool, resume: bool) -> None:
    """NAME must exist to be resumed, and must not exist unless replaced or resumed."""
    exists = store.exists(name)
    if resume and not exists:
        raise GptError(f"no model named {name!r} to resume (drop --resume to start one)")
    if resume:
        check_resumable(store.model_dir(name))  # before any data is read
    if exists and not (force or resume):
        raise GptError(
            f"a model named {name!r} already exists "
            "(use --resume to continue it, or --force to replace it)"
        )


def budget_overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The budget flags given for a resumed run (the rest comes from the stored run)."""
    return {
        k: v for k, v in (("max_steps", cfg.max_steps), ("max_time", cfg.max_time)) if v is not None
    }


def resumed_config(stored: dict[str, Any], given: TrainConfig) -> TrainConfig:
    """A resumed run's settings: the stored run's (train.json's "train"), with the budget flags
    and the tracking flags (--tracker, --log-every, ...) given now."""
    tracking = {k: getattr(given, k) for k in TRACKING if getattr(given, k) is not None}
    return TrainConfig.from_dict({**stored, **budget_overrides(given), **tracking})


def execute(
    job: Job, store: ModelStore, observer: TrainObserver | None = None, log: Log = silent
) -> dict[str, Any]:
    """Runs a job under its model's lock; returns the run's summary (name, path, result)."""
    with model_lock(store, job.name, job.command):
        dist = Distributed()
        if not dist.is_main:
            log = silent
        job.check(store)
        if dist.is_main:
            check_installed(job.cfg.tracker or [])
        device = dist.setup(pick_device(job.cfg.device))
        if device.type == "cpu":
            keep_freed_memory()
        run = job.prepare(store, device, dist, log)
        target = store.model_dir(job.name)
        optimizers = make_optimizers(run.model, run.cfg, device)
        state = TrainState()
        kept = None  # on resume: the stored model's weights, the kept checkpoint's
        if job.resume:
            kept = stored_weights(run.model)
            saved = load_train_state(
                target / "train_state.safetensors", optimizers, run.train.generator, run.model
            )
            state = TrainState(**saved)
            if state.stopped in ("max_steps", "max_time") and not budget_overrides(job.cfg):
                log("that run had finished; give a larger --max-steps or --max-time to go on")
            log(f"resuming at step {state.step}")
        claimed = False  # live metrics in train.json and samples: see gptcli.record, monitor
        tracking = None  # metrics.jsonl and the trackers: see gptcli.tracking
        if dist.is_main:
            run_dir = RunDirectory(store, job.name, run.record, state.history)
            claimed = run_dir.claim()
            sampling = None
            if run.sample_prompt is not None:
                sampling = (run.model, run.tokenizer, run.sample_prompt)
            try:
                tracking = open_tracking(job, run, target, claimed, state.step, log)
            except BaseException:
                if claimed:
                    discard_unsaved(target)
                raise
            observer = monitor_for(observer, run_dir, run.cfg, sampling, tracking.recorder)
        saver = CheckpointWriter(
            store,
            job.name,
            run.tokenizer,
            run.record,
            replace=job.force or job.resume or claimed,
            extra_files=run.extra_files,
            keep_train_state=run.cfg.train_state,
        )
        if kept is not None and state.best_step not in (None, state.step):
            saver.best = kept
        saver.metrics = tracking.recorder.metrics if tracking is not None else None
        try:
            run_and_store(
                run.model,
                run.train,
                run.val,
                run.cfg,
                observer,
                state,
                optimizers,
                saver,
                dist,
                discard=target if claimed else None,
            )
        except BaseException:
            if tracking is not None:
                tracking.finish(saver.last, "failed")
            raise
        if tracking is not None:
            finished = state.stopped in ("max_steps", "max_time")
            tracking.finish(saver.last, "finished" if finished else "interrupted")
        return {"name": job.name, "path": str(target), **run.summary, **saver.last}


def open_tracking(
    job: Job, run: Prepared, target: Path, claimed: bool, step: int, log: Log
) -> Tracking:
    """metrics.jsonl and the trackers of one run (main process), with its hyperparameters."""
    hyper = hyperparameters(run.record, run.model.config.to_dict(), run.model.num_params())
    return start_tracking(
        run.cfg,
        job.name,
        target,
        live=claimed or job.resume,
        resumed_step=step if job.resume else None,
        record=run.record,
        hyper=hyper,
        say=log,
    )


class CheckpointWriter:
    """Writes the whole model directory (weights, state, train.json) and swaps it into place."""

    def __init__(
        self,
        store: ModelStore,
        name: str,
        tokenizer: Tokenizer,
        record: RunRecord,
        replace: bool,
        extra_files: dict[str, str] | None = None,
        keep_train_state: bool = True,
    ) -> None:
        self.store, self.name, self.tokenizer, self.record = store, name, tokenizer, record
        self.replace = replace
        self.keep_train_state = keep_train_state  # False: dropped once the run has ended
        self.extra_files = extra_files or {}
        self.last: dict[str, Any] = {}
        self.best: dict[str, torch.Tensor] | None = None  # --keep best: the best weights yet
        self.metrics: MetricsLog | None = None  # metrics.jsonl: each checkpoint carries it

    def remember(self, model: GPT) -> None:
        """The loop's `on_best`: this evaluation's weights are the best of the run so far."""
        self.best = stored_weights(model)

    def save(
        self,
        model: GPT,
        optimizers: list[torch.optim.Optimizer],
        state: TrainState,
        batches: BatchSource,
    ) -> None:
        result = checkpoint_result(
            state.step,
            state.history[-1]["tokens"],
            state.train_loss,
            state.val_loss,
            state.seconds,
            state.stopped,
        )
        result["kept"] = kept_checkpoint(state, self.record.train or {})
        earlier = state.best_step is not None and state.best_step != state.step
        weights = self.best if earlier else None
        info = self.record.to_dict(result, state.history)
        # a finished run may drop its optimizer state; an interrupted one keeps it to resume
        drop_state = not self.keep_train_state and state.stopped in ("max_steps", "max_time")
        if drop_state:
            info["train_state"] = "dropped"
        fault_point("save")
        try:
            target = self.store.model_dir(self.name)
            with self.store.staged(target, force=self.replace) as staging:
                write_model_dir(staging, model, self.tokenizer, info, weights)
                for filename, text in self.extra_files.items():
                    write_text_atomic(staging / filename, text)
                if self.metrics is not None:
                    self.metrics.write_into(staging, state.step)
                if not drop_state:
                    save_train_state(
                        staging / "train_state.safetensors",
                        optimizers,
                        dataclasses.asdict(state),
                        batches.generator,
                        model.weights() if weights is not None else None,
                    )
                fault_point("staged")
        except Exception as exc:  # the staging directory is gone by now: what is free is free
            if is_disk_full(exc):
                needed = checkpoint_bytes(model, optimizers)
                full = disk_full_message(self.store.models_dir, needed, "the checkpoint")
                raise GptError(f"{full}; step {state.step} was not saved, {self.kept()}") from None
            if isinstance(exc, OSError):
                raise GptError(
                    f"could not save the checkpoint at step {state.step} "
                    f"({exc.strerror or exc}); {self.kept()}"
                ) from None
            raise
        self.replace = True  # from now on we replace our own checkpoint
        if self.metrics is not None:
            self.metrics.committed()
        self.last = result

    def kept(self) -> str:
        """What is on disk now, for messages after a failure."""
        if self.last:
            return f"the previous checkpoint (step {self.last['steps']}) is kept"
        return "no checkpoint had been saved yet"


def kept_checkpoint(state: TrainState, train: dict[str, Any]) -> dict[str, Any]:
    """train.json's result["kept"]: which step model.safetensors holds, and why."""
    if state.best_step is not None:
        why = "best" if state.best_step != state.step else "best, the last"
        return {"step": state.best_step, "val_loss": state.best_val_loss, "why": why}
    if train.get("keep", "best") == "last":
        why = "last"
    elif state.val_loss is None:
        why = "last, no validation split"
    else:
        why = "last, no better evaluation"
    return {"step": state.step, "val_loss": state.val_loss, "why": why}


def checkpoint_bytes(model: GPT, optimizers: list[torch.optim.Optimizer]) -> int:
    """About what a checkpoint takes on disk: weights and optimizer state."""
    tensors = [*model.weights().values()]
    for opt in optimizers:
        tensors += [v for entry in opt.state.values() for v in entry.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_and_store(
    model: GPT,
    train: BatchSource,
    val: BatchSource | None,
    cfg: TrainConfig,
    observer: TrainObserver | None,
    state: TrainState,
    optimizers: list[torch.optim.Optimizer],
    saver: CheckpointWriter,
    dist: Distributed,
    discard: Path | None = None,
) -> None:
    """The loop, checkpointing through `saver`; then the model becomes the store's default.

    A divergence says which checkpoint survives. `discard`: a directory this run created for
    its live metrics, removed if the run fails before its first checkpoint.
    """
    try:
        on_best = saver.remember if dist.is_main else None
        train_model(model, train, val, cfg, observer, state, optimizers, saver.save, dist, on_best)
        dist.barrier()  # every rank waits for rank 0's last checkpoint before the group closes
    except BaseException as exc:
        if discard is not None:
            discard_unsaved(discard)
        if isinstance(exc, Diverged):
            raise GptError(f"{exc}; {saver.kept()}") from None
        raise
    finally:
        dist.close()
    if dist.is_main:
        saver.store.set_default(saver.name)
