"""Pure functions from logits to the next token: temperature, top-k, top-p, min-p, penalties."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptcli.errors import GptError


@dataclass(frozen=True)
class SamplingSettings:
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature >= 0 or self.temperature == float("inf"):
            raise GptError(f"--temperature must be 0 or more, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise GptError(f"--top-k must be at least 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise GptError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            raise GptError(f"--min-p must be in [0, 1], got {self.min_p}")
        if self.repetition_penalty <= 0:
            raise GptError(f"--repetition-penalty must be positive, got {self.repetition_penalty}")


def apply_repetition_penalty(
    logits: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """CTRL-style penalty on tokens already seen; logits (B, V), previous (B, T)."""
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(1, previous, seen)


def sample_next_token(
    logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator | None = None
) -> torch.Tensor:
    """logits (B, V) -> token ids (B, 1). Temperature 0 is greedy."""
    if settings.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / settings.temperature
    if settings.top_k is not None and settings.top_k < logits.size(-1):
        kth = torch.topk(logits, settings.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if settings.min_p is not None and settings.min_p > 0:
        floor = probs.max(dim=-1, keepdim=True).values * settings.min_p
        probs = probs.masked_fill(probs < floor, 0.0)
    if settings.top_p is not None and settings.top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly better tokens
        sorted_probs = sorted_probs.masked_fill(before >= settings.top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator)
