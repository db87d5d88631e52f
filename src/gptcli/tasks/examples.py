"""Whole examples (a conversation, a labelled text) and the batches the loop draws from them.

Used by the chat and classify tasks; plain text goes through `data.Batches` instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.runtime import Distributed, micro_batch_size


@dataclass
class Example:
    ids: list[int]
    targets: list[int]  # next-token targets, -100 where not trained
    cls_position: int | None = None
    label: int | None = None


class ExampleBatches:
    """Random batches of whole examples, padded on the right (padding is never scored)."""

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
        aux_lm_weight: float = 0.5,
    ) -> None:
        if not examples:
            raise GptError("no training examples in the data")
        self.examples = examples
        self.batch_size = batch_size
        self.block_size = max(len(e.ids) for e in examples)
        self.device = device
        self.rank, self.world = rank, world
        self.aux_lm_weight = aux_lm_weight
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, Any]:
        picks = torch.randint(
            len(self.examples),
            (self.batch_size * self.world,),
            generator=generator or self.generator,
        )
        mine = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.collate([self.examples[int(i)] for i in mine])

    def collate(self, chosen: list[Example]) -> dict[str, Any]:
        length = max(len(e.ids) for e in chosen)
        idx = np.zeros((len(chosen), length), dtype=np.int64)
        targets = np.full((len(chosen), length), -100, dtype=np.int64)
        for row, e in enumerate(chosen):
            idx[row, : len(e.ids)] = e.ids
            targets[row, : len(e.targets)] = e.targets
        batch: dict[str, Any] = {
            "idx": torch.from_numpy(idx).to(self.device),
            "targets": torch.from_numpy(targets).to(self.device),
        }
        if chosen[0].label is not None:
            batch["cls_positions"] = torch.tensor(
                [e.cls_position for e in chosen], device=self.device
            )
            batch["labels"] = torch.tensor([e.label for e in chosen], device=self.device)
            batch["aux_lm_weight"] = self.aux_lm_weight
        return batch

    def fixed(self, count: int, seed: int) -> Iterator[dict[str, Any]]:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            yield self.sample(generator)


def split_examples(
    examples: list[Example], val_fraction: float
) -> tuple[list[Example], list[Example]]:
    """The last val_fraction of the examples (at least one, when there are a few) for validation."""
    n_val = int(len(examples) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(examples) >= 5:
        n_val = 1
    if n_val == 0:
        return examples, []
    return examples[:-n_val], examples[-n_val:]


def example_batches(
    examples: list[Example],
    cfg: TrainConfig,
    device: torch.device,
    dist: Distributed,
    aux_lm_weight: float,
) -> tuple[ExampleBatches, ExampleBatches | None, dict[str, int]]:
    """Training and validation batches of the examples, and the split's counts for train.json."""
    train_ex, val_ex = split_examples(examples, cfg.val_fraction)
    train = ExampleBatches(
        train_ex,
        micro_batch_size(cfg, dist),
        device,
        cfg.seed,
        dist.rank,
        dist.world,
        aux_lm_weight,
    )
    val = (
        ExampleBatches(val_ex, cfg.batch_size, device, cfg.seed + 1, aux_lm_weight=aux_lm_weight)
        if val_ex
        else None
    )
    return train, val, {"train_examples": len(train_ex), "val_examples": len(val_ex)}
