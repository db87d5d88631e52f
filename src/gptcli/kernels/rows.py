"""`NativeRows`: the native CPU step (`decode.c`'s `gptcli_forward_rows`) on several rows of one
KV cache at once, each row with its own tokens and its own position.

One call runs one pass over the weights for every token of every row: B sequences' decode
steps (one token each), the prefills of prompts that arrived together (a chunk each), or both.
A row's logits are the same, to the bit, whichever rows share its call (the kernel sums each
token's products in the same order whatever the batch), so a sequence decoded beside others
gets the tokens it gets alone. The callers (`gptcli.inference.batching`'s engine, `decode`)
keep each row's length; this module only checks what the kernel must not be given (token ids past
the vocabulary, a chunk past the context or around the ring, a row twice) and raises
`GptError` before the call. Where the native step cannot run, `for_model` is None.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch

from gptcli.errors import GptError
from gptcli.kernels.abi import P, Rows
from gptcli.kernels.step import NativeDecodeStep, native_for
from gptcli.model import GPT, rotary_at


class CacheLike:
    """What `NativeRows` reads of a cache: float32 k and v (layers, rows, heads, max_len,
    head_size) and max_len (a `KVCache`, or `gptcli.inference.batching.RaggedKVCache`)."""

    k: torch.Tensor
    v: torch.Tensor
    max_len: int


class NativeRows:
    """The native step over any rows of `cache`; `__call__` feeds them and returns logits."""

    @staticmethod
    def for_model(model: GPT, cache: CacheLike) -> NativeRows | None:
        """The native step for this model on this cache's rows, or None where torch's path
        must run (not on the CPU, a cache that is not float32, LoRA adapters or other
        wrappers, no native library; as `NativeDecodeStep.for_model`)."""
        found = native_for(model, cache)
        return NativeRows(model, cache, *found) if found else None

    def __init__(self, model: GPT, cache: CacheLike, wtype: torch.dtype, lib: ctypes.CDLL) -> None:
        self.model, self.cache, self.lib = model, cache, lib
        # the model's structure, pointing at row 0 of the cache (rows are offsets from there)
        self.one = NativeDecodeStep(model, cache, wtype, lib)  # type: ignore[arg-type]
        lib.gptcli_forward_rows.restype = ctypes.c_int
        self.slots = cache.k.size(1)
        self.row_stride = cache.k.stride(1)
        config = model.config
        self.vocab = config.vocab_size
        limit = cache.max_len if model.rotary else min(config.block_size, cache.max_len)
        self.limit = limit  # positions a row may reach (a rotary model's ring: per chunk)

    def bad_tokens(self, ids: Sequence[int]) -> str | None:
        """Why these token ids cannot be fed (one past the vocabulary), or None."""
        if ids and not 0 <= min(ids) <= max(ids) < self.vocab:
            return f"token id out of range for the vocabulary of {self.vocab}"
        return None

    def __call__(
        self, rows: Sequence[int], positions: Sequence[int], tokens: Sequence[Sequence[int]]
    ) -> torch.Tensor:
        """Feeds tokens[i] to cache row rows[i] after the positions[i] tokens it holds ->
        float32 logits (len(rows), V) of each row's last token. Other rows are not touched."""
        config = self.model.config
        if not rows or len(rows) != len(positions) or len(rows) != len(tokens):
            raise GptError("the native step needs one position and some tokens for each row")
        if len(set(rows)) != len(rows) or not 0 <= min(rows) <= max(rows) < self.slots:
            raise GptError(f"the rows fed must be distinct rows of the {self.slots} cached")
        flat: list[int] = []
        for pos, ids in zip(positions, tokens, strict=True):
            count = len(ids)
            if count < 1 or pos < 0:
                raise GptError("each row needs at least one new token")
            if count > 1 and pos + count > self.cache.max_len:  # as KVCache.update refuses it
                raise GptError(
                    f"a chunk of {count} tokens does not fit in the cache of {self.cache.max_len}"
                )
            if not self.model.rotary and pos + count > self.limit:
                raise GptError(f"sequence of {pos + count} tokens exceeds the context of "
                               f"{self.limit}")  # fmt: skip
            flat += ids
        why = self.bad_tokens(flat)
        if why:
            raise GptError(why)
        counts = [len(ids) for ids in tokens]
        cos = sin = None
        if self.model.rotary:
            cos, sin = self.rope(positions, counts)
        ids_t = torch.tensor(flat, dtype=torch.int64)
        meta = torch.tensor([list(rows), list(positions), counts], dtype=torch.int64)
        n = len(rows)
        struct = Rows(
            n=n,
            row=meta[0].data_ptr(),
            pos=meta[1].data_ptr(),
            count=meta[2].data_ptr(),
            row_stride=self.row_stride,
        )
        logits = torch.empty(n, config.vocab_size)
        failed = self.lib.gptcli_forward_rows(
            ctypes.byref(self.one.struct),
            ctypes.byref(struct),
            P(ids_t.data_ptr()),
            P(cos.data_ptr() if cos is not None else None),
            P(sin.data_ptr() if sin is not None else None),
            P(logits.data_ptr()),
            ctypes.c_int(torch.get_num_threads()),
        )
        if failed:
            raise MemoryError("the native step could not allocate its buffers")
        return logits

    def rope(
        self, positions: Sequence[int], counts: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (tokens, head_size / 2) at every token's position, as the one-row step
        takes them: from the model's tables inside the context, `rotary_at` past it."""
        model, config = self.model, self.model.config
        if all(p + c <= config.block_size for p, c in zip(positions, counts, strict=True)):
            at = torch.tensor(
                [p + i for p, c in zip(positions, counts, strict=True) for i in range(c)]
            )
            return model.rope_cos.index_select(0, at), model.rope_sin.index_select(0, at)
        parts = []
        for p, c in zip(positions, counts, strict=True):
            if p + c <= config.block_size:
                parts.append((model.rope_cos[p : p + c], model.rope_sin[p : p + c]))
            else:
                parts.append(rotary_at(config, p, c))
        return torch.cat([c for c, _ in parts]), torch.cat([s for _, s in parts])
