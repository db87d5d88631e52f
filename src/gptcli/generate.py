"""Prompt -> stream of tokens through the KV cache: prefill once, then one token per step."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from gptcli.model import GPT
from gptcli.sample import SamplingSettings, apply_repetition_penalty, sample_next_token
from gptcli.tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tps(self) -> float:
        return self.new_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        """One line for `--stats`."""
        return (
            f"prompt {self.prompt_tokens} tokens at {self.prefill_tps:,.1f} tok/s, "
            f"generated {self.new_tokens} tokens at {self.decode_tps:,.1f} tok/s"
        )

    def to_dict(self) -> dict[str, float]:
        """The fields `--json` reports."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "prefill_tokens_per_second": round(self.prefill_tps, 2),
            "decode_tokens_per_second": round(self.decode_tps, 2),
        }


@torch.inference_mode()
def generate_tokens(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    stop_ids: frozenset[int] = frozenset(),
    stats: GenerationStats | None = None,
) -> Iterator[int]:
    """Yields new token ids one by one (a stop id ends generation and is not yielded).

    When the context fills up, the newest half is kept and prefilled again, so generation can
    run past the model's context length.
    """
    stats = stats if stats is not None else GenerationStats()
    device = next(model.parameters()).device
    context = model.config.block_size
    tokens = list(prompt)[-(context - 1) :] if context > 1 else list(prompt)[-1:]
    stats.prompt_tokens = len(tokens)
    history = torch.tensor([tokens], dtype=torch.long, device=device)
    cache = model.new_cache(1, context)

    start = time.perf_counter()
    logits, _ = model(history, cache=cache, last_only=True)
    stats.prefill_seconds = time.perf_counter() - start
    decode = 0.0
    for step in range(max_new_tokens):
        tick = time.perf_counter()
        step_logits = apply_repetition_penalty(
            logits[:, -1, :], history, settings.repetition_penalty
        )
        next_id = sample_next_token(step_logits, settings, generator)
        token = int(next_id.item())
        decode += time.perf_counter() - tick
        if token in stop_ids:
            break
        stats.new_tokens += 1
        stats.decode_seconds = decode
        yield token
        if step == max_new_tokens - 1:
            break
        tick = time.perf_counter()
        if settings.repetition_penalty != 1.0:
            history = torch.cat([history, next_id], dim=1)[:, -context:]
        tokens.append(token)
        if cache.pos >= context:  # full: keep the newest half and prefill it again
            tokens = tokens[-(context // 2 or 1) :]
            cache.reset()
            logits, _ = model(torch.tensor([tokens], device=device), cache=cache, last_only=True)
        else:
            logits, _ = model(next_id, cache=cache, last_only=True)
        decode += time.perf_counter() - tick
    stats.decode_seconds = decode


def split_at_stop(text: str, stops: list[str], final: bool = False) -> tuple[str, str, bool]:
    """(text safe to emit, text held back, whether a stop string was found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    if final:
        return text, "", False
    hold = 0  # the longest suffix that is a prefix of some stop string
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


class TextStream:
    """Token ids -> text pieces that never split a UTF-8 character nor show part of a stop string.

    After a stop string is found, `stopped` is true and the text before it has all been emitted.
    """

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stops = [s for s in stops if s]
        self.pending = ""  # held back while it could be the start of a stop string
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.push(token_id)
        emit, self.pending, self.stopped = split_at_stop(self.pending, self.stops)
        return emit

    def flush(self) -> str:
        """The rest of the text, once generation is over."""
        if self.stopped:
            return ""
        emit, _, self.stopped = split_at_stop(
            self.pending + self.decoder.flush(), self.stops, final=True
        )
        self.pending = ""
        return emit
