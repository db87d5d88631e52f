"""The sampling and inference flags that `gpt generate`, `gpt chat` and `gpt serve` share, and
the one place their values become `SamplingSettings`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from gptcli.sample import SamplingSettings

SAMPLING_FLAGS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
)

TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopKOption = Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")]
TopPOption = Annotated[
    float | None,
    typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1]."),
]
MinPOption = Annotated[
    float | None,
    typer.Option(help="Drop tokens below this fraction of the top token's probability; 0 = off."),
]
RepetitionPenaltyOption = Annotated[
    float, typer.Option(help="Above 1 discourages tokens already in the prompt or the text.")
]
PresencePenaltyOption = Annotated[
    float, typer.Option(help="Subtracted once from each generated token's logit, in [-2, 2].")
]
FrequencyPenaltyOption = Annotated[
    float,
    typer.Option(help="Subtracted per occurrence from a generated token's logit, in [-2, 2]."),
]
SeedOption = Annotated[int | None, typer.Option(help="Random seed: same seed, same text.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
DtypeOption = Annotated[
    str,
    typer.Option(
        help="Weights: auto (bfloat16 on CUDA and on CPUs with native bfloat16, else float32), "
        "float32, bfloat16, or int8 (weight-only, per-row scales: fastest on a CPU)."
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads (default: one per physical core).", min=1)
]
CudaGraphsOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="Replay each decode step as a CUDA graph (default: on with CUDA).",
        show_default=False,
    ),
]


def sampling_settings(given: dict[str, Any]) -> SamplingSettings:
    """The command's sampling flags (its `locals()`) -> SamplingSettings, checked."""
    from gptcli.sample import SamplingSettings

    return SamplingSettings(**{name: given[name] for name in SAMPLING_FLAGS})
