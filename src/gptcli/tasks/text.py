"""The text task: more plain text with the base's tokenizer (domain adaptation).

Also where token windows for the loop are cut from a corpus, for `gpt train` as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptcli.config import TrainConfig
from gptcli.data import Batches, Corpus, build_corpus, build_shard_corpus, read_corpus
from gptcli.datasources.shards import find_shards, wants_shards
from gptcli.errors import GptError
from gptcli.monitor import prompt_from, prompt_from_tokens
from gptcli.runtime import Distributed, micro_batch_size
from gptcli.tasks.base import TaskData, TaskInputs

NAME = "text"


def recognises(files: list[Path], first: dict[str, Any] | None) -> bool:
    return all(f.suffix != ".jsonl" for f in files)


def token_batches(
    corpus: Corpus, cfg: TrainConfig, block_size: int, device: torch.device, dist: Distributed
) -> tuple[Batches, Batches | None]:
    """Training windows (this process's share of each batch) and validation windows."""
    train = Batches(
        corpus.train.tokens,
        micro_batch_size(cfg, dist),
        block_size,
        device,
        cfg.seed,
        dist.rank,
        dist.world,
    )
    val = None
    if len(corpus.val.tokens) >= 2:
        val = Batches(corpus.val.tokens, cfg.batch_size, block_size, device, cfg.seed + 1)
    return train, val


def prepare(inputs: TaskInputs) -> TaskData:
    cfg = inputs.cfg
    names = [str(f) for f in inputs.files]
    if wants_shards(names):  # token shards made with the base's tokenizer
        corpus = build_shard_corpus(
            find_shards(names, inputs.val), inputs.tokenizer, inputs.cache_dir
        )
        texts = None
    else:
        texts = read_corpus(names, inputs.read, inputs.val, inputs.cache_dir)
        corpus = build_corpus(texts, inputs.tokenizer, cfg.val_fraction, inputs.cache_dir)
    if len(corpus.train.tokens) < 2:
        raise GptError("the fine-tuning text is too small (fewer than 2 tokens)")
    block_size = inputs.model.config.block_size
    train, val = token_batches(corpus, cfg, block_size, inputs.device, inputs.dist)
    data = corpus.describe() | {"val_fraction": cfg.val_fraction}
    prompt = (
        prompt_from(texts, cfg)
        if texts
        else prompt_from_tokens(corpus.train.tokens, inputs.tokenizer, cfg)
    )
    warnings = texts.warnings if texts else []  # as `gpt train` says them
    return TaskData(train, val, data, sample_prompt=prompt, warnings=warnings)
