"""Model and training configuration: dataclasses, named presets, validation, JSON round-trips,
and the flat TOML of run config files (`--config`, `--print-config`)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.errors import GptError

FAMILIES = ("gpt2", "modern")
# The modern family's norms. "plain": RMSNorm without gains, also on the token embeddings
# (nanochat's recipe, which transformers' NanoChatForCausalLM computes); "gains": RMSNorm with a
# learned gain each, none on the embeddings (modern models saved before `norms` existed).
# gpt2 uses LayerNorm whatever it says.
NORMS = ("plain", "gains")


@dataclass
class ModelConfig:
    """Shape of a GPT. `gpt2` is the Hugging Face GPT-2 layout; `modern` uses RoPE/RMSNorm."""

    family: str = "gpt2"
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    norms: str = "plain"  # the modern family's norms, one of NORMS
    preset: str | None = None
    labels: list[str] | None = None  # a classifier: one output per label on the last token

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise GptError(
                f"unknown model family {self.family!r} (choose from {', '.join(FAMILIES)})"
            )
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GptError(f"model config: {name} must be a positive integer, got {value!r}")
        for name, limit in (
            ("vocab_size", 10_000_000),
            ("block_size", 1_000_000),
            ("n_embd", 100_000),
            ("n_layer", 10_000),
            ("n_head", 10_000),
        ):
            if getattr(self, name) > limit:
                raise GptError(
                    f"model config: {name} {getattr(self, name):,} is implausibly "
                    f"large (at most {limit:,})"
                )
        if self.n_embd % self.n_head:
            raise GptError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.norms not in NORMS:
            raise GptError(
                f"model config: unknown norms {self.norms!r} (choose from {', '.join(NORMS)})"
            )
        if self.family == "modern" and (self.n_embd // self.n_head) % 2:
            raise GptError("model config: the modern family needs an even head size for rotary")
        if self.labels is not None and (
            len(self.labels) < 2 or len(set(self.labels)) != len(self.labels)
        ):
            raise GptError("model config: a classifier needs at least 2 distinct labels")
        if not 0.0 <= self.dropout < 1.0:
            raise GptError(f"model config: dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise GptError("model config must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise GptError(f"model config: unknown keys {', '.join(sorted(unknown))}")
        if "norms" not in data:  # written before the key existed: modern models had gains
            data = {**data, "norms": "gains"}
        try:
            return cls(**data)
        except TypeError as exc:
            raise GptError(f"model config: {exc}") from None

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise GptError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
        values = {**PRESETS[name], "preset": name}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# Shapes (and the family where it is fixed); vocab_size comes from the tokenizer unless the
# preset fixes it (gpt2).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "micro": dict(n_layer=3, n_head=3, n_embd=96, block_size=256),  # --preset auto: CPU, < 2 min
    "mini": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "base": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(
        family="gpt2", n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257
    ),
    # nanoGPT's CPU recipe for Shakespeare (the B1 reference in benchmarks/train_speed.py)
    "nanogpt-cpu": dict(family="gpt2", n_layer=4, n_head=4, n_embd=128, block_size=64),
}


OPTIMIZERS = ("auto", "muon", "adamw")
SCHEDULES = ("wsd", "cosine")
DTYPES = ("auto", "float32", "bfloat16", "float16")
KEEP = ("best", "last")
TRACKERS = ("tensorboard", "wandb", "mlflow", "csv")
# How a run is watched, not what it computes: on --resume those given now replace the stored
# run's (which go on otherwise), and `gpt models show --compare` leaves them out.
TRACKING = ("tracker", "log_every", "run_name", "tracker_dir")


def weights_mismatch(config: ModelConfig, shapes: dict[str, Any]) -> str | None:
    """Why weights of these shapes (name -> shape) cannot be this config's, or None.

    Reads names and shapes only, so a config.json that disagrees with its weights (edited by
    hand, say 9000 layers of width 65536) is refused before a model of that size is built.
    Layers, width, vocabulary and context: the rest is checked as the weights are loaded.
    """
    layers = {int(k.split(".")[2]) for k in shapes if re.match(r"transformer\.h\.\d+\.", k)}
    n_layer = max(layers) + 1 if layers else 0
    wte = tuple(shapes.get("transformer.wte.weight") or ())
    if len(wte) != 2:
        return "the weights have no token embedding (transformer.wte.weight)"
    if n_layer != config.n_layer or wte != (config.vocab_size, config.n_embd):
        return (
            f"config.json describes {config.n_layer:,} layers of width {config.n_embd:,} and "
            f"{config.vocab_size:,} tokens, the weights have {n_layer:,} layers of width "
            f"{wte[1]:,} and {wte[0]:,} tokens"
        )
    wpe = tuple(shapes.get("transformer.wpe.weight") or ())
    if config.family == "gpt2" and wpe and wpe != (config.block_size, config.n_embd):
        return (
            f"config.json says a context of {config.block_size:,} tokens, "
            f"the weights have {wpe[0]:,}"
        )
    return None


def flag(
    help: str, *decls: str, only: str | None = None, text: bool = False, metavar: str | None = None
) -> dict[str, Any]:
    """Field metadata that makes a TrainConfig field a flag of `gpt train` and `gpt finetune`
    (`only`: of that command alone), with its help text. `decls`: the option's spellings when
    not just --field-name; `text`: the flag takes text the command parses (5m, 500).
    `metavar`: the value's name in --help. cli/trainflags.py builds the options, --config keys
    and --print-config from these."""
    return {"flag": {"help": help, "decls": decls, "only": only, "text": text, "metavar": metavar}}


@dataclass
class TrainConfig:
    """Everything that steers one training run (not the model's shape).

    Flags come first, in the order `--help` shows them; the rest are settings of the loop.
    """

    max_steps: int | None = field(
        default=None,
        metadata=flag("Stop after this many steps (default: 2000 when no --max-time)."),
    )
    max_time: float | None = field(  # seconds
        default=None, metadata=flag("Stop after this long: 30s, 5m, 1h.", text=True)
    )
    batch_size: int = field(  # sequences per optimizer step, across all processes
        default=16,
        metadata=flag("Sequences per optimizer step, over all processes (default: 16)."),
    )
    grad_accum: int = field(  # micro-batches per step (per process)
        default=1,
        metadata=flag("Micro-batches per step, to reach a large batch in little memory."),
    )
    lr: float = field(  # AdamW: embeddings, head, gains (and everything with --optimizer adamw)
        default=3e-3,
        metadata=flag(
            "Peak AdamW learning rate (embeddings, head, gains; all with --optimizer adamw)."
        ),
    )
    muon_lr: float = field(  # Muon: the matrices inside the blocks
        default=0.02, metadata=flag("Peak Muon learning rate (matrices in the blocks).")
    )
    optimizer: str = field(  # muon for the modern family, adamw for gpt2
        default="auto",
        metadata=flag(
            "auto (Muon + AdamW for modern, AdamW for gpt2), muon or adamw.", only="train"
        ),
    )
    schedule: str = field(  # warmup-stable-decay, or cosine
        default="wsd",
        metadata=flag("wsd (warmup, stable, linear cooldown; default) or cosine."),
    )
    warmup_steps: int = field(default=20, metadata=flag("Learning-rate warmup steps."))
    min_lr_ratio: float = field(
        default=0.0,
        metadata=flag("The learning rate decays to this fraction of its peak (default: 0)."),
    )
    weight_decay: float = field(default=0.0, metadata=flag("Weight decay on matrices."))
    eval_every: int = field(default=100, metadata=flag("Evaluate every N steps (default: 100)."))
    keep: str = field(  # which checkpoint becomes the stored model
        default="best",
        metadata=flag(
            "best (the checkpoint with the lowest validation loss; default) or last. "
            "--resume continues from the latest state either way."
        ),
    )
    seq_warmup: float | None = field(  # None: the job's default (gpt train picks one)
        default=None,
        metadata=flag(
            "Fraction of the run on shorter sequences (a quarter, then half the context), "
            "tokens per step kept (default: 0.5 for modern models with a context of 256 or "
            "more, else 0).",
            only="train",
        ),
    )
    save_every: int | None = field(  # steps between checkpoints
        default=None,
        metadata=flag(
            "Checkpoint every N steps (e.g. 500) or every so long (e.g. 10m) "
            "(default: 5m), and always at the end.",
            text=True,
        ),
    )
    skip_nonfinite: int = field(  # batches with a NaN/inf loss to skip before stopping
        default=0,
        metadata=flag("Skip up to N batches whose loss is NaN or infinite instead of stopping."),
    )
    sample_every: int | None = field(  # steps between printed samples; 0 never; None automatic
        default=None,
        metadata=flag(
            "Print a short sample every N steps, 0 for none (default: ten in a run, none in "
            "runs under 1000 steps or 2 minutes)."
        ),
    )
    sample_prompt: str | None = field(  # None: the opening words of the training text
        default=None,
        metadata=flag("Prompt of those samples (default: the first words of the text)."),
    )
    val_fraction: float = field(
        default=0.1,
        metadata=flag("Fraction of the text held out for validation, from its end (default: 0.1)."),
    )
    seed: int = field(default=1337, metadata=flag("Random seed (default: 1337)."))
    device: str = field(default="auto", metadata=flag("auto, cpu, cuda or mps."))
    dtype: str = field(  # bfloat16 autocast on CUDA, float32 elsewhere
        default="auto",
        metadata=flag(
            "auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16, float16."
        ),
    )
    compile: bool | None = field(  # None: on for CUDA, off otherwise
        default=None,
        metadata=flag("torch.compile the model (default: on for CUDA).", "--compile/--no-compile"),
    )
    train_state: bool = field(  # keep the optimizer state once the run has ended
        default=True,
        metadata=flag(
            "Keep the optimizer state (1-2x the weights' size) once the run ends, so that "
            "--resume can continue it (default: keep). An interrupted run keeps it either way.",
            "--train-state/--no-train-state",
        ),
    )
    tracker: list[str] | None = field(  # None: metrics.jsonl only
        default=None,
        metadata=flag(
            "Also log the run to tensorboard, wandb, mlflow or csv (repeatable; default: "
            "none). metrics.jsonl in the model's directory is kept either way.",
            metavar="NAME",
        ),
    )
    log_every: int | None = field(  # None: 10
        default=None,
        metadata=flag("Record a point (metrics.jsonl, trackers) every N steps (default: 10)."),
    )
    run_name: str | None = field(  # None: the model's name (kept on --resume)
        default=None, metadata=flag("The run's name in the trackers (default: the model's).")
    )
    tracker_dir: str | None = field(  # None: ./runs
        default=None,
        metadata=flag("Where tensorboard and csv write RUN-NAME/ (default: ./runs)."),
    )
    cooldown: float = 0.4  # wsd: fraction of the budget spent decaying to min_lr
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.95
    eval_batches: int = 10
    save_seconds: float | None = 300.0  # training time between checkpoints (and at the end)

    def __post_init__(self) -> None:
        checks = [
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be at least 1"),
            (self.max_time is None or self.max_time > 0, "--max-time must be positive"),
            (1 <= self.batch_size <= 1 << 20, "--batch-size must be between 1 and 1048576"),
            (1 <= self.grad_accum <= 1 << 16, "--grad-accum must be between 1 and 65536"),
            (self.lr > 0, "--lr must be positive"),
            (self.muon_lr > 0, "--muon-lr must be positive"),
            (self.warmup_steps >= 0, "--warmup-steps must be 0 or more"),
            (self.weight_decay >= 0, "--weight-decay must be 0 or more"),
            (0.0 <= self.cooldown <= 1.0, "--cooldown must be in [0, 1]"),
            (0.0 <= self.min_lr_ratio <= 1.0, "--min-lr-ratio must be in [0, 1]"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.keep in KEEP, f"--keep must be one of {', '.join(KEEP)}"),
            (
                self.seq_warmup is None or 0.0 <= self.seq_warmup < 1.0,
                "--seq-warmup must be in [0, 1)",
            ),
            (self.eval_batches >= 1, "--eval-batches must be at least 1"),
            (self.save_every is None or self.save_every >= 1, "--save-every must be at least 1"),
            (self.save_seconds is None or self.save_seconds > 0, "--save-every must be positive"),
            (self.skip_nonfinite >= 0, "--skip-nonfinite must be 0 or more"),
            (0.0 <= self.val_fraction < 1.0, "--val-fraction must be in [0, 1)"),
            (
                self.sample_every is None or self.sample_every >= 0,
                "--sample-every must be 0 or more",
            ),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}"),
            (self.log_every is None or self.log_every >= 1, "--log-every must be at least 1"),
            (
                all(t in TRACKERS for t in self.tracker or ()),
                f"--tracker must be one of {', '.join(TRACKERS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise GptError(message)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """'90s', '5m', '1.5h', or a bare number of seconds -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise GptError(f"cannot read duration {text!r} (examples: 30s, 5m, 1h)")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    if seconds <= 0:
        raise GptError(f"duration must be positive, got {text!r}")
    return seconds


# -- run config files: flat TOML ---------------------------------------------------------------


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is a one-line GptError."""
    # imported here: `gpt --help` imports this module (cli/trainflags.py), and needs no TOML
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise GptError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise GptError(f"{path}: is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise GptError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise GptError(f"{path}: not valid TOML ({exc})") from None


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_value(value: Any) -> str:
    """One TOML value: a string, a number, a bool, or a list of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # always has a '.' or an exponent, so it reads back as a float
    if isinstance(value, str):
        # JSON's escapes are TOML's for basic strings; non-ASCII stays as it is
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def to_toml(values: dict[str, Any]) -> str:
    """Flat `key = value` lines; None values are left out (TOML has no null)."""
    lines = []
    for key, value in values.items():
        if value is None:
            continue
        name = key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)
        lines.append(f"{name} = {toml_value(value)}")
    return "\n".join(lines) + ("\n" if lines else "")
