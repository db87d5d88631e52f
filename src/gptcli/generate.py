"""Prompt -> tokens through the KV cache: prefill once, then one token per step, for one sample or
a batch of them; stop strings and UTF-8-safe text streaming; the inference settings (weight
dtype, CUDA graphs).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from gptcli.errors import GptError
from gptcli.hardware import cpu_has_fast_bf16, cpu_is_amd
from gptcli.kernels.step import NativeDecodeStep
from gptcli.model import GPT, KVCache
from gptcli.sample import (
    SamplingSettings,
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    sample_next_token,
)
from gptcli.tokenizer import StreamDecoder, Tokenizer

DTYPES = ("auto", "float32", "bfloat16", "int8")


# -- inference settings ---------------------------------------------------------------------
def inference_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The weight dtype for `--dtype`: `auto` is bfloat16 on CUDA GPUs that have it and on CPUs
    with native bfloat16 arithmetic (half the bytes to read per token), float32 elsewhere.
    `int8` (torch.int8) is weight-only int8, never picked by `auto`: see `prepare_for_inference`.
    """
    if choice not in DTYPES:
        raise GptError(f"unknown dtype {choice!r} (choose {', '.join(DTYPES)})")
    if choice != "auto":
        return getattr(torch, choice)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def int8_activations(device: torch.device) -> torch.dtype:
    """The activation (and unquantized parameter) dtype under int8 weights: bfloat16 on the CPU,
    where ATen's int8 matmul is about ten times faster with it than with float32; elsewhere what
    `auto` picks."""
    return torch.bfloat16 if device.type == "cpu" else inference_dtype("auto", device)


def prepare_for_inference(model: GPT, dtype: torch.dtype) -> GPT:
    """Evaluation mode, weights in `dtype`, packed for the fastest kernel measured for them
    (`gptcli.model.PackedWeight`); the model is changed in place and returned.

    torch.int8: every `Linear`, the head included, runs on int8 weights with per-output-row
    scales; the other parameters (embeddings, norms, biases) and the activations are in
    `int8_activations`' dtype. bfloat16 on the CPU: oneDNN on prepacked weights. float32 on the
    CPU: MKL's batched GEMM over row blocks on AMD CPUs, plain `F.linear` (MKL's GEMV) on the
    others, as each measured fastest.
    """
    model.eval()
    device = next(model.parameters()).device
    weights = int8_activations(device) if dtype == torch.int8 else dtype
    if next(model.parameters()).dtype != weights:
        model.cast_weights(weights)
    kind = None
    if dtype == torch.int8:
        kind = "int8"
    elif dtype == torch.bfloat16 and device.type == "cpu" and torch.backends.mkldnn.is_available():
        kind = "onednn"
    elif dtype == torch.float32 and device.type == "cpu" and cpu_is_amd():
        kind = "rowblocks" if torch.backends.mkl.is_available() else None
    model.pack_for_inference(kind, weights)
    return model


def use_cuda_graphs(choice: bool | None, device: torch.device) -> bool:
    """`--cuda-graphs`: on by default on CUDA, where it removes the per-kernel launch cost that
    dominates one-token steps; asking for it elsewhere is an error."""
    if choice is None:
        return device.type == "cuda"
    if choice and device.type != "cuda":
        raise GptError("--cuda-graphs needs a CUDA device")
    return choice


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
class TokenCounts:
    """Per-sample token counts behind the penalties, updated in place once per step.

    `seen` covers the prompt and the samples (the repetition penalty), `generated` only the
    samples (presence and frequency penalties).
    """

    def __init__(self, prompt: list[int], samples: int, vocab: int, device: torch.device) -> None:
        self.seen = torch.zeros(samples, vocab, device=device)
        self.seen[:, torch.tensor(prompt, device=device)] = 1.0
        self.generated = torch.zeros(samples, vocab, device=device)
        self.ones = torch.ones(samples, 1, device=device)

    def add(self, ids: torch.Tensor) -> None:
        """ids (B, 1): each sample's newest token."""
        self.seen.scatter_(1, ids, 1.0)
        self.generated.scatter_add_(1, ids, self.ones)

    def apply(self, logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
        logits = apply_repetition_penalty(logits, self.seen, settings.repetition_penalty)
        return apply_presence_frequency_penalties(
            logits, self.generated, settings.presence_penalty, settings.frequency_penalty
        )


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
def generate_batch(
    model: GPT,
    prompt: list[int],
    max_new_tokens: int,
    settings: SamplingSettings,
    generators: Sequence[torch.Generator] | None = None,
    stop_ids: frozenset[int] = frozenset(),
    stats: GenerationStats | None = None,
    static: bool = False,
    done: list[bool] | None = None,
) -> Iterator[list[int | None]]:
    """Yields, step by step, each sample's next token id, or None once it has ended (a stop id
    ends a sample and is not yielded). Stops when every sample has ended or after
    `max_new_tokens` steps. The caller may end samples too (say, at a stop string) by setting
    their entries of `done`, a list of one flag per sample.

    One sample per generator (one sample when there are none); the prompt is prefilled once for
    all of them. The prompt is cut to its newest `block_size` tokens. Past the context, a rotary
    model slides its window token by token (its cache is a ring); a model with learned
    positions, or a static cache, prefills the newest half-context again.

    `static` runs the one-token steps in the static cache layout, captured once and replayed
    as a CUDA graph on CUDA (`--cuda-graphs`), eagerly elsewhere.
    """
    stats = stats if stats is not None else GenerationStats()
    samples = len(generators) if generators else 1
    device = next(model.parameters()).device
    context = model.config.block_size
    window = list(prompt)[-context:]
    if not window:
        raise GptError("generation needs at least one prompt token")
    stats.prompt_tokens = len(window)
    history = [list(window) for _ in range(samples)]  # for the windows prefilled again
    counts = None
    if settings.penalized:
        counts = TokenCounts(window, samples, model.config.vocab_size, device)
    cache = model.new_cache(samples, context, zeroed=static)  # static steps read every slot
    slides = model.rotary and not static

    # (found, and on first use built, before the clock starts: the build is not the prefill's)
    native = NativeDecodeStep.for_model(model, cache) if not static else None
    start = time.perf_counter()
    prompt_ids = torch.tensor([window], device=device)
    logits = native(prompt_ids) if native else last_logits(model, prompt_ids, cache)
    logits = logits.expand(samples, -1)  # (samples, V): one prefill serves every sample
    step: StaticDecodeStep | NativeDecodeStep | None = native
    if static:
        step = StaticDecodeStep(model, cache, samples, capture=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    stats.prefill_seconds = time.perf_counter() - start

    done = done if done is not None else [False] * samples
    busy = 0.0
    for index in range(max_new_tokens):
        tick = time.perf_counter()
        if counts is not None:
            logits = counts.apply(logits, settings)
        next_ids = sample_next_token(logits, settings, generators)  # (samples, 1)
        out: list[int | None] = []
        for row, token in enumerate(next_ids.view(-1).tolist()):
            if done[row] or token in stop_ids:
                done[row] = True
                out.append(None)
                continue
            out.append(token)
            history[row].append(token)
            stats.generated_tokens += 1
            stats.decode_tokens += int(index > 0)
        busy += time.perf_counter() - tick
        stats.decode_seconds = busy
        yield out
        if all(done) or index == max_new_tokens - 1:
            break
        tick = time.perf_counter()
        if counts is not None:
            counts.add(next_ids)
        if cache.pos >= context and not slides:  # full: prefill the newest half again
            cache.reset()
            keep = max(1, context // 2)
            recent = torch.tensor([h[-keep:] for h in history], device=device)
            logits = native(recent) if native else last_logits(model, recent, cache)
        elif step is not None:
            logits = step(next_ids)
        else:
            logits = last_logits(model, next_ids, cache)
        busy += time.perf_counter() - tick


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
    """One sample's new token ids, one by one (see `generate_batch`)."""
    generators = [generator] if generator is not None else None
    for tokens in generate_batch(
        model, prompt, max_new_tokens, settings, generators, stop_ids, stats, static
    ):
        if tokens[0] is None:
            return
        yield tokens[0]


# -- text -----------------------------------------------------------------------------------
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
