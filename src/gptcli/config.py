"""Model and training configuration: dataclasses, named presets, validation, JSON round-trips."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from gptcli.errors import GptError

FAMILIES = ("gpt2", "modern")


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
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise GptError(
                f"unknown model family {self.family!r} (choose from {', '.join(FAMILIES)})"
            )
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GptError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.vocab_size > 10_000_000 or self.block_size > 1_000_000 or self.n_embd > 100_000:
            raise GptError("model config: sizes are implausibly large")
        if self.n_embd % self.n_head:
            raise GptError(
                f"model config: n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.family == "modern" and (self.n_embd // self.n_head) % 2:
            raise GptError("model config: the modern family needs an even head size for rotary")
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


# Shapes only; vocab_size comes from the tokenizer unless the preset fixes it (gpt2).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
    "mini": dict(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "base": dict(n_layer=8, n_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
}
DEFAULT_PRESET = "mini"


@dataclass
class TrainConfig:
    """Everything that steers one training run (not the model's shape)."""

    max_steps: int | None = None
    max_time: float | None = None  # seconds
    batch_size: int = 16
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.99
    eval_every: int = 100
    eval_batches: int = 20
    seed: int = 1337
    device: str = "auto"
    val_fraction: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_steps is not None and self.max_steps < 1:
            raise GptError("--max-steps must be at least 1")
        if self.max_time is not None and self.max_time <= 0:
            raise GptError("--max-time must be positive")
        if self.batch_size < 1:
            raise GptError("--batch-size must be at least 1")
        if not self.lr > 0:
            raise GptError("--lr must be positive")
        if self.eval_every < 1:
            raise GptError("--eval-every must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise GptError("--val-fraction must be in [0, 1)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
