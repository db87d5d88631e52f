"""The one training loop behind `train` and `finetune`: optimizers, schedule, eval, checkpoints.

The learning-rate schedule runs on progress = max(step / max_steps, elapsed / max_time), so a
run bounded by time decays its learning rate on time, and still ends on a cooled-down model.
Ctrl+C or SIGTERM (what schedulers, `docker stop` and `torchrun` send) asks the loop to stop at
the end of the current step and save; a second signal aborts. Under torchrun the ranks agree on
every step whether and why to stop, so they all stop at the same step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gptcli.config import PRESETS, ModelConfig, TrainConfig
from gptcli.data import Batches, Texts, build_corpus, read_corpus
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.monitor import discard_unsaved, monitor_for, new_run_id, prompt_from
from gptcli.optim import make_muon, split_parameters
from gptcli.store import ModelStore, fault_point, write_text_atomic
from gptcli.tokenizer import Tokenizer, iter_chunks

DEFAULT_MAX_STEPS = 2000
MAX_VOCAB = 1_000_000


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GptError("--device cuda: no CUDA GPU is available")
    if name == "mps" and not has_mps:
        raise GptError("--device mps: Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise GptError(f"unknown device {name!r} (choose auto, cpu, cuda or mps)")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    choice = cfg.dtype
    if choice == "auto":
        choice = "bfloat16" if device.type == "cuda" else "float32"
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


def should_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """torch.compile pays for itself on CUDA; on CPU its start-up eats a short time budget."""
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


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


STOP_REASONS = ("", "max_steps", "max_time", "interrupted")  # Ctrl+C and SIGTERM: interrupted


class Diverged(GptError):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged: the loss is {loss} at step {step} (try a lower "
            "--lr, or --skip-nonfinite N to skip such batches)"
        )


class TrainObserver(Protocol):
    def on_step(self, stats: StepStats) -> None: ...

    def on_eval(self, stats: StepStats) -> None: ...


class Distributed:
    """This process's place under torchrun (or a world of one without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        if not self.enabled:
            return device
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (to stop together)."""
        if not self.enabled:
            return flag
        import torch.distributed as dist

        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def max(self, value: int, device: torch.device) -> int:
        """The largest of every rank's value, on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        tensor = torch.tensor([value], dtype=torch.long, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


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
        return [make_muon(hidden, cfg.muon_lr, cfg.weight_decay), adam]
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


@torch.no_grad()
def estimate_loss(
    model: GPT, batches: Batches, count: int, seed: int, autocast: torch.dtype | None
) -> float:
    was_training = model.training
    model.eval()
    losses = []
    for batch in batches.fixed(count, seed):
        with autocast_context(batches.device, autocast):
            losses.append(model(**batch)[1].item())  # type: ignore[union-attr]
    model.train(was_training)
    return sum(losses) / len(losses)


def autocast_context(device: torch.device, dtype: torch.dtype | None):  # type: ignore[no-untyped-def]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


SaveHook = Callable[[GPT, list[torch.optim.Optimizer], TrainState, Batches], None]


def train_model(
    model: GPT,
    train: Batches,
    val: Batches | None,
    cfg: TrainConfig,
    observer: TrainObserver | None = None,
    state: TrainState | None = None,
    optimizers: list[torch.optim.Optimizer] | None = None,
    save: SaveHook | None = None,
    dist: Distributed | None = None,
) -> TrainState:
    """Runs the loop until max_steps, max_time or Ctrl+C; the model is trained in place.

    `state` and `optimizers` (already loaded) continue an earlier run; `save` is called every
    `save_every` steps and at the end (on the main process only).
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
    forward = model
    if should_compile(cfg, device):
        forward = torch.compile(model)  # type: ignore[assignment]
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )  # type: ignore[assignment]
    tokens_per_step = train.batch_size * train.block_size * cfg.grad_accum * dist.world
    start = time.perf_counter() - state.seconds
    run_start_step, run_start = state.step, time.perf_counter()

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
        )

    def evaluate() -> None:
        if val is not None and dist.is_main:
            state.val_loss = estimate_loss(model, val, cfg.eval_batches, cfg.seed + 1, amp)
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
            total = 0.0
            for micro in range(cfg.grad_accum):
                batch = train.sample()
                sync = micro == cfg.grad_accum - 1 or not dist.enabled
                with (
                    contextlib.nullcontext() if sync else forward.no_sync(),
                    autocast_context(device, amp),
                ):  # type: ignore[union-attr]
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
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
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
        evaluate()
    checkpoint()
    model.eval()
    return state


# -- from text files to a stored model ---------------------------------------------------------


def default_vocab_size(n_bytes: int) -> int:
    """A BPE vocabulary that suits the corpus: small corpora get few merges."""
    size = int(4 * math.sqrt(max(n_bytes, 1)))
    return max(512, min(32768, (size + 63) // 64 * 64))


@dataclass
class TrainRequest:
    inputs: list[str]
    name: str
    cfg: TrainConfig
    preset: str = "auto"
    family: str | None = None  # None: the preset's (modern for new models)
    tokenizer: str | None = None  # None or "bpe": train BPE; "char"; or a stored name / path
    vocab_size: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    force: bool = False
    resume: bool = False
    auto_batch: bool = False  # the batch size was not given: the chosen shape may set it
    config: dict[str, Any] | None = None  # the command's settings, as --print-config shows them


def prepare_tokenizer(
    request: TrainRequest, texts: Texts, store: ModelStore, log: Callable[[str], None]
) -> Tokenizer:
    """The tokenizer a request asks for: trained on `texts`, or loaded from the store/a path."""
    choice = request.tokenizer or "bpe"
    if choice not in ("bpe", "char"):
        if request.vocab_size is not None:
            raise GptError("--vocab-size only applies when a tokenizer is trained (bpe or char)")
        return Tokenizer.load(store.tokenizer_path(choice))
    pieces = (chunk for text in texts.iter_text() for chunk in iter_chunks(text))
    if choice == "char":
        log("training a char tokenizer")
        return Tokenizer.train_char(pieces)
    vocab = request.vocab_size or default_vocab_size(texts.n_bytes)
    if not 257 <= vocab <= MAX_VOCAB:
        raise GptError(f"--vocab-size must be between 257 and {MAX_VOCAB:,} for BPE")
    log(f"training a BPE tokenizer ({vocab} tokens)")
    return Tokenizer.train_bpe(pieces, vocab)


@dataclass
class Shape:
    preset: str
    block_size: int | None = None  # None: the preset's
    batch_size: int | None = None  # None: as configured


def choose_shape(request: TrainRequest, n_train_tokens: int, device: torch.device) -> Shape:
    """`--preset auto`: a model that can make good use of the data, the device and the time.

    Measured on two CPU cores (benchmarks/train_speed.py): under ~20 minutes a 4 x 128 model
    on short contexts (64) and larger batches (32) learns fastest per second; bigger models only
    pay off with hours, or on a GPU, and only with data enough to feed them.
    """
    if request.preset != "auto":
        return Shape(request.preset)
    minutes = (request.cfg.max_time or 0) / 60
    if device.type == "cpu":
        if minutes <= 20 or n_train_tokens < 2_000_000:
            return Shape("mini", block_size=64, batch_size=32)
        return Shape("small" if minutes <= 180 or n_train_tokens < 50_000_000 else "base")
    if n_train_tokens < 1_000_000:
        return Shape("mini")
    if (minutes and minutes <= 15) or n_train_tokens < 20_000_000:
        return Shape("small")
    return Shape("base")


def model_config_for(request: TrainRequest, tokenizer: Tokenizer, preset: str) -> ModelConfig:
    family = request.family or PRESETS[preset].get("family", "modern")
    config = ModelConfig.from_preset(
        preset,
        family=family,
        vocab_size=tokenizer.vocab_size,
        block_size=request.block_size,
        dropout=request.dropout,
    )
    if config.vocab_size < tokenizer.vocab_size:
        raise GptError(
            f"preset {preset!r} has a vocabulary of {config.vocab_size}, "
            f"smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    return config


@contextlib.contextmanager
def model_lock(store: ModelStore, name: str, command: str) -> Iterator[None]:
    """The writer's lock on a model name (rank 0 only under torchrun); clears stale staging."""
    import shutil

    from gptcli.store import ModelLock, check_name

    if not Distributed().is_main:
        yield
        return
    with ModelLock(store.models_dir, check_name(name), command):
        for leftover in store.models_dir.glob(f".{name}.*.staging"):
            shutil.rmtree(leftover, ignore_errors=True)  # from a run that was killed
        yield


def train_from_scratch(
    request: TrainRequest,
    store: ModelStore,
    observer: TrainObserver | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Holds the model's lock around `run_train_from_scratch`."""
    with model_lock(store, request.name, "gpt train"):
        return run_train_from_scratch(request, store, observer, log)


def run_train_from_scratch(
    request: TrainRequest,
    store: ModelStore,
    observer: TrainObserver | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Tokenizer -> corpus -> model -> training -> a model in the store. Returns a summary.

    With `resume`, the stored model's weights, optimizer and RNG states continue exactly.
    """
    from gptcli.checkpoint import check_resumable, load_model, load_train_state

    dist = Distributed()
    if not dist.is_main:
        log = lambda message: None  # noqa: E731
    target = store.model_dir(request.name)
    exists = store.exists(request.name)
    if request.resume and not exists:
        raise GptError(f"no model named {request.name!r} to resume (drop --resume to start one)")
    if request.resume:
        check_resumable(target)  # before any data is read
    if exists and not (request.force or request.resume):
        raise GptError(
            f"a model named {request.name!r} already exists "
            "(use --resume to continue it, or --force to replace it)"
        )
    if not request.resume:  # refuse a bad shape before anything is read or written
        ModelConfig.from_preset(
            "mini" if request.preset == "auto" else request.preset,
            family=request.family,
            block_size=request.block_size,
            dropout=request.dropout,
        )
    if not request.auto_batch:
        micro_batch_size(request.cfg, dist)
    if request.vocab_size is not None and not 257 <= request.vocab_size <= MAX_VOCAB:
        raise GptError(f"--vocab-size must be between 257 and {MAX_VOCAB:,} for BPE")
    device = dist.setup(pick_device(request.cfg.device))
    texts = read_corpus(request.inputs)
    info: dict[str, Any] = {}
    if request.resume:
        loaded = load_model(target, device)
        model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
        cfg = TrainConfig.from_dict({**info.get("train", {}), **overrides(request.cfg)})
    else:
        tokenizer = prepare_tokenizer(request, texts, store, log) if dist.is_main else None
        tokenizer = share_tokenizer(tokenizer, dist, device)
        cfg = request.cfg
    corpus = (
        build_corpus(texts, tokenizer, cfg.val_fraction, store.data_dir) if dist.is_main else None
    )
    dist.barrier()
    corpus = corpus or build_corpus(texts, tokenizer, cfg.val_fraction, store.data_dir)
    if request.resume and corpus.key != info.get("data", {}).get("cache_key"):
        raise GptError("the training text differs from the run being resumed")
    n_train = len(corpus.train.tokens)
    if n_train < 2:
        raise GptError("the corpus is too small to train on (fewer than 2 training tokens)")
    log(f"corpus: {n_train:,} training tokens, {len(corpus.val.tokens):,} validation tokens")
    if not request.resume:
        shape = choose_shape(request, n_train, device)
        if shape.batch_size and request.auto_batch:
            cfg = dataclasses.replace(cfg, batch_size=shape.batch_size)
        if shape.block_size and request.block_size is None:
            request = dataclasses.replace(request, block_size=shape.block_size)
        torch.manual_seed(cfg.seed)
        model = GPT(model_config_for(request, tokenizer, shape.preset)).to(device)
    config = model.config
    log(
        f"model: {config.family} {config.preset}, {model.num_params() / 1e6:.2f}M parameters, "
        f"context {config.block_size}, on {device.type}"
        + (f" x{dist.world}" if dist.enabled else "")
    )
    per_process = micro_batch_size(cfg, dist)
    train_batches = Batches(
        corpus.train.tokens,
        per_process,
        config.block_size,
        device,
        cfg.seed,
        dist.rank,
        dist.world,
    )
    val_batches = None
    if len(corpus.val.tokens) >= 2:
        val_batches = Batches(
            corpus.val.tokens, cfg.batch_size, config.block_size, device, cfg.seed + 1
        )
    optimizers = make_optimizers(model, cfg, device)
    state = TrainState()
    if request.resume:
        saved = load_train_state(
            target / "train_state.safetensors", optimizers, train_batches.generator
        )
        state = TrainState(**saved)
        if state.stopped in ("max_steps", "max_time") and not overrides(request.cfg):
            log("that run had finished; give a larger --max-steps or --max-time to go on")
        log(f"resuming at step {state.step}")
    base_info = {
        "kind": "train",
        "run": info.get("run") or new_run_id(),
        "created": info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": info.get("config") if request.resume else request.config,
        "train": cfg.to_dict(),
        "tokenizer": tokenizer.kind,
        "data": corpus.describe() | {"val_fraction": cfg.val_fraction},
    }
    claimed = False  # live metrics in train.json and samples: see gptcli.monitor
    if dist.is_main:
        sampling = (model, tokenizer, prompt_from(texts, cfg))
        observer, claimed = monitor_for(
            observer, store, request.name, base_info, state.history, cfg, sampling
        )
    saver = CheckpointWriter(
        store,
        request.name,
        tokenizer,
        base_info,
        replace=request.force or request.resume or claimed,
        keep_train_state=cfg.train_state,
    )
    run_and_store(
        model,
        train_batches,
        val_batches,
        cfg,
        observer,
        state,
        optimizers,
        saver,
        dist,
        discard=target if claimed else None,
    )
    return {"name": request.name, "path": str(target), "params": model.num_params(), **saver.last}


def micro_batch_size(cfg: TrainConfig, dist: Distributed) -> int:
    """Sequences per micro-batch in this process: the step's batch over processes and
    accumulation steps."""
    per_process = cfg.batch_size // (dist.world * cfg.grad_accum)
    if per_process < 1 or per_process * dist.world * cfg.grad_accum != cfg.batch_size:
        raise GptError(
            f"--batch-size {cfg.batch_size} must be a multiple of processes x "
            f"--grad-accum ({dist.world} x {cfg.grad_accum})"
        )
    return per_process


def overrides(cfg: TrainConfig) -> dict[str, Any]:
    """The budget flags given for a resumed run (the rest comes from the stored run)."""
    return {
        k: v for k, v in (("max_steps", cfg.max_steps), ("max_time", cfg.max_time)) if v is not None
    }


def share_tokenizer(
    tokenizer: Tokenizer | None, dist: Distributed, device: torch.device
) -> Tokenizer:
    """Rank 0's tokenizer on every rank (sent as JSON bytes in a tensor, no pickle)."""
    if not dist.enabled:
        assert tokenizer is not None
        return tokenizer
    import torch.distributed as dist_mod

    from gptcli.tokenizer import HFTokenizer

    payload = tokenizer.to_json().encode() if tokenizer is not None else b""
    size = torch.tensor([len(payload)], dtype=torch.long, device=device)
    dist_mod.broadcast(size, 0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if tokenizer is not None:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    dist_mod.broadcast(buffer, 0)
    return Tokenizer(HFTokenizer.from_str(bytes(buffer.cpu().tolist()).decode()))


class CheckpointWriter:
    """Writes the whole model directory (weights, state, train.json) and swaps it into place."""

    def __init__(
        self,
        store: ModelStore,
        name: str,
        tokenizer: Tokenizer,
        info: dict,
        replace: bool,
        extra_files: dict[str, str] | None = None,
        keep_train_state: bool = True,
    ) -> None:
        self.store, self.name, self.tokenizer, self.info = store, name, tokenizer, info
        self.replace = replace
        self.keep_train_state = keep_train_state  # False: dropped once the run has ended
        self.extra_files = extra_files or {}
        self.last: dict[str, Any] = {}

    def save(
        self,
        model: GPT,
        optimizers: list[torch.optim.Optimizer],
        state: TrainState,
        batches: Batches,
    ) -> None:
        import shutil

        from gptcli.checkpoint import save_train_state, write_model_dir
        from gptcli.store import disk_full_message, fault_point, is_disk_full

        result = {
            "steps": state.step,
            "tokens": state.history[-1]["tokens"],
            "train_loss": state.train_loss,
            "val_loss": state.val_loss,
            "seconds": round(state.seconds, 3),
            "stopped": state.stopped or "running",
        }
        info = self.info | {"result": result, "history": state.history}
        # a finished run may drop its optimizer state; an interrupted one keeps it to resume
        drop_state = not self.keep_train_state and state.stopped in ("max_steps", "max_time")
        if drop_state:
            info["train_state"] = "dropped"
        fault_point("save")
        staging = self.store.staging_dir(self.store.models_dir, self.name)
        try:
            write_model_dir(staging, model, self.tokenizer, info)
            for filename, text in self.extra_files.items():
                write_text_atomic(staging / filename, text)
            if not drop_state:
                save_train_state(
                    staging / "train_state.safetensors",
                    optimizers,
                    dataclasses.asdict(state),
                    batches.generator,
                )
            fault_point("staged")
            self.store.commit_dir(staging, self.store.model_dir(self.name), force=self.replace)
        except Exception as exc:
            if is_disk_full(exc):
                shutil.rmtree(staging, ignore_errors=True)  # to report what is free without it
                full = disk_full_message(
                    self.store.models_dir, checkpoint_bytes(model, optimizers), "the checkpoint"
                )
                raise GptError(f"{full}; step {state.step} was not saved, {self.kept()}") from None
            if isinstance(exc, OSError):
                raise GptError(
                    f"could not save the checkpoint at step {state.step} "
                    f"({exc.strerror or exc}); {self.kept()}"
                ) from None
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self.replace = True  # from now on we replace our own checkpoint
        self.last = result

    def kept(self) -> str:
        """What is on disk now, for messages after a failure."""
        if self.last:
            return f"the previous checkpoint (step {self.last['steps']}) is kept"
        return "no checkpoint had been saved yet"


def checkpoint_bytes(model: GPT, optimizers: list[torch.optim.Optimizer]) -> int:
    """About what a checkpoint takes on disk: weights and optimizer state."""
    tensors = [*model.weights().values()]
    for opt in optimizers:
        tensors += [v for entry in opt.state.values() for v in entry.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def run_and_store(
    model: GPT,
    train: Batches,
    val: Batches | None,
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
        train_model(model, train, val, cfg, observer, state, optimizers, saver.save, dist)
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
