"""The one training loop behind `train` and `finetune`: optimizers, schedule, eval, checkpoints.

The learning-rate schedule runs on progress = max(step / max_steps, elapsed / max_time), so a
run bounded by time decays its learning rate on time, and still ends on a cooled-down model.
Ctrl+C or SIGTERM (what schedulers, `docker stop` and `torchrun` send) asks the loop to stop at
the end of the current step and save; a second signal aborts. Under torchrun the ranks agree on
every step whether and why to stop, so they all stop at the same step.

The loop knows batches (anything with `sample()`, `fixed()`, `device`, `batch_size`,
`block_size` and `generator`), a model and a save hook; nothing about files, tasks or the store.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.optim import make_muon, split_parameters
from gptcli.runtime import Distributed, autocast_context, autocast_dtype, should_compile
from gptcli.store import fault_point  # the crash-test hook only: the loop knows no files

DEFAULT_MAX_STEPS = 2000


@dataclass
class StepStats:
    step: int
    total_steps: int | None
    train_loss: float | None
    val_loss: float | None
    lr: float
    tokens: int
    seconds: float
    tokens_per_second: float
    progress: float  # 0..1 of the step or time budget
    step_loss: float | None = None  # this step's loss, not smoothed (None before the first)
    # this step's gradient norm before clipping, a 0-d tensor: float() it where it is used, so
    # that a step without a use does not wait for the accelerator
    grad_norm: torch.Tensor | None = None
    lrs: dict[str, float] = field(default_factory=dict)  # each optimizer's: lr, muon_lr
    val_metrics: dict[str, float] = field(default_factory=dict)  # classify: val_accuracy


@dataclass
class TrainState:
    """Where a run is: enough, with the optimizer and RNG states, to resume it exactly."""

    step: int = 0
    seconds: float = 0.0  # training time spent so far, across resumes
    train_loss: float | None = None  # smoothed
    val_loss: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""  # one of STOP_REASONS once finished
    skipped: int = 0  # batches whose loss was not finite, left out
    best_step: int | None = None  # --keep best: the evaluation with the lowest val loss so far
    best_val_loss: float | None = None


STOP_REASONS = ("", "max_steps", "max_time", "interrupted")  # Ctrl+C and SIGTERM: interrupted


class Diverged(GptError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged: the loss is {loss} at step {step} (try a lower "
            "--lr, or --skip-nonfinite N to skip such batches)"
        )


class BatchSource(Protocol):
    """What the loop draws batches from: token windows (`data.Batches`) or whole examples
    (`tasks.examples.ExampleBatches`). A batch is the model's keyword arguments. A source
    that can cut shorter windows has `set_length(n)` (for --seq-warmup)."""

    device: torch.device
    batch_size: int
    block_size: int
    generator: torch.Generator

    def sample(self) -> dict[str, Any]: ...

    def fixed(self, count: int, seed: int) -> Iterator[dict[str, Any]]: ...


class TrainObserver(Protocol):
    def on_step(self, stats: StepStats) -> None: ...

    def on_eval(self, stats: StepStats) -> None: ...


def make_optimizers(
    model: GPT, cfg: TrainConfig, device: torch.device
) -> list[torch.optim.Optimizer]:
    """Muon for the block matrices and AdamW for the rest, or AdamW for everything.

    Weight decay applies to matrices only, never to norms, biases or gains.
    """
    use_muon = cfg.optimizer == "muon" or (
        cfg.optimizer == "auto" and model.config.family == "modern"
    )
    fused = device.type == "cuda"
    if use_muon:
        hidden, other = split_parameters(model)
        adam = torch.optim.AdamW(
            [{"params": other, "weight_decay": 0.0}],
            lr=cfg.lr,
            betas=(cfg.beta1, cfg.beta2),
            fused=fused,
        )
        return [make_muon(hidden, cfg.muon_lr, cfg.weight_decay, device), adam]
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused)]


def lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay, or constant then a linear cooldown (wsd)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    floor = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.cooldown == 0 or progress < 1 - cfg.cooldown:
        return 1.0
    return floor + (1 - floor) * (1 - progress) / cfg.cooldown


def context_at(progress: float, cfg: TrainConfig, full: int) -> int:
    """--seq-warmup: the training sequence length at this point of the run; a quarter of the
    context for the first half of the warmup, half of it for the second half, then all of it."""
    warmup = cfg.seq_warmup or 0.0
    if progress >= warmup:
        return full
    return max(1, full // 4 if progress < warmup / 2 else full // 2)


@torch.no_grad()
def estimate_loss(
    model: GPT, batches: BatchSource, count: int, seed: int, autocast: torch.dtype | None
) -> float:
    """Mean loss per scored target over `count` fixed batches (the same ones every time, so
    two evaluations of a run compare like with like; a small split is scored whole)."""
    return evaluate_batches(model, batches, count, seed, autocast)[0]


@torch.no_grad()
def evaluate_batches(
    model: GPT, batches: BatchSource, count: int, seed: int, autocast: torch.dtype | None
) -> tuple[float, dict[str, float]]:
    """`estimate_loss`, and for a classifier's batches (with `labels`) the share of examples
    whose most likely label is right: {"val_accuracy": ...}."""
    was_training = model.training
    model.eval()
    total, scored, right, examples = 0.0, 0, 0, 0
    for batch in batches.fixed(count, seed):
        with autocast_context(batches.device, autocast):
            logits, loss = model(**batch)
        assert loss is not None  # batches always carry targets
        targets = batch.get("targets")
        n = int((targets != -100).sum()) if isinstance(targets, torch.Tensor) else 1
        total += loss.item() * n
        scored += n
        labels = batch.get("labels")
        if isinstance(labels, torch.Tensor):
            right += int((logits.argmax(dim=-1) == labels).sum())
            examples += labels.numel()
    model.train(was_training)
    extra = {"val_accuracy": right / examples} if examples else {}
    return total / max(scored, 1), extra


@contextlib.contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """The first Ctrl+C or SIGTERM sets the event (the loop stops after its step and saves); a
    second one of either aborts."""
    event = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield event
        return

    def handler(signum: int, frame: Any) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield event
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def learning_rates(optimizers: list[torch.optim.Optimizer]) -> dict[str, float]:
    """The current rate of each optimizer: "lr" (AdamW, the last), "muon_lr" (Muon, first)."""
    rates = {"lr": optimizers[-1].param_groups[0]["lr"]}
    if len(optimizers) > 1:
        rates["muon_lr"] = optimizers[0].param_groups[0]["lr"]
    return rates


def gradient_norm(model: GPT) -> torch.Tensor:
    """The norm of all gradients together (what clipping measures), without clipping."""
    grads = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


SaveHook = Callable[[GPT, list[torch.optim.Optimizer], TrainState, BatchSource], None]
BestHook = Callable[[GPT], None]


def train_model(
    model: GPT,
    train: BatchSource,
    val: BatchSource | None,
    cfg: TrainConfig,
    observer: TrainObserver | None = None,
    state: TrainState | None = None,
    optimizers: list[torch.optim.Optimizer] | None = None,
    save: SaveHook | None = None,
    dist: Distributed | None = None,
    on_best: BestHook | None = None,
) -> TrainState:
    """Runs the loop until max_steps, max_time or Ctrl+C; the model is trained in place.

    `state` and `optimizers` (already loaded) continue an earlier run; `save` is called every
    `save_every` steps and at the end (on the main process only). With --keep best, `on_best`
    is called after each evaluation whose validation loss is the lowest of the run so far.
    """
    dist = dist or Distributed()
    state = state or TrainState()
    max_steps = cfg.max_steps
    if max_steps is None and cfg.max_time is None:
        max_steps = DEFAULT_MAX_STEPS
    device = train.device
    optimizers = optimizers or make_optimizers(model, cfg, device)
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
    amp = autocast_dtype(cfg, device)
    if device.type == "cuda":  # TF32 matmuls for whatever still runs in float32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    forward: Callable[..., Any] = torch.compile(model) if should_compile(cfg, device) else model
    ddp = None
    if dist.enabled:
        ddp = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
        forward = ddp
    tokens_per_step = train.batch_size * train.block_size * cfg.grad_accum * dist.world
    full_length = train.block_size
    set_length = getattr(train, "set_length", None) if cfg.seq_warmup else None
    start = time.perf_counter() - state.seconds
    run_start_step, run_start = state.step, time.perf_counter()
    latest: dict[str, Any] = {}  # the latest step's loss and gradient norm, and eval metrics

    def elapsed() -> float:
        return time.perf_counter() - start

    def progress() -> float:
        parts = []
        if max_steps is not None:
            parts.append(state.step / max_steps)
        if cfg.max_time is not None:
            parts.append(elapsed() / cfg.max_time)
        return max(parts)

    def snapshot() -> StepStats:
        now = time.perf_counter()
        rate = (state.step - run_start_step) * tokens_per_step / max(now - run_start, 1e-9)
        return StepStats(
            state.step,
            max_steps,
            state.train_loss,
            state.val_loss,
            optimizers[-1].param_groups[0]["lr"],
            state.step * tokens_per_step,
            elapsed(),
            rate,
            progress(),
            step_loss=latest.get("loss"),
            grad_norm=latest.get("norm"),
            lrs=learning_rates(optimizers),
            val_metrics=dict(latest.get("metrics", {})),
        )

    def evaluate(candidate: bool = True) -> None:
        """`candidate`: may be kept as the best (not the extra evaluation of an interrupted
        run, which an uninterrupted one would not have made: a resumed run keeps the same)."""
        if val is not None and dist.is_main:
            state.val_loss, latest["metrics"] = evaluate_batches(
                model, val, cfg.eval_batches, cfg.seed + 1, amp
            )
            better = state.best_val_loss is None or state.val_loss < state.best_val_loss
            candidate = candidate and cfg.keep == "best" and state.step > 0
            if candidate and math.isfinite(state.val_loss) and better:
                state.best_step, state.best_val_loss = state.step, state.val_loss
                if on_best is not None:
                    on_best(model)
        stats = snapshot()
        state.history.append(
            {
                "step": state.step,
                "tokens": stats.tokens,
                "seconds": round(stats.seconds, 3),
                "train_loss": state.train_loss,
                "val_loss": state.val_loss,
                "lr": stats.lr,
            }
        )
        if observer and dist.is_main:
            observer.on_eval(stats)

    def checkpoint() -> None:
        state.seconds = elapsed()
        if save is not None and dist.is_main:
            save(model, optimizers, state, train)

    last_save = elapsed()
    if not state.history:
        evaluate()  # the starting point of the loss curve
    model.train()
    with stop_on_signal() as interrupted:
        while True:
            reason = ""
            if max_steps is not None and state.step >= max_steps:
                reason = "max_steps"
            elif cfg.max_time is not None and elapsed() >= cfg.max_time:
                reason = "max_time"
            elif interrupted.is_set():
                reason = "interrupted"
            # one all-reduce a step: every rank stops at the same step, for the same reason
            agreed = dist.max(STOP_REASONS.index(reason), device)
            if agreed:
                state.stopped = STOP_REASONS[agreed]
                break
            fault_point("step")
            factor = lr_factor(progress(), state.step, cfg)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = group["initial_lr"] * factor
            if set_length is not None:
                set_length(context_at(progress(), cfg, full_length))
            total = 0.0
            for micro in range(cfg.grad_accum):
                batch = train.sample()
                last = micro == cfg.grad_accum - 1
                with (
                    ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext(),
                    autocast_context(device, amp),
                ):
                    _, loss = forward(**batch)
                    assert loss is not None
                    (loss / cfg.grad_accum).backward()
                total += loss.item() / cfg.grad_accum
            if dist.any(not math.isfinite(total), device):
                # the weights are still the last good ones: this batch is not applied
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                state.skipped += 1
                if state.skipped > cfg.skip_nonfinite:
                    raise Diverged(state.step + 1, total)
                continue
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            else:
                norm = gradient_norm(model)
            latest.update(loss=total, norm=norm)
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            state.step += 1
            state.train_loss = (
                total if state.train_loss is None else 0.9 * state.train_loss + 0.1 * total
            )
            if state.step % cfg.eval_every == 0:
                evaluate()
            elif observer and dist.is_main:
                observer.on_step(snapshot())
            if (cfg.save_every and state.step % cfg.save_every == 0) or (
                cfg.save_seconds and elapsed() - last_save >= cfg.save_seconds
            ):
                checkpoint()
                last_save = elapsed()
    if state.history[-1]["step"] != state.step:
        evaluate(candidate=state.stopped in ("max_steps", "max_time"))
    checkpoint()
    model.eval()
    return state
