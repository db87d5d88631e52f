"""Optimizers: Muon for the 2-D matrices inside the blocks, AdamW for everything else.

`OwnMuon` is Muon (momentum, then Newton-Schulz orthogonalisation of the update), for the CPU
and for torch versions without `torch.optim.Muon`, which is used on accelerators. The
iteration runs in bfloat16 there; on the CPU in float32, which is faster: the 16 matrices of
the 4 x 128 model `gpt train` picks for two cores take 20 ms a step in float32 against 48 ms
in bfloat16 on one core of an Intel Xeon with AVX512-BF16 (a fifth of the whole step before).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(
    update: torch.Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix, in `dtype`,
    for a matrix or a stack of matrices (..., rows, cols), each on its own."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    transposed = x.size(-2) > x.size(-1)
    if transposed:
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + eps)
    stack = x.reshape(-1, *x.shape[-2:])
    for _ in range(steps):
        gram = stack @ stack.mT
        stack = torch.baddbmm(
            stack, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), stack, beta=a
        )
    x = stack.view(x.shape)
    return (x.mT if transposed else x).to(update.dtype)


class OwnMuon(torch.optim.Optimizer):
    """Muon (Keller Jordan's), for the CPU and torch versions without `torch.optim.Muon`;
    `ns_dtype`: the dtype of the Newton-Schulz iteration."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        weight_decay: float = 0.0,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        ns_dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        defaults = dict(
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
        )
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # closure: unused
        for group in self.param_groups:
            # matrices of one shape (a matrix and its transpose count as one) are
            # orthogonalized together, in one batched iteration: the micro model's 12 matrices
            # in three stacks took 7.4 ms instead of 10 on two cores of an Intel Xeon
            shapes: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                if update.size(0) > update.size(1):
                    update = update.T
                shapes.setdefault(tuple(update.shape), []).append((p, update))
            for pairs in shapes.values():
                stacked = torch.stack([update for _, update in pairs])
                orthogonal = orthogonalize(stacked, group["ns_steps"], dtype=self.ns_dtype)
                for (p, _), update in zip(pairs, orthogonal, strict=True):
                    if update.shape != p.shape:
                        update = update.T
                    scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(update, alpha=-group["lr"] * scale)
        return None


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(hidden matrices for Muon, the rest for AdamW): embeddings, head and gains go to AdamW."""
    hidden, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_block_matrix = p.dim() == 2 and ".h." in f".{name}"
        (hidden if is_block_matrix else other).append(p)
    return hidden, other


def make_muon(
    params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    if device.type == "cpu":
        return OwnMuon(params, lr=lr, weight_decay=weight_decay, ns_dtype=torch.float32)
    if hasattr(torch.optim, "Muon"):
        return torch.optim.Muon(
            params, lr=lr, weight_decay=weight_decay, momentum=0.95, nesterov=True
        )
    return OwnMuon(params, lr=lr, weight_decay=weight_decay)
