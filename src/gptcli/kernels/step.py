"""`NativeDecodeStep`: a GPT's prefill and one-token decode steps through `decode.c`, on the CPU.

It reads the model's own tensors and its KV cache in place (pointers into torch's memory), so
it needs nothing prepared beyond `prepare_for_inference`, and the torch path and this one can
take turns on the same cache. `for_model` says whether a model and cache can use it: a cache
of one row (or one row of a larger cache, as the server's engine uses it for a lone request),
on the CPU, float32 cache, weights in float32, bfloat16 or packed int8, plain `Linear` layers
(no LoRA adapters).
"""

from __future__ import annotations

import ctypes
from typing import Protocol

import torch

from gptcli import kernels
from gptcli.errors import GptError
from gptcli.kernels.abi import Layer, Matrix, Model, P
from gptcli.model import GPT, KVCache, Linear, rotary_at

WEIGHT_TYPES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}


def matrices(model: GPT) -> list[torch.nn.Module]:
    """The modules behind every matrix a decode step reads: four a block, and the head."""
    out: list[torch.nn.Module] = [model.lm_head]
    for block in model.transformer["h"]:
        out += [block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj]
    return out


def native_for(model: GPT, cache: KVCache | RowCache) -> tuple[torch.dtype, ctypes.CDLL] | None:
    """The weight dtype and the loaded library when the native step can run this model on this
    cache (on the CPU, a contiguous float32 cache, float32 or bfloat16 parameters, plain or int8
    `Linear`s, a library that built and passed its checks); None where torch's path must run."""
    p = next(model.parameters())
    if (
        p.device.type != "cpu"
        or cache.k.dtype != torch.float32
        or not (cache.k.is_contiguous() and cache.v.is_contiguous())
        or p.dtype not in (torch.float32, torch.bfloat16)
    ):
        return None
    wtype = weight_type(model)
    lib = kernels.library() if wtype is not None else None
    return (wtype, lib) if wtype is not None and lib is not None else None


def weight_type(model: GPT) -> torch.dtype | None:
    """The dtype the native step reads the model's matrices in, or None if it cannot (LoRA
    adapters or other wrappers, packed weights that no longer match theirs, other dtypes)."""
    linears = matrices(model)
    if any(type(m) is not Linear for m in linears):
        return None
    packs = {m.packed.kind if m.packed is not None else None for m in linears}
    if packs == {"int8"}:
        fresh = all(m.packed is not None and m.packed.matches(m.weight) for m in linears)
        return torch.int8 if fresh else None
    if "int8" in packs:
        return None
    dtype = model.lm_head.weight.dtype
    return dtype if dtype in (torch.float32, torch.bfloat16) else None


class RowCache(Protocol):
    """What the native step needs of a cache: float32 keys and values (layers, rows, heads,
    max_len, head_size), and `pos`, the tokens its row holds (a `KVCache`, or one slot of
    `gptcli.inference.batching.RaggedKVCache`)."""

    k: torch.Tensor
    v: torch.Tensor
    max_len: int
    pos: int


class NativeDecodeStep:
    """Calls the native step on `cache` (batch 1); `__call__` as `StaticDecodeStep`'s."""

    @staticmethod
    def for_model(
        model: GPT, cache: KVCache | RowCache, row: int | None = None
    ) -> NativeDecodeStep | None:
        """A native step for this model and a cache of one row (`row` None), or for row `row`
        of a cache of several; None where torch's path must run."""
        rows = cache.k.size(1)
        if rows != 1 if row is None else not 0 <= row < rows:
            return None
        found = native_for(model, cache)
        return NativeDecodeStep(model, cache, *found, row or 0) if found else None

    def __init__(
        self,
        model: GPT,
        cache: KVCache | RowCache,
        wtype: torch.dtype,
        lib: ctypes.CDLL,
        row: int = 0,
    ) -> None:
        self.model, self.cache, self.lib = model, cache, lib
        config = model.config
        self.keep: list[torch.Tensor] = []  # tensors whose memory the structure points into
        blocks = model.transformer["h"]
        self.layers = (Layer * config.n_layer)()
        for i, block in enumerate(blocks):
            layer = self.layers[i]
            gpt2 = config.family == "gpt2"
            layer.ln1_w = self.pointer(block.ln_1.weight)
            layer.ln2_w = self.pointer(block.ln_2.weight)
            if gpt2:
                layer.ln1_b = self.pointer(block.ln_1.bias)
                layer.ln2_b = self.pointer(block.ln_2.bias)
            else:
                layer.q_norm = self.pointer(block.attn.q_norm.weight)
                layer.k_norm = self.pointer(block.attn.k_norm.weight)
            layer.attn = self.matrix(block.attn.c_attn, wtype)
            layer.proj = self.matrix(block.attn.c_proj, wtype)
            layer.fc = self.matrix(block.mlp.c_fc, wtype)
            layer.mlp_proj = self.matrix(block.mlp.c_proj, wtype)
        ln_f = model.transformer["ln_f"]
        k_base, v_base = self.pointer(cache.k), self.pointer(cache.v)
        assert k_base is not None and v_base is not None
        row_offset = row * cache.k.stride(1) * cache.k.element_size()  # bytes to the row
        self.struct = Model(
            n_layer=config.n_layer,
            n_embd=config.n_embd,
            n_head=config.n_head,
            head_size=config.head_size,
            vocab=config.vocab_size,
            max_len=cache.max_len,
            family=0 if config.family == "gpt2" else 1,
            wtype=WEIGHT_TYPES[wtype],
            ptype=WEIGHT_TYPES[model.transformer["wte"].weight.dtype],
            embed_norm=int(not isinstance(model.embed_norm, torch.nn.Identity)),
            eps=config.layer_norm_eps if config.family == "gpt2" else 1e-6,
            wte=self.pointer(model.transformer["wte"].weight),
            wpe=self.pointer(model.transformer["wpe"].weight) if model.tied else None,
            ln_f_w=self.pointer(ln_f.weight),
            ln_f_b=self.pointer(getattr(ln_f, "bias", None)),
            head=self.matrix(model.lm_head, wtype),
            k_cache=k_base + row_offset,
            v_cache=v_base + row_offset,
            layers=self.layers,
            layer_stride=cache.k.stride(0),
        )

    def pointer(self, tensor: torch.Tensor | None) -> int | None:
        if tensor is None:
            return None
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        self.keep.append(tensor)
        return tensor.data_ptr()

    def matrix(self, linear: Linear, wtype: torch.dtype) -> Matrix:
        if wtype == torch.int8:
            packed = linear.packed
            assert packed is not None and packed.scales is not None
            weight, scale = packed.data, self.pointer(packed.scales.float())
        else:
            weight, scale = linear.weight, None
        return Matrix(self.pointer(weight), scale, self.pointer(linear.bias))

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (1, T) after the cached ones -> float32 logits (1, V) of the token after the
        last; advances the cache by T. Several tokens (a prefill) read each weight once."""
        cache, config = self.cache, self.model.config
        ids = tokens.reshape(-1).to(torch.int64).contiguous()
        pos, count = cache.pos, ids.numel()
        listed = ids.tolist()
        if count and not 0 <= min(listed) <= max(listed) < config.vocab_size:
            raise GptError(f"token id out of range for the vocabulary of {config.vocab_size}")
        if count > 1 and pos + count > cache.max_len:  # as KVCache.update refuses it
            raise GptError(
                f"a chunk of {count} tokens does not fit in the cache of {cache.max_len}"
            )
        if not self.model.rotary and pos + count > min(config.block_size, cache.max_len):
            limit = min(config.block_size, cache.max_len)
            raise GptError(f"sequence of {pos + count} tokens exceeds the context of {limit}")
        cos = sin = None
        if self.model.rotary:
            if pos + count <= config.block_size:
                cos = self.model.rope_cos[pos : pos + count]
                sin = self.model.rope_sin[pos : pos + count]
            else:
                cos, sin = rotary_at(config, pos, count)
        logits = torch.empty(1, config.vocab_size)
        failed = self.lib.gptcli_forward(
            ctypes.byref(self.struct),
            P(ids.data_ptr()),
            ctypes.c_int64(count),
            ctypes.c_int64(pos),
            P(cos.data_ptr() if cos is not None else None),
            P(sin.data_ptr() if sin is not None else None),
            P(logits.data_ptr()),
            ctypes.c_int(torch.get_num_threads()),
        )
        if failed:
            raise MemoryError("the native step could not allocate its buffers")
        cache.pos += count
        return logits
