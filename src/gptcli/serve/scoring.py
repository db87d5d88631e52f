"""Log-probabilities for `logprobs`: each token's, and its likeliest alternatives, in OpenAI's
shapes (the legacy completions object, and the chat one).

Scoring is its own forward pass of torch over the prompt and the generated tokens, apart from
the generation path (the batching engine, the native step): whatever draws the tokens, their
log-probabilities are the model's own, as `gpt eval` computes them, at every position a prompt
has (which `echo` with `logprobs` asks for, and which lm-evaluation-harness reads to score).

It knows the model and tokenizer, nothing of HTTP.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from typing import Any

import torch

from gptcli.model import GPT
from gptcli.tokenizer import Tokenizer

LOGITS_BUDGET = 1 << 26  # floats of log-probabilities held at once (256 MiB)


@dataclass(frozen=True)
class TokenScore:
    """A token, its log-probability (None for a first token, which nothing predicts) and the
    likeliest tokens at its position, best first."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] = ()


@torch.inference_mode()
def score_tokens(model: GPT, ids: list[int], first: int, top: int) -> list[TokenScore]:
    """Scores of ids[first:], each predicted from the tokens before it.

    A sequence longer than the context goes through windows of the context's length, each
    scoring the tokens it holds as targets after the previous window's, so every token sees at
    least the context's tokens before it, up to a whole context (the newest window first)."""
    context = model.config.block_size
    device = next(model.parameters()).device
    scores: dict[int, TokenScore] = {}
    if first == 0:
        scores[0] = TokenScore(ids[0], None)
    end = len(ids)
    low = max(first, 1)
    while end > low:
        start = max(0, end - context)
        step = max(1, LOGITS_BUDGET // (model.config.vocab_size * 4))
        for lo in range(max(start + 1, low), end, step):  # targets lo..hi-1, a piece at a time
            hi = min(end, lo + step)
            x = torch.tensor([ids[start:hi]], device=device)
            logits, _ = model(x)
            logprobs = torch.log_softmax(logits[0, lo - start - 1 : hi - start - 1].float(), -1)
            targets = torch.tensor(ids[lo:hi], device=device)
            chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
            best = logprobs.topk(top, dim=-1) if top else None
            for i, position in enumerate(range(lo, hi)):
                alternatives: tuple[tuple[int, float], ...] = ()
                if best is not None:
                    alternatives = tuple(
                        zip(best.indices[i].tolist(), best.values[i].tolist(), strict=True)
                    )
                scores[position] = TokenScore(ids[position], chosen[i], alternatives)
        if start == 0:
            break
        end = start + 1
    return [scores[p] for p in range(first, len(ids))]


def piece(tokenizer: Tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    raw = tokenizer.token_bytes(token)
    return raw if raw else piece(tokenizer, token).encode("utf-8")  # special tokens: their name


def completion_logprobs(tokenizer: Tokenizer, scores: list[TokenScore]) -> dict[str, Any]:
    """OpenAI's legacy `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset.

    `text_offset` counts characters of the text the tokens make, from the first one's start."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offsets, chars = [], 0
    for score in scores:
        offsets.append(chars)
        chars += len(decoder.decode(token_bytes(tokenizer, score.token)))

    def alternatives(score: TokenScore) -> dict[str, float] | None:
        if score.logprob is None:
            return None
        shown: dict[str, float] = {}
        for token, logprob in score.top:
            shown.setdefault(piece(tokenizer, token), logprob)  # the likeliest of equal texts
        return shown

    return {
        "tokens": [piece(tokenizer, s.token) for s in scores],
        "token_logprobs": [s.logprob for s in scores],
        "top_logprobs": [alternatives(s) for s in scores],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Tokenizer, scores: list[TokenScore]) -> dict[str, Any]:
    """The chat shape: `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}`."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        return {
            "token": piece(tokenizer, token),
            "logprob": logprob,
            "bytes": list(token_bytes(tokenizer, token)),
        }

    return {
        "content": [
            entry(s.token, s.logprob or 0.0) | {"top_logprobs": [entry(t, lp) for t, lp in s.top]}
            for s in scores
        ],
        "refusal": None,
    }
