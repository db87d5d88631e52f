"""Low-rank adapters (LoRA) on the attention and MLP matrices, and merging them back.

With adapters on, a Linear computes W x + (alpha / r) B A x with W frozen; A starts random and
B at zero, so training starts from the base model exactly. Saved models have B A merged into W,
so they load like any other model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features).to(base.weight))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank).to(base.weight))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None) -> list[nn.Parameter]:
    """Wraps the block matrices in adapters, freezes everything else; returns the new params."""
    if rank < 1:
        raise ValueError("LoRA rank must be at least 1")
    for p in model.parameters():
        p.requires_grad_(False)
    added: list[nn.Parameter] = []
    for name, module in list(model.named_modules()):
        for target in TARGETS:
            if name.endswith(target) and isinstance(module, nn.Linear):
                parent_name, _, child = name.rpartition(".")
                wrapped = LoRALinear(module, rank, alpha if alpha is not None else 2.0 * rank)
                setattr(model.get_submodule(parent_name), child, wrapped)
                added += [wrapped.lora_a, wrapped.lora_b]
    return added


def merged_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the model would have with its adapters merged, leaving it untouched."""
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_a" in key or ".lora_b" in key:
            continue
        state[key.replace(".base.", ".")] = value
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            delta = (module.lora_b @ module.lora_a) * module.scale
            state[f"{name}.weight"] = module.base.weight.detach() + delta.detach()
    return state
