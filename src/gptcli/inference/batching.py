"""Continuous batching: many sequences, each at its own length, decoded one step at a time together.

`RaggedKVCache` holds a fixed number of slots (rows), each with its own length; `BatchEngine`
owns one model and one such cache, and runs on its own thread: a request joins after its
prompt's prefill (run alone, then copied into free slots), every active sequence then advances
by one token in one shared forward pass per step, and a sequence that ends (stop token, stop
string, max_tokens, cancelled by its caller) leaves its slot at once without holding up the rest.

Per token each choice goes through the same policy as `gpt generate`'s samples
(`gptcli.inference.sequence`: penalties, its own generator, stop ids, stop strings, text), so a
request gets the tokens `gpt generate` prints, alone or beside others: on the CPU every
prefill and step goes through the native step (`gptcli.kernels.rows`), all the sequences of a
step in one pass over the weights, and a row's numbers there do not depend on the rows beside
it; the rows of a step are sampled together. Where the native step cannot run (a GPU, LoRA
adapters, no compiler), torch's batched path decodes instead; its float sums may differ from
a lone row's in the last bits, so where two logits nearly tie a sequence's tokens there may
part from `gpt generate`'s.

It knows nothing of HTTP or JSON: callers submit `Request`s and receive `Event`s through the
`sink` callback they give (called on the engine's thread).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from gptcli.errors import GptError
from gptcli.inference.sequence import Sequence, sample_rows
from gptcli.inference.text import TextStream
from gptcli.kernels.rows import NativeRows
from gptcli.model import GPT, KVCache
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer


class RaggedKVCache:
    """Keys and values for `slots` independent sequences, each with its own length.

    Decoding goes through the model's one-token static path (see `KVCache`): before each step
    the engine calls `select(rows, positions)`; every row then writes its new key and value at
    its own position, attends to its own keys only (under `mask`), and takes its own position's
    embedding or rotary angle (`index` holds one position per row).
    """

    static = True  # the model's one-token path with positions in `index` and keys under `mask`

    def __init__(self, model: GPT, slots: int) -> None:
        config = model.config
        p = next(model.parameters())
        dtype = torch.float32 if p.device.type == "cpu" else p.dtype  # as GPT.new_cache
        shape = (config.n_layer, slots, config.n_head, config.block_size, config.head_size)
        self.k = torch.zeros(shape, device=p.device, dtype=dtype)
        self.v = torch.zeros(shape, device=p.device, dtype=dtype)
        self.max_len = config.block_size
        self.slots = torch.arange(config.block_size, device=p.device)
        self.rows = torch.zeros(0, dtype=torch.long, device=p.device)
        self.index = torch.zeros(0, dtype=torch.long, device=p.device)
        self.span = 0  # keys attended to this step: the longest selected row, plus the new one
        self.first: int | None = None  # the first row, when the selected rows are contiguous
        self.mask: torch.Tensor | None = None

    def select(self, rows: list[int], positions: list[int]) -> None:
        """The slots that take part in the next step, and the position each one writes."""
        device = self.k.device
        self.rows = torch.tensor(rows, dtype=torch.long, device=device)
        self.index = torch.tensor(positions, dtype=torch.long, device=device)
        self.span = max(positions) + 1
        contiguous = rows == list(range(rows[0], rows[0] + len(rows)))
        self.first = rows[0] if contiguous else None
        if min(positions) == max(positions):
            self._mask = None  # every row sees all the keys up to the span: no mask needed
        else:  # (B, 1, 1, span): row b sees its keys up to its own position
            self._mask = self.slots[: self.span].view(1, 1, 1, -1) <= self.index.view(-1, 1, 1, 1)

    def static_mask(self) -> torch.Tensor | None:
        return self._mask

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """k, v (B, H, 1, D) of the selected rows -> their keys and values (B, H, span, D)."""
        self.k[layer, self.rows, :, self.index] = k[:, :, 0].to(self.k.dtype)
        self.v[layer, self.rows, :, self.index] = v[:, :, 0].to(self.v.dtype)
        if self.first is not None:  # a view, no copy
            end = self.first + self.rows.numel()
            return (
                self.k[layer, self.first : end, :, : self.span],
                self.v[layer, self.first : end, :, : self.span],
            )
        return (
            self.k[layer, :, :, : self.span].index_select(0, self.rows),
            self.v[layer, :, :, : self.span].index_select(0, self.rows),
        )

    def store(self, slot: int, source: KVCache, length: int, row: int = 0) -> None:
        """Copies row `row` of a prefilled cache, its first `length` positions, into `slot`."""
        self.k[:, slot, :, :length] = source.k[:, row, :, :length]
        self.v[:, slot, :, :length] = source.v[:, row, :, :length]

    def copy(self, slot: int, source: int, length: int) -> None:
        """Copies the first `length` positions of slot `source` into `slot`."""
        self.k[:, slot, :, :length] = self.k[:, source, :, :length]
        self.v[:, slot, :, :length] = self.v[:, source, :, :length]


@dataclass
class SlotCache:
    """One slot of a `RaggedKVCache` as the one-row native step sees a cache (`RowCache`): the
    cache's tensors, and the slot's length as `pos`, set before each call."""

    k: torch.Tensor
    v: torch.Tensor
    max_len: int
    pos: int = 0


# -- requests and their sequences -----------------------------------------------------------
@dataclass(frozen=True)
class Event:
    """What the engine tells a request's sink: text of one choice, its end, or a failure.

    kind "text": `text` of choice `choice`; "done": the choice ended with `finish` ("stop" or
    "length") after `tokens` tokens, whose ids are `ids` (`stop_token`: the stop id that ended
    it, which is not one of them); "error": the request failed (`text` says why), and no
    further events follow for it.
    """

    kind: str
    choice: int = 0
    text: str = ""
    finish: str = ""
    tokens: int = 0
    ids: tuple[int, ...] = ()
    stop_token: int | None = None


@dataclass
class Request:
    """One prompt and `n` choices to generate from it; choice i samples with seed + i."""

    prompt: list[int]
    max_tokens: int
    settings: SamplingSettings
    seed: int
    sink: Callable[[Event], None]
    n: int = 1
    stop_ids: frozenset[int] = frozenset()
    stops: tuple[str, ...] = ()
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Ends every choice at the engine's next step (safe from any thread)."""
        self.cancelled = True


class Choice(Sequence):
    """One choice of a request in a slot: a `Sequence` that tells the request's sink its text
    and its end."""

    def __init__(
        self,
        request: Request,
        choice: int,
        slot: int,
        window: list[int],
        tokenizer: Tokenizer,
        device: torch.device,
    ) -> None:
        generator = torch.Generator(device=device)
        generator.manual_seed(request.seed + choice)
        stream = TextStream(tokenizer, request.stops)
        super().__init__(
            window, request.settings, generator, request.stop_ids, request.max_tokens, stream
        )
        self.request, self.choice, self.slot = request, choice, slot
        self.length = len(window)  # tokens in the slot's cache
        self.start = len(window)  # where the generated tokens begin in `history`

    def advance(self, token: int) -> None:
        """The sampled token: emits its text, and the end when it ends the choice."""
        stop_token = token if token in self.stop_ids else None
        piece = self.take(token)
        if piece:
            self.request.sink(Event("text", self.choice, text=piece))
        if self.finished:
            rest = self.rest()
            if rest:
                self.request.sink(Event("text", self.choice, text=rest))
            ids = tuple(self.history[self.start :])
            done = Event("done", self.choice, finish=self.finish, tokens=self.generated, ids=ids)
            self.request.sink(replace(done, stop_token=stop_token))


GATHER_GAP_S = 0.015  # an idle engine's wait for the next request of a burst (_gather)
GATHER_MAX_S = 0.06  # and its longest wait for the whole burst
PREFILL_TOKENS = 2048  # prompt tokens in one native prefill pass (its buffers grow with them)


class QueueFull(GptError):
    """More requests wait than the engine's queue holds."""


class BatchEngine:
    """One model's decode loop on its own thread, shared by every request for that model."""

    def __init__(
        self, model: GPT, tokenizer: Tokenizer, max_batch: int = 8, max_queue: int = 32
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.context = model.config.block_size
        self.vocab = model.config.vocab_size
        self.cache = RaggedKVCache(model, max_batch)
        self.waiting: deque[Request] = deque()
        self.active: dict[int, Choice] = {}  # slot -> sequence
        self.refill: list[Choice] = []  # full sequences whose newest half is prefilled again
        self.lock = threading.Condition()
        self.stopping = False
        self.steps = 0  # decode steps run (one forward pass each)
        self.native_steps = 0  # of which through the native CPU step
        self.joins = 0  # passes that prefilled requests joining the batch
        self._rows: list[NativeRows | None] = []  # the native step on every slot, once made
        self.thread = threading.Thread(target=self._run, name="gpt-batch-engine", daemon=True)

    def start(self) -> BatchEngine:
        self.thread.start()
        return self

    def stop(self) -> None:
        """Ends the loop; requests still in flight get an error event."""
        with self.lock:
            self.stopping = True
            self.lock.notify()
        self.thread.join(timeout=10)

    def submit(self, request: Request) -> None:
        """Queues a request; raises QueueFull when the queue is full."""
        if request.n > self.max_batch:
            raise GptError(f"n is at most {self.max_batch} here")
        if not request.prompt:
            raise GptError("generation needs at least one prompt token")
        with self.lock:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            free = self.max_batch - len(self.active)  # the next step takes that many
            if len(self.waiting) - free >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self.waiting.append(request)
            self.lock.notify()

    @property
    def busy_slots(self) -> int:
        return len(self.active)

    # -- the loop (engine thread) -------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.lock:
                    while not (self.stopping or self.waiting or self.active):
                        self.lock.wait()
                    if self.stopping:
                        break
                    if not self.active:
                        self._gather()
                    joining = self._admit()
                try:
                    if joining:
                        self._join(joining)
                    self._prefill_again(self.refill)
                    self.refill.clear()
                    self._drop_ended()
                    if self.active:
                        self._step()
                        self._drop_ended()
                except Exception as exc:  # a bug or out of memory: fail these, keep serving
                    message = f"generation failed: {type(exc).__name__}: {exc}"
                    self._fail_all(message, joining)
        self._fail_all("the server is shutting down")

    def _gather(self) -> None:
        """An idle engine waits, briefly, for the rest of a burst before its first pass: clients
        that start together reach it some milliseconds apart, and those a pass misses wait for
        it to end. It waits while requests keep coming (each within GATHER_GAP_S of the last),
        at most GATHER_MAX_S, and not once the slots are spoken for (called under the lock)."""
        deadline = time.monotonic() + GATHER_MAX_S
        seen = len(self.waiting)
        while not self.stopping and sum(r.n for r in self.waiting) < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.lock.wait(min(left, GATHER_GAP_S))
            if len(self.waiting) == seen:  # a gap with no arrival: the burst is over
                break
            seen = len(self.waiting)

    def _admit(self) -> list[Request]:
        """Requests that fit in the free slots, in arrival order (called under the lock)."""
        joining = []
        free = self.max_batch - len(self.active)
        while self.waiting and (self.waiting[0].n <= free or self.waiting[0].cancelled):
            request = self.waiting.popleft()
            if not request.cancelled:
                joining.append(request)
                free -= request.n
        return joining

    def _free_slots(self) -> list[int]:
        return [s for s in range(self.max_batch) if s not in self.active]

    def _prefill(self, ids: list[int]) -> tuple[torch.Tensor, KVCache]:
        """Runs ids alone through the model: float32 logits of the last position (1, V)."""
        device = self.cache.k.device
        cache = self.model.new_cache(1, len(ids))
        logits, _ = self.model(torch.tensor([ids], device=device), cache=cache, last_only=True)
        return logits[:, -1].float(), cache

    def _prefill_together(self, windows: list[list[int]]) -> tuple[torch.Tensor, KVCache]:
        """Several prompts in one forward pass, each padded on the right to the longest: under
        the causal mask a row's real tokens never see its padding. Logits (B, V) are taken at
        each row's own last token."""
        device = self.cache.k.device
        longest = max(len(w) for w in windows)
        ids = torch.tensor([w + [0] * (longest - len(w)) for w in windows], device=device)
        cache = self.model.new_cache(len(windows), longest)
        hidden = self.model.hidden(ids, cache)  # (B, T, C)
        last = torch.tensor([len(w) - 1 for w in windows], device=device)
        rows = torch.arange(len(windows), device=device)
        return self.model.lm_head(hidden[rows, last]).float(), cache

    def _rows_step(self) -> NativeRows | None:
        """The native CPU step on any slots of the cache (made, and the library built, on
        first use), or None where torch's path must run (see `NativeRows.for_model`)."""
        if not self._rows:
            self._rows.append(NativeRows.for_model(self.model, self.cache))
        return self._rows[0]

    def _join(self, requests: list[Request]) -> None:
        """Prefills the requests that joined at this step, and puts their choices in slots.

        On the CPU the native step prefills them all in one pass (each prompt into its first
        choice's slot, as `gpt generate` prefills it: the same numbers), a few passes when the
        prompts are long. Elsewhere a request alone is prefilled alone; several arriving
        together share one forward pass of torch's. A request whose prompt holds a token the
        model does not know fails alone."""
        requests = [r for r in requests if self._known_tokens(r)]
        if not requests:
            return
        self.joins += 1
        windows = [r.prompt[-self.context :] for r in requests]  # the newest, as gpt generate
        slots = self._free_slots()
        firsts, at = [], 0  # each request's first slot
        for request in requests:
            firsts.append(slots[at])
            at += request.n
        native = self._rows_step()
        prefilled: KVCache | None = None
        if native is not None:
            logits = self._native_prefill(native, firsts, windows)
        elif len(requests) == 1:
            logits, prefilled = self._prefill(windows[0])
        else:
            logits, prefilled = self._prefill_together(windows)
        free = iter(slots)
        joined, rows = [], []
        for row, (request, window) in enumerate(zip(requests, windows, strict=True)):
            for choice in range(request.n):
                slot = next(free)
                if prefilled is not None:
                    self.cache.store(slot, prefilled, len(window), row)
                elif slot != firsts[row]:  # another choice: a copy of the first's prompt
                    self.cache.copy(slot, firsts[row], len(window))
                seq = Choice(request, choice, slot, window, self.tokenizer, self.cache.k.device)
                self.active[slot] = seq
                joined.append(seq)
                rows.append(row)
        for seq, token in zip(joined, sample_rows(joined, logits[rows]), strict=True):
            seq.advance(token)
            self._check_full(seq)

    def _known_tokens(self, request: Request) -> bool:
        """Whether every prompt token is in the model's vocabulary; if not, the request fails
        (alone: the others go on)."""
        if min(request.prompt) >= 0 and max(request.prompt) < self.vocab:
            return True
        why = f"token id out of range for the vocabulary of {self.vocab}"
        request.sink(Event("error", text=why))
        return False

    def _native_prefill(
        self, native: NativeRows, slots: list[int], windows: list[list[int]]
    ) -> torch.Tensor:
        """Prompt windows into their slots through the native step, together, in passes of
        at most PREFILL_TOKENS tokens (one prompt may be longer): logits (len(windows), V)."""
        out, start = [], 0
        while start < len(windows):
            end, tokens = start + 1, len(windows[start])
            while end < len(windows) and tokens + len(windows[end]) <= PREFILL_TOKENS:
                tokens += len(windows[end])
                end += 1
            out.append(native(slots[start:end], [0] * (end - start), windows[start:end]))
            start = end
        return out[0] if len(out) == 1 else torch.cat(out)

    def _check_full(self, seq: Choice) -> None:
        if not seq.finished and seq.length >= self.context:
            self.refill.append(seq)

    def _prefill_again(self, seqs: list[Choice]) -> None:
        """Sequences that filled the context go on from their newest half (as gpt generate
        does for a model with learned positions): through the native step together, where it
        runs."""
        seqs = [s for s in seqs if not (s.finished or s.request.cancelled)]
        if not seqs:
            return
        windows = [s.history[-max(1, self.context // 2) :] for s in seqs]
        native = self._rows_step()
        if native is not None:  # into their own slots, as gpt generate prefills it again
            logits = self._native_prefill(native, [s.slot for s in seqs], windows)
        else:
            parts = []
            for seq, window in zip(seqs, windows, strict=True):
                part, prefilled = self._prefill(window)
                self.cache.store(seq.slot, prefilled, len(window))
                parts.append(part)
            logits = torch.cat(parts)
        for seq, window in zip(seqs, windows, strict=True):
            seq.length = len(window)
        for seq, token in zip(seqs, sample_rows(seqs, logits), strict=True):
            seq.advance(token)
            self._check_full(seq)

    def _step(self) -> None:
        """One forward pass: every active sequence that has room advances by one token."""
        waiting_refill = {id(s) for s in self.refill}
        seqs = [s for _, s in sorted(self.active.items()) if id(s) not in waiting_refill]
        if not seqs:
            return
        native = self._rows_step()
        if native is not None:  # the native step, as `gpt generate` decodes: same numbers
            slots, lengths = [s.slot for s in seqs], [s.length for s in seqs]
            logits = native(slots, lengths, [[s.last] for s in seqs])
            self.native_steps += 1
        else:
            self.cache.select([s.slot for s in seqs], [s.length for s in seqs])
            tokens = torch.tensor([[s.last] for s in seqs], device=self.cache.k.device)
            logits, _ = self.model(tokens, cache=self.cache, last_only=True)
            logits = logits[:, -1].float()
        self.steps += 1
        for seq, token in zip(seqs, sample_rows(seqs, logits), strict=True):
            seq.length += 1
            seq.advance(token)
            self._check_full(seq)

    def _drop_ended(self) -> None:
        for slot, seq in list(self.active.items()):
            if seq.finished or seq.request.cancelled:
                del self.active[slot]

    def _fail_all(self, message: str, joining: list[Request] | None = None) -> None:
        """Ends every request in flight with an error: active, waiting, and those `joining`
        (taken from the queue this step, maybe not yet in a slot)."""
        failed = {id(s.request): s.request for s in self.active.values()}
        failed |= {id(r): r for r in joining or []}
        with self.lock:
            while self.waiting:
                request = self.waiting.popleft()
                failed[id(request)] = request
        self.active.clear()
        self.refill.clear()
        for request in failed.values():
            request.sink(Event("error", text=message))
