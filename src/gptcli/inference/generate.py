"""Prompt -> tokens through the KV cache: prefill once, then one token per step, for one sample
or several from the same prompt; the text loop every single-prompt caller streams through.

Each sample is a `gptcli.inference.sequence.Sequence`, which decides what its next token does
(penalties, stop ids, stop strings, budget, text); this module runs the model for them: the
native CPU step (`gptcli.kernels`) where it runs, torch's forward otherwise, CUDA graphs on
request. Knows nothing of terminals, HTTP or the store.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from collections.abc import Sequence as Seq
from dataclasses import dataclass

import torch

from gptcli.errors import GptError
from gptcli.inference.sequence import Sequence, sample_rows
from gptcli.kernels.rows import NativeRows
from gptcli.kernels.step import NativeDecodeStep
from gptcli.model import GPT, KVCache
from gptcli.sample import SamplingSettings


# -- statistics -----------------------------------------------------------------------------
@dataclass
class GenerationStats:
    """Token counts and timings of one generation (a batch of samples counts as one).

    Prefill is the prompt's forward pass; decode is the rest, from there to the last token. A
    sample's first token comes from the prefill, so decode speed counts the tokens after it.
    """

    prompt_tokens: int = 0
    generated_tokens: int = 0  # all samples together
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_tokens: int = 0  # generated tokens after each sample's first

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else 0.0

    def summary(self) -> str:
        """One line for `--stats`."""
        return (
            f"prompt {self.prompt_tokens} tokens, prefill {self.prefill_tokens_per_s:,.1f} "
            f"tok/s · generated {self.generated_tokens} tokens, decode "
            f"{self.decode_tokens_per_s:,.1f} tok/s"
        )

    def to_dict(self) -> dict[str, float]:
        """The fields `--json` reports."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 2),
            "decode_tokens_per_s": round(self.decode_tokens_per_s, 2),
        }


# -- the decode loop ------------------------------------------------------------------------
class StaticDecodeStep:
    """One-token steps in the static cache layout: on CUDA captured once as a CUDA graph and
    replayed, which removes the launch cost of the few hundred small kernels of a step; run
    eagerly otherwise (how the tests check this path on a CPU)."""

    def __init__(self, model: GPT, cache: KVCache, batch: int, capture: bool) -> None:
        self.model, self.cache = model, cache
        self.tokens = torch.zeros(batch, 1, dtype=torch.long, device=cache.k.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits = torch.empty(0)
        if capture:
            self.capture()

    def run(self) -> torch.Tensor:
        self.cache.static = True
        try:
            logits, _ = self.model(self.tokens, cache=self.cache, last_only=True)
        finally:
            self.cache.static = False
        return logits[:, -1].float()

    def capture(self) -> None:
        # Warm-up steps only write the slot that the first real step writes again.
        self.cache.index.fill_(self.cache.pos)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self.run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self.run()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, 1) -> float32 logits (B, V); the result is overwritten by the next call."""
        if self.cache.pos >= self.cache.max_len:
            raise GptError("the static cache is full: prefill a shorter window first")
        self.tokens.copy_(tokens)
        self.cache.index.fill_(self.cache.pos)
        if self.graph is None:
            logits = self.run()
        else:
            self.graph.replay()
            logits = self.logits
        self.cache.pos += 1
        return logits


def last_logits(model: GPT, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """ids (B, T) after the cached tokens -> float32 logits of the last position (B, V)."""
    logits, _ = model(ids, cache=cache, last_only=True)
    return logits[:, -1].float()


@torch.inference_mode()
def decode(
    model: GPT,
    prompt: list[int],
    seqs: list[Sequence],
    stats: GenerationStats | None = None,
    static: bool = False,
) -> Iterator[list[int | None]]:
    """Yields, step by step, the token each sequence kept (None once it has ended: a stop id
    ends a sequence and is not yielded). Stops when every sequence has ended; a caller may end
    one itself (`Sequence.stop`) between steps. A sequence with a stream has its text in
    `piece` after each step and the rest in `rest()` at the end.

    The prompt is prefilled once for all sequences, cut to its newest `block_size` tokens. Past
    the context, a rotary model slides its window token by token (its cache is a ring); a model
    with learned positions, or a static cache, prefills the newest half-context again.

    `static` runs the one-token steps in the static cache layout, captured once and replayed
    as a CUDA graph on CUDA (`--cuda-graphs`), eagerly elsewhere.
    """
    stats = stats if stats is not None else GenerationStats()
    samples = len(seqs)
    device = next(model.parameters()).device
    context = model.config.block_size
    window = list(prompt)[-context:]
    if not window:
        raise GptError("generation needs at least one prompt token")
    stats.prompt_tokens = len(window)
    for seq in seqs:  # the penalties count the prompt the model sees
        if not seq.generated:
            seq.history = list(window)
    cache = model.new_cache(samples, context, zeroed=static)  # static steps read every slot
    slides = model.rotary and not static

    # (found, and on first use built, before the clock starts: the build is not the prefill's)
    native = NativeDecodeStep.for_model(model, cache) if not static else None
    together = NativeRows.for_model(model, cache) if samples > 1 and not static else None
    start = time.perf_counter()
    prompt_ids = torch.tensor([window], device=device)
    if together is not None:  # the prompt into row 0, copied into the others
        logits = together([0], [0], [window])
        cache.k[:, 1:, :, : len(window)] = cache.k[:, :1, :, : len(window)]
        cache.v[:, 1:, :, : len(window)] = cache.v[:, :1, :, : len(window)]
        cache.pos = len(window)
    else:
        logits = native(prompt_ids) if native else last_logits(model, prompt_ids, cache)
    logits = logits.expand(samples, -1)  # (samples, V): one prefill serves every sample
    step: StaticDecodeStep | NativeDecodeStep | None = native
    if static:
        step = StaticDecodeStep(model, cache, samples, capture=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.prefill_seconds = time.perf_counter() - start

    busy = 0.0
    first = True
    fed = [window[-1]] * samples  # each row's token for the next step (ended rows: any)
    while not all(seq.finished for seq in seqs):
        tick = time.perf_counter()
        rows = [row for row, seq in enumerate(seqs) if not seq.finished]
        picked = logits if len(rows) == samples else logits[rows]
        out: list[int | None] = [None] * samples
        for row, token in zip(rows, sample_rows([seqs[r] for r in rows], picked), strict=True):
            seq = seqs[row]
            kept = seq.generated
            seq.take(token)
            fed[row] = token
            if seq.generated > kept:
                out[row] = token
                stats.generated_tokens += 1
                stats.decode_tokens += int(not first)
        first = False
        busy += time.perf_counter() - tick
        stats.decode_seconds = busy
        yield out
        if all(seq.finished for seq in seqs):
            break
        tick = time.perf_counter()
        if together is not None:  # the samples still going, in one native pass
            logits = native_rows_step(together, cache, context, slides, seqs, logits)
        elif cache.pos >= context and not slides:  # full: prefill the newest half again
            cache.reset()
            keep = max(1, context // 2)
            live = next(s.history for s in seqs if not s.finished)
            recent = [(s.history if len(s.history) >= keep else live)[-keep:] for s in seqs]
            ids = torch.tensor(recent, device=device)
            logits = native(ids) if native else last_logits(model, ids, cache)
        else:
            next_ids = torch.tensor(fed, device=device).view(samples, 1)
            logits = step(next_ids) if step is not None else last_logits(model, next_ids, cache)
        busy += time.perf_counter() - tick


def native_rows_step(
    rows: NativeRows,
    cache: KVCache,
    context: int,
    slides: bool,
    seqs: list[Sequence],
    logits: torch.Tensor,
) -> torch.Tensor:
    """`decode`'s next step through the native step on the cache's rows: each sequence not
    yet ended feeds its newest token (or, full without a ring to slide, its newest
    half-context again from position 0). -> logits (samples, V); an ended sequence's row
    keeps its old ones."""
    live = [r for r, seq in enumerate(seqs) if not seq.finished]
    if cache.pos >= context and not slides:
        keep = max(1, context // 2)
        fresh = rows(live, [0] * len(live), [seqs[r].history[-keep:] for r in live])
        cache.pos = keep
    else:
        fresh = rows(live, [cache.pos] * len(live), [[seqs[r].last] for r in live])
        cache.pos += 1
    if len(live) == logits.size(0):
        return fresh
    logits = logits.clone()  # (an expanded prefill's rows share their memory)
    logits[live] = fresh
    return logits


def generate_batch(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    generators: Seq[torch.Generator] | None = None,
    stop_ids: frozenset[int] = frozenset(),
    stats: GenerationStats | None = None,
    static: bool = False,
) -> Iterator[list[int | None]]:
    """`decode` of one sample per generator (one sample when there are none), token ids only."""
    seqs = [
        Sequence(prompt, settings, generator, stop_ids, max_new_tokens)
        for generator in (generators or [None])
    ]
    return decode(model, prompt, seqs, stats, static)


def generate_tokens(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    generator: torch.Generator | None = None,
    stop_ids: frozenset[int] = frozenset(),
    stats: GenerationStats | None = None,
    static: bool = False,
) -> Iterator[int]:
    """One sample's new token ids, one by one (see `decode`)."""
    generators = [generator] if generator is not None else None
    for tokens in generate_batch(
        model, prompt, max_new_tokens, settings, generators, stop_ids, stats, static
    ):
        if tokens[0] is None:
            return
        yield tokens[0]


def stream_text(
    model: GPT,
    prompt: list[int],
    seq: Sequence,
    stats: GenerationStats | None = None,
    static: bool = False,
) -> Iterator[str]:
    """The text loop: one sequence (with a stream) decoded from `prompt`, as text pieces that
    never split a character nor show a stop string; `seq.finish` says why it ended."""
    for _ in decode(model, prompt, [seq], stats, static):
        if seq.piece:
            yield seq.piece
    rest = seq.rest()
    if rest:
        yield rest
