"""Loss, perplexity and bits per byte of a model on a token stream, with a sliding window.

Scored tokens: every token but the first, which has no context to be predicted from (no BOS
token is prepended). Bits per byte divide the summed loss by the UTF-8 bytes of the whole text,
which makes models with different tokenizers comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.errors import GptError
from gptcli.model import GPT

LOGITS_BUDGET = 1 << 26  # floats of logits per forward pass, to bound memory


@dataclass
class LMScore:
    nll: float  # summed negative log-likelihood, nats
    tokens: int
    n_bytes: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float:
        return self.nll / (self.n_bytes * math.log(2)) if self.n_bytes else float("nan")

    def __add__(self, other: LMScore) -> LMScore:
        return LMScore(
            self.nll + other.nll, self.tokens + other.tokens, self.n_bytes + other.n_bytes
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.n_bytes,
        }


def windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored): inputs tokens[begin:end] predict tokens[begin+1:end+1];
    targets before `first_scored` were already scored by an earlier window."""
    scored_up_to = 0  # targets with index <= this are done (index 0 is never a target)
    begin = 0
    while scored_up_to < n_tokens - 1:
        end = min(begin + context, n_tokens - 1)
        yield begin, end, scored_up_to + 1
        scored_up_to = end
        begin = max(begin + stride, 0)
        if begin + context > n_tokens - 1:  # the last window ends at the text's end
            begin = max(n_tokens - 1 - context, 0)


@torch.inference_mode()
def score_tokens(
    model: GPT,
    tokens: np.ndarray,
    n_bytes: int,
    stride: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LMScore:
    """Sums the loss of every token after the first, each predicted once."""
    context = model.config.block_size
    stride = stride or max(context // 2, 1)
    if not 1 <= stride <= context:
        raise GptError(f"--stride must be between 1 and the context length ({context})")
    device = next(model.parameters()).device
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(ids)
    if n < 2:
        return LMScore(0.0, 0, n_bytes)
    batch_rows = max(1, LOGITS_BUDGET // (context * model.config.vocab_size))
    plan = list(windows(n, context, stride))
    nll = 0.0
    counted = 0
    for first in range(0, len(plan), batch_rows):
        group = plan[first : first + batch_rows]
        length = max(end - begin for begin, end, _ in group)
        x = torch.zeros(len(group), length, dtype=torch.long)
        y = torch.full((len(group), length), -100, dtype=torch.long)
        for row, (begin, end, scored_from) in enumerate(group):
            x[row, : end - begin] = ids[begin:end]
            targets = ids[begin + 1 : end + 1].clone()
            skip = scored_from - (begin + 1)
            targets[:skip] = -100
            y[row, : end - begin] = targets
        logits, _ = model(x.to(device))
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="sum"
        )
        nll += loss.item()
        counted += int((y != -100).sum())
        if on_progress:
            on_progress(min(first + batch_rows, len(plan)), len(plan))
    return LMScore(nll, counted, n_bytes)
