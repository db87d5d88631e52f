"""The per-token policy: what happens to one sequence's next token, wherever it is decoded.

A `Sequence` is one sample being generated: its tokens so far, its own random generator, the
running counts behind the penalties, its stop ids, stop strings and token budget, and (when it
has one) the `TextStream` that turns its tokens into text. `sample_rows` draws the next token of
many sequences from their rows of logits together. `gptcli.inference.generate` (one prompt,
one or more samples) and `gptcli.inference.batching` (many requests in one cache) both go
through these two, so a sequence gets the same tokens and text in either.

Knows sampling and text; nothing about models, caches or threads.
"""

from __future__ import annotations

import torch

from gptcli.inference.text import TextStream
from gptcli.sample import (
    SamplingSettings,
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    sample_next_token,
)


class TokenCounts:
    """One sequence's token counts behind the penalties, updated in place once per token.

    `seen` covers the prompt and the sample (the repetition penalty), `generated` only the
    sample (presence and frequency penalties).
    """

    def __init__(self, prompt: list[int], vocab: int, device: torch.device) -> None:
        self.seen = torch.zeros(1, vocab, device=device)
        self.seen[:, torch.tensor(prompt, device=device)] = 1.0
        self.generated = torch.zeros(1, vocab, device=device)

    def add(self, token: int) -> None:
        self.seen[0, token] = 1.0
        self.generated[0, token] += 1.0

    def apply(self, logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        """logits (1, V) -> penalized logits (1, V)."""
        logits = apply_repetition_penalty(logits, self.seen, settings.repetition_penalty)
        return apply_presence_frequency_penalties(
            logits, self.generated, settings.presence_penalty, settings.frequency_penalty
        )


class Sequence:
    """One sample: its tokens, sampling state and (with a stream) its text.

    `take(token)` applies the policy to a sampled token: a stop id ends the sequence and is not
    counted; otherwise the token is kept, its text (if any) returned, and the sequence ends at a
    stop string or when `max_tokens` are generated. `finish` says why it ended ("stop" or
    "length"), "" while it runs.
    """

    def __init__(
        self,
        prompt: list[int],
        settings: SamplingSettings,
        generator: torch.Generator | None = None,
        stop_ids: frozenset[int] = frozenset(),
        max_tokens: int | None = None,
        stream: TextStream | None = None,
    ) -> None:
        self.settings, self.generator, self.stop_ids = settings, generator, stop_ids
        self.max_tokens, self.stream = max_tokens, stream
        self.history = list(prompt)  # prompt window + tokens: for a window prefilled again
        self.generated = 0
        self.last = 0  # the newest token kept: the one to feed at the next step
        self.counts: TokenCounts | None = None
        self.piece = ""  # the text the newest token added
        self.finish = "" if max_tokens is None or max_tokens > 0 else "length"

    @property
    def finished(self) -> bool:
        return bool(self.finish)

    def take(self, token: int) -> str:
        """The sampled token -> the text it adds (maybe "", also kept as `piece`); may end the
        sequence."""
        self.piece = ""
        if token in self.stop_ids:
            self.finish = "stop"
            return ""
        self.generated += 1
        self.history.append(token)
        self.last = token
        if self.counts is not None:
            self.counts.add(token)
        if self.stream is not None:
            self.piece = self.stream.push(token)
            if self.stream.stopped:
                self.finish = "stop"
                return self.piece
        if self.max_tokens is not None and self.generated >= self.max_tokens:
            self.finish = "length"
        return self.piece

    def stop(self, reason: str = "stop") -> None:
        """Ends the sequence from outside (a caller's own stop rule, a cancelled request)."""
        self.finish = self.finish or reason

    def rest(self) -> str:
        """The text still held back, once the sequence has ended."""
        return self.stream.flush() if self.stream is not None else ""


def sample_rows(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
    """The next token of each sequence from its row of logits (len(seqs), V).

    Rows with the same settings and no penalties are filtered and normalised together, each
    still drawing from its own generator (so a row gets the token it would get alone); a row
    with penalties first applies its own running counts.
    """
    tokens = [0] * len(seqs)
    groups: dict[SamplingSettings, list[int]] = {}
    for row, seq in enumerate(seqs):
        settings = seq.settings
        if not settings.penalized:
            groups.setdefault(settings, []).append(row)
            continue
        if seq.counts is None:
            seq.counts = TokenCounts(seq.history, logits.size(-1), logits.device)
        penalized = seq.counts.apply(logits[row : row + 1], settings)
        tokens[row] = int(sample_next_token(penalized, settings, [seq.generator]).item())
    for settings, rows in groups.items():
        picked = logits[rows[0] : rows[0] + 1] if len(rows) == 1 else logits[rows]
        ids = sample_next_token(picked, settings, [seqs[r].generator for r in rows])
        for row, token in zip(rows, ids.view(-1).tolist(), strict=True):
            tokens[row] = token
    return tokens
