"""Where and how the math runs: device choice, autocast, torch.compile, and torchrun (DDP).

A leaf: training, generation, evaluation and classification all pick their device here. It knows
nothing about models, data or the store.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager

import torch
import torch.distributed as torch_dist

from gptcli.config import TrainConfig
from gptcli.errors import GptError


def pick_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if has_mps else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GptError("--device cuda: no CUDA GPU is available")
    if name == "mps" and not has_mps:
        raise GptError("--device mps: Apple MPS is not available")
    if name not in ("cpu", "cuda", "mps"):
        raise GptError(f"unknown device {name!r} (choose auto, cpu, cuda or mps)")
    return torch.device(name)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain float32."""
    choice = cfg.dtype
    if choice == "auto":
        choice = "bfloat16" if device.type == "cuda" else "float32"
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[choice]


def should_compile(cfg: TrainConfig, device: torch.device) -> bool:
    """torch.compile pays for itself on CUDA; on CPU its start-up eats a short time budget."""
    return cfg.compile if cfg.compile is not None else device.type == "cuda"


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class Distributed:
    """This process's place under torchrun (or a world of one without it)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> torch.device:
        if not self.enabled:
            return device
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return device

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when it is true on one (to stop together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return bool(value.item())

    def max(self, value: int, device: torch.device) -> int:
        """The largest of every rank's value, on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.long, device=device)
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.MAX)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def close(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def micro_batch_size(cfg: TrainConfig, dist: Distributed) -> int:
    """Sequences per micro-batch in this process: the step's batch over processes and
    accumulation steps."""
    per_process = cfg.batch_size // (dist.world * cfg.grad_accum)
    if per_process < 1 or per_process * dist.world * cfg.grad_accum != cfg.batch_size:
        raise GptError(
            f"--batch-size {cfg.batch_size} must be a multiple of processes x "
            f"--grad-accum ({dist.world} x {cfg.grad_accum})"
        )
    return per_process
