"""The one training loop behind `train` and `finetune`: optimizer, schedule, eval, stopping.

The learning-rate schedule runs on progress = max(step / max_steps, elapsed / max_time), so a
run bounded by time decays its learning rate on time, and still ends on a cooled-down model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gptcli.config import TrainConfig
from gptcli.data import Batches, Texts, build_corpus, read_corpus
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.store import ModelStore
from gptcli.tokenizer import Tokenizer, iter_chunks

DEFAULT_MAX_STEPS = 2000


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GptError("--device cuda: no CUDA GPU is available")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise GptError("--device mps: Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise GptError(f"unknown device {name!r} (choose auto, cpu, cuda or mps)")
    return torch.device(name)


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
class TrainResult:
    steps: int
    tokens: int
    train_loss: float | None
    val_loss: float | None
    seconds: float
    stopped: str  # "max_steps", "max_time" or "interrupted"
    history: list[dict] = field(default_factory=list)


class TrainObserver(Protocol):
    def on_step(self, stats: StepStats) -> None: ...

    def on_eval(self, stats: StepStats) -> None: ...


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (not on norms, biases, gains)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda"
    )


def lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    """Linear warmup over `warmup_steps`, then cosine decay to `min_lr_ratio`."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(max(progress, 0.0), 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def estimate_loss(model: GPT, batches: Batches, count: int, seed: int) -> float:
    was_training = model.training
    model.eval()
    losses = [model(x, y)[1].item() for x, y in batches.fixed(count, seed)]  # type: ignore[union-attr]
    model.train(was_training)
    return sum(losses) / len(losses)


def train_model(
    model: GPT,
    train: Batches,
    val: Batches | None,
    cfg: TrainConfig,
    observer: TrainObserver | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Runs the loop until max_steps, max_time, or Ctrl+C; the model is left trained in place."""
    max_steps = cfg.max_steps
    if max_steps is None and cfg.max_time is None:
        max_steps = DEFAULT_MAX_STEPS
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, cfg, device)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    tokens_per_step = train.batch_size * train.block_size
    history: list[dict] = []
    val_loss: float | None = None
    train_loss: float | None = None
    smoothed: float | None = None
    stopped = "max_steps"
    step = 0
    start = time.perf_counter()

    def snapshot(now: float) -> StepStats:
        tokens = step * tokens_per_step
        return StepStats(
            step,
            max_steps,
            train_loss,
            val_loss,
            optimizer.param_groups[0]["lr"],
            tokens,
            now - start,
            tokens / max(now - start, 1e-9),
            progress(now),
        )

    def progress(now: float) -> float:
        parts = []
        if max_steps is not None:
            parts.append(step / max_steps)
        if cfg.max_time is not None:
            parts.append((now - start) / cfg.max_time)
        return max(parts)

    def evaluate() -> None:
        nonlocal val_loss
        if val is not None:
            val_loss = estimate_loss(model, val, cfg.eval_batches, cfg.seed + 1)
        stats = snapshot(time.perf_counter())
        history.append(
            {
                "step": step,
                "tokens": stats.tokens,
                "seconds": round(stats.seconds, 3),
                "train_loss": train_loss,
                "val_loss": val_loss,
                "lr": stats.lr,
            }
        )
        if observer:
            observer.on_eval(stats)

    evaluate()  # the starting point of the loss curve
    model.train()
    try:
        while True:
            now = time.perf_counter()
            if max_steps is not None and step >= max_steps:
                stopped = "max_steps"
                break
            if cfg.max_time is not None and now - start >= cfg.max_time:
                stopped = "max_time"
                break
            if should_stop():
                stopped = "interrupted"
                break
            factor = lr_factor(progress(now), step, cfg)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            x, y = train.sample()
            _, loss = model(x, y)
            assert loss is not None
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise GptError(
                    f"training diverged: loss is {value} at step {step} (try a lower --lr)"
                )
            smoothed = value if smoothed is None else 0.9 * smoothed + 0.1 * value
            train_loss = smoothed
            if step % cfg.eval_every == 0:
                evaluate()
            elif observer:
                observer.on_step(snapshot(time.perf_counter()))
    except KeyboardInterrupt:
        stopped = "interrupted"
    if not history or history[-1]["step"] != step:
        evaluate()
    model.eval()
    return TrainResult(
        step,
        step * tokens_per_step,
        train_loss,
        val_loss,
        time.perf_counter() - start,
        stopped,
        history,
    )


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
    preset: str
    tokenizer: str | None = None  # None or "bpe": train BPE; "char"; or a stored name / path
    vocab_size: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    force: bool = False


def prepare_tokenizer(
    request: TrainRequest, texts: Texts, store: ModelStore, log: Callable[[str], None]
) -> Tokenizer:
    """The tokenizer a request asks for: trained on `texts`, or loaded from the store/a path."""
    choice = request.tokenizer or "bpe"
    if choice not in ("bpe", "char"):
        if request.vocab_size is not None:
            raise GptError("--vocab-size only applies when a tokenizer is trained (bpe or char)")
        return Tokenizer.load(store.tokenizer_path(choice))
    pieces = (chunk for text in texts.texts for chunk in iter_chunks(text))
    if choice == "char":
        log("training a char tokenizer")
        return Tokenizer.train_char(pieces)
    vocab = request.vocab_size or default_vocab_size(texts.n_bytes)
    log(f"training a BPE tokenizer ({vocab} tokens)")
    return Tokenizer.train_bpe(pieces, vocab)


def train_from_scratch(
    request: TrainRequest,
    store: ModelStore,
    observer: TrainObserver | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict:
    """Tokenizer -> corpus -> model -> training -> a new model in the store. Returns a summary."""
    from gptcli.checkpoint import write_model_dir
    from gptcli.config import ModelConfig

    target = store.model_dir(request.name)
    if store.exists(request.name) and not request.force:
        raise GptError(f"a model named {request.name!r} already exists (use --force to replace it)")
    device = pick_device(request.cfg.device)
    texts = read_corpus(request.inputs)
    tokenizer = prepare_tokenizer(request, texts, store, log)
    corpus = build_corpus(texts, tokenizer, request.cfg.val_fraction, store.data_dir)
    n_train = len(corpus.train.tokens)
    log(f"corpus: {n_train:,} training tokens, {len(corpus.val.tokens):,} validation tokens")
    config = ModelConfig.from_preset(
        request.preset,
        vocab_size=tokenizer.vocab_size,
        block_size=request.block_size,
        dropout=request.dropout,
    )
    if config.vocab_size < tokenizer.vocab_size:
        raise GptError(
            f"preset {request.preset!r} has a vocabulary of {config.vocab_size}, "
            f"smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    if n_train < 2:
        raise GptError("the corpus is too small to train on (fewer than 2 training tokens)")
    torch.manual_seed(request.cfg.seed)
    model = GPT(config).to(device)
    log(
        f"model: {request.preset}, {model.num_params() / 1e6:.2f}M parameters, "
        f"context {config.block_size}, on {device.type}"
    )
    cfg = request.cfg
    train_batches = Batches(
        corpus.train.tokens, cfg.batch_size, config.block_size, device, cfg.seed
    )
    val_batches = None
    if len(corpus.val.tokens) >= 2:
        val_batches = Batches(
            corpus.val.tokens, cfg.batch_size, config.block_size, device, cfg.seed + 1
        )
    result = train_model(model, train_batches, val_batches, cfg, observer)
    info = {
        "kind": "train",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train": cfg.to_dict(),
        "tokenizer": tokenizer.kind,
        "data": corpus.describe() | {"val_fraction": cfg.val_fraction},
        "result": {
            "steps": result.steps,
            "tokens": result.tokens,
            "train_loss": result.train_loss,
            "val_loss": result.val_loss,
            "seconds": round(result.seconds, 3),
            "stopped": result.stopped,
        },
        "history": result.history,
    }
    staging = store.staging_dir(store.models_dir, request.name)
    try:
        write_model_dir(staging, model.cpu(), tokenizer, info)
        store.commit_dir(staging, target, force=request.force)
    finally:
        if staging.exists():
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    store.set_default(request.name)
    return {
        "name": request.name,
        "path": str(target),
        "params": model.num_params(),
        **info["result"],
    }
