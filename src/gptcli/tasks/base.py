"""The interface every fine-tuning task implements, and what passes through it.

A task is a module with `NAME`, `recognises(files, first)` and `prepare(inputs) -> TaskData`.
It turns data files into batches for the loop (growing the tokenizer or the model where it must)
and says what the run must store besides the weights. It knows nothing about optimizers,
checkpoints, the store, locks or the CLI: `finetune` and `run` do those.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from gptcli.config import TrainConfig
from gptcli.datasources.base import ReadOptions
from gptcli.loop import BatchSource
from gptcli.model import GPT
from gptcli.runtime import Distributed
from gptcli.tokenizer import Tokenizer


@dataclass
class TaskInputs:
    """What a task is given: the data, the model to adapt (base or resumed) and the run's place."""

    files: list[Path]
    model: GPT
    tokenizer: Tokenizer
    cfg: TrainConfig
    resume: bool
    cache_dir: Path  # the store's token cache, for text data
    device: torch.device
    dist: Distributed
    aux_lm_weight: float = 0.5  # classify: weight of the language-model loss
    val: list[str] = field(default_factory=list)  # text: validation inputs (--val)
    read: ReadOptions = field(default_factory=ReadOptions)  # text: --text-field, --skip-bad-lines


@dataclass
class TaskData:
    """What a task hands the run."""

    train: BatchSource
    val: BatchSource | None
    data: dict[str, Any]  # train.json's "data": files, sizes, the split
    extra_files: dict[str, str] = field(default_factory=dict)  # more files of the model
    sample_prompt: str | None = None  # samples while training (plain text only)
    warnings: list[str] = field(default_factory=list)  # said before training (text: reading)


class Task(Protocol):
    NAME: str

    def recognises(self, files: list[Path], first: dict[str, Any] | None) -> bool:
        """Whether this task's data is what `files` hold (`first`: their first JSONL line)."""
        ...

    def prepare(self, inputs: TaskInputs) -> TaskData: ...
