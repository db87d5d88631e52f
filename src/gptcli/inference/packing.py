"""Weights packed for inference: a `Linear`'s weight in the layout of a faster kernel for it
(oneDNN's blocked bfloat16, MKL's row blocks, int8 with per-row scales), made once after loading
and used while the weight is unchanged.

The model knows only the small protocol its `Linear` calls (`gptcli.model.PackedLinear`); which
packing a dtype and CPU get is `gptcli.inference.precision`'s choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptcli.model import GPT, Linear


class PackedWeight:
    """A Linear's weight in the layout of a faster inference kernel, made once by
    `pack_weights` and used only while the weight it was made from is unchanged.

    Measured on the 124M GPT-2 shape, 2 threads, one token per step (README, Performance):
    - `onednn` (bfloat16 on the CPU): oneDNN's matmul on a weight reordered once into its
      blocked layout. Plain `F.linear` reorders the weight on every call; ATen's own GEMV
      (oneDNN off) was the previous path, about 1.6x slower per decode step.
    - `rowblocks` (float32 on AMD CPUs): for one row, MKL's batched GEMM over blocks of rows of
      the weight itself (no copy), which read float32 about twice as fast as MKL's GEMV on an
      AMD EPYC (Zen 4); on an Intel Xeon the plain GEMV (`F.linear`) was 2.8x faster than this,
      so float32 keeps `F.linear` there. More rows: `F.linear`.
    - `int8` (any device): int8 weights with one float scale per output row (symmetric, to
      +-127), through ATen's weight-only int8 matmul, `_weight_int8pack_mm`, which converts the
      weights as it reads them: half the bytes of bfloat16 per token. It wants bfloat16
      activations on the CPU (float32 ones take a path about ten times slower there).
    """

    def __init__(self, weight: torch.Tensor, kind: str, activations: torch.dtype) -> None:
        if kind not in ("onednn", "rowblocks", "int8"):
            raise ValueError(f"unknown packing {kind!r}")
        w = weight.detach()
        self.kind = kind
        self.source = self.fingerprint(weight)
        self.activations = activations
        self.out_features = w.size(0)
        self.scales: torch.Tensor | None = None
        if kind == "onednn":
            self.data = torch.ops.mkldnn._reorder_linear_weight(w.to(activations), 1)
        elif kind == "rowblocks":
            self.data = w  # the weight itself, read as blocks of rows
            self.blocks = next((d for d in range(8, 65) if w.size(0) % d == 0), 0)
        else:
            self.data, scales = quantize_int8(w)
            self.scales = scales.to(activations)
            # ATen's kernel reads rows in blocks of 16: other widths got wrong sums (inf at 40)
            # or crashed; those take the same int8 values through F.linear instead
            self.dequantized = None
            if w.size(1) % 16:
                self.dequantized = (self.data.float() * scales[:, None]).to(activations)

    @staticmethod
    def fingerprint(weight: torch.Tensor) -> tuple[int, int, torch.dtype]:
        # in-place changes (an optimizer step, load_state_dict) bump the version counter;
        # a new tensor (cast_weights) has a new address. Tensors made under inference_mode
        # keep no version counter (and can change in place only inside it).
        version = -1 if weight.is_inference() else weight._version
        return weight.data_ptr(), version, weight.dtype

    def matches(self, weight: torch.Tensor) -> bool:
        return self.fingerprint(weight) == self.source

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # (dtype checks in Python: a no-op `.to` still costs a dispatch, and a decode step
        # makes about fifty of these calls)
        if x.dtype != self.activations:
            x = x.to(self.activations)
        if bias is not None and bias.dtype != self.activations:
            bias = bias.to(self.activations)
        if self.kind == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.data, bias, "none", [], "")
        if self.kind == "rowblocks":
            return row_blocks_product(x, self.data, bias, self.blocks)
        if self.dequantized is not None:
            return F.linear(x, self.dequantized, bias)
        flat = x.reshape(-1, x.size(-1))
        y = torch.ops.aten._weight_int8pack_mm(flat, self.data, self.scales)
        y = y.view(*x.shape[:-1], self.out_features)
        return y if bias is None else y + bias


def row_blocks_product(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, blocks: int
) -> torch.Tensor:
    """x (..., K) times weight (N, K): for one row, through a batched GEMM over `blocks` equal
    blocks of the weight's rows (MKL spreads the blocks over threads); else `F.linear`."""
    n, k = weight.shape
    if x.numel() != k or not blocks:
        return F.linear(x, weight, bias)
    # (blocks, K, 1) with strides (0, 1, K): as a column of a K-row matrix MKL takes it as is,
    # while strides (0, 1, 1) send it down a path about six times slower
    column = x.reshape(1, k).t().expand(blocks, k, 1)
    w = weight.view(blocks, n // blocks, k)
    if bias is None:
        y = torch.bmm(w, column)
    else:
        y = torch.baddbmm(bias.view(blocks, n // blocks, 1), w, column)
    return y.view(*x.shape[:-1], n)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight (N, K) -> int8 (N, K) and float32 scales (N,), symmetric per output row: the
    row's largest magnitude maps to 127, so each weight is off by at most half a step."""
    w = weight.detach().float()
    scales = w.abs().amax(dim=1).clamp(min=1e-12) / 127
    q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return q, scales


def pack_weights(model: GPT, kind: str | None, activations: torch.dtype) -> None:
    """Gives every `Linear` (the head included) a `PackedWeight` of this kind, or none (None).
    The parameters stay as they are: the embedding still reads the tied head's weight, and
    training or saving never sees the packed copies."""
    for module in model.modules():
        if isinstance(module, Linear):
            module.packed = PackedWeight(module.weight, kind, activations) if kind else None
