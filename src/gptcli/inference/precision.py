"""The one dtype policy of inference: which weight dtype `--dtype auto` means on a device, which
activations int8 weights take, which packing each dtype gets on this CPU, and whether decode
steps replay as CUDA graphs.

`gpt models show` asks what `auto` means here without loading torch, so torch is imported inside
the functions that need it, and the CPU's answer comes from `gptcli.hardware`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gptcli.errors import GptError
from gptcli.hardware import cpu_has_fast_bf16, cpu_is_amd

if TYPE_CHECKING:
    import torch

    from gptcli.model import GPT

DTYPES = ("auto", "float32", "bfloat16", "int8")
INT8_ON_CPU = "int8 x bfloat16"  # int8 weights, bfloat16 activations (see int8_activations)


def cpu_auto_dtype() -> str:
    """What `--dtype auto` is on this machine's CPU: bfloat16 where it has native bfloat16
    arithmetic (half the bytes to read per token), float32 elsewhere."""
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def inference_dtype(choice: str, device: torch.device) -> torch.dtype:
    """The weight dtype for `--dtype`: `auto` is bfloat16 on CUDA GPUs that have it and on CPUs
    with native bfloat16 arithmetic, float32 elsewhere. `int8` (torch.int8) is weight-only int8,
    never picked by `auto`: see `prepare_for_inference`.
    """
    import torch

    if choice not in DTYPES:
        raise GptError(f"unknown dtype {choice!r} (choose {', '.join(DTYPES)})")
    if choice != "auto":
        return getattr(torch, choice)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return getattr(torch, cpu_auto_dtype())
    return torch.float32


def int8_activations(device: torch.device) -> torch.dtype:
    """The activation (and unquantized parameter) dtype under int8 weights: bfloat16 on the CPU,
    where ATen's int8 matmul is about ten times faster with it than with float32; elsewhere what
    `auto` picks."""
    import torch

    return torch.bfloat16 if device.type == "cpu" else inference_dtype("auto", device)


def packing_for(dtype: torch.dtype, device: torch.device) -> str | None:
    """The `PackedWeight` kind measured fastest for these weights here, or None (plain F.linear).

    torch.int8: every `Linear`, the head included, on int8 weights with per-output-row scales.
    bfloat16 on the CPU: oneDNN on prepacked weights. float32 on the CPU: MKL's batched GEMM
    over row blocks on AMD CPUs, plain `F.linear` (MKL's GEMV) on the others.
    """
    import torch

    if dtype == torch.int8:
        return "int8"
    if dtype == torch.bfloat16 and device.type == "cpu" and torch.backends.mkldnn.is_available():
        return "onednn"
    if dtype == torch.float32 and device.type == "cpu" and cpu_is_amd():
        return "rowblocks" if torch.backends.mkl.is_available() else None
    return None


def prepare_for_inference(model: GPT, dtype: torch.dtype) -> GPT:
    """Evaluation mode, weights in `dtype`, packed for the fastest kernel measured for them
    (`packing_for`); the model is changed in place and returned. Under torch.int8 the other
    parameters (embeddings, norms, biases) and the activations are in `int8_activations`' dtype.
    """
    import torch

    from gptcli.inference import hugepages
    from gptcli.inference.packing import pack_weights

    model.eval()
    device = next(model.parameters()).device
    weights = int8_activations(device) if dtype == torch.int8 else dtype
    if next(model.parameters()).dtype != weights:
        model.cast_weights(weights)
    hugepages.move_weights(model)
    pack_weights(model, packing_for(dtype, device), weights)
    hugepages.move_packed(model)
    return model


def use_cuda_graphs(choice: bool | None, device: torch.device) -> bool:
    """`--cuda-graphs`: on by default on CUDA, where it removes the per-kernel launch cost that
    dominates one-token steps; asking for it elsewhere is an error."""
    if choice is None:
        return device.type == "cuda"
    if choice and device.type != "cuda":
        raise GptError("--cuda-graphs needs a CUDA device")
    return choice
