"""`gpt train`: from text files to a new stored model (tokenizer, model shape, training).

The request (`TrainRequest`) is a job for `run.execute`: it checks itself, reads the corpus,
trains or loads a tokenizer, chooses the shape (`--preset auto`) and builds the model and its
batches; locking, resuming, checkpoints and the loop are the run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.distributed as torch_dist

from gptcli.checkpoint import load_model
from gptcli.config import PRESETS, ModelConfig, TrainConfig
from gptcli.data import Corpus, Texts, build_corpus, build_shard_corpus, read_corpus
from gptcli.datasources import progress
from gptcli.datasources.base import ReadOptions
from gptcli.datasources.sample import DEFAULT_SAMPLE, sample_units, sampled
from gptcli.datasources.shards import ShardSet, find_shards, wants_shards
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.monitor import prompt_from, prompt_from_tokens
from gptcli.record import continued
from gptcli.run import Log, Prepared, check_target, resumed_config
from gptcli.runtime import Distributed, micro_batch_size
from gptcli.store import ModelStore, human_bytes, write_text_atomic
from gptcli.tasks.text import token_batches
from gptcli.tokenizer import HFTokenizer, Tokenizer, iter_chunks

MAX_VOCAB = 1_000_000
BPE_CACHE_VERSION = 1  # of the BPE tokenizers kept in the token cache, by the text's key


def default_vocab_size(n_bytes: int) -> int:
    """A BPE vocabulary that suits the corpus: small corpora get few merges."""
    size = int(4 * math.sqrt(max(n_bytes, 1)))
    return max(512, min(32768, (size + 63) // 64 * 64))


def prepare_tokenizer(
    choice: str | None,
    vocab_size: int | None,
    texts: Texts,
    store: ModelStore,
    log: Callable[[str], None],
    sample_bytes: int = DEFAULT_SAMPLE,
) -> Tokenizer:
    """The tokenizer asked for (None or "bpe", "char", or a stored name / path): trained on
    `texts` (BPE on a sample of `sample_bytes` drawn across a larger corpus), or loaded from
    the store or a path."""
    choice = choice or "bpe"
    if choice not in ("bpe", "char"):
        if vocab_size is not None:
            raise GptError("--vocab-size only applies when a tokenizer is trained (bpe or char)")
        return Tokenizer.load(store.tokenizer_path(choice))
    pieces = (chunk for text in texts.iter_text() for chunk in iter_chunks(text))
    if choice == "char":
        log("training a char tokenizer")
        return Tokenizer.train_char(pieces)
    vocab = vocab_size or default_vocab_size(texts.n_bytes)
    if not 257 <= vocab <= MAX_VOCAB:
        raise GptError(f"--vocab-size must be between 257 and {MAX_VOCAB:,} for BPE")
    whole = texts.n_bytes <= sample_bytes  # all the text, whatever the sample size
    parts = [
        BPE_CACHE_VERSION,
        vocab,
        None if whole else sample_bytes,
        [f.key for f in texts.files],
    ]
    key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    cached = store.data_dir / f"{key}.tokenizer.json"
    if cached.is_file():  # trained on this text before (BPE training is deterministic)
        log(f"BPE tokenizer ({vocab} tokens) as trained on this text before")
        return Tokenizer.load(cached)
    progress.start("training the tokenizer", [f.path for f in texts.files])
    if whole:
        log(f"training a BPE tokenizer ({vocab} tokens)")
        tokenizer = Tokenizer.train_bpe(pieces, vocab)
    else:
        log(
            f"training a BPE tokenizer ({vocab} tokens) on a sample of "
            f"{human_bytes(sample_bytes)} drawn across the {human_bytes(texts.n_bytes)} of text "
            "(--tokenizer-sample)"
        )
        units = (u for f in texts.files for u in sample_units(f.pieces(), f.one_document))
        chosen = sampled(units, texts.n_bytes, sample_bytes)
        tokenizer = Tokenizer.train_bpe((c for unit in chosen for c in iter_chunks(unit)), vocab)
    write_text_atomic(cached, tokenizer.to_json())
    return tokenizer


def shard_tokenizer(
    choice: str | None, vocab_size: int | None, shards: ShardSet, store: ModelStore
) -> Tokenizer:
    """The tokenizer token shards were made with: a prepared corpus's own, else --tokenizer."""
    if vocab_size is not None:
        raise GptError("--vocab-size does not apply to token shards: their tokenizer is made")
    if shards.root is not None:
        own = Tokenizer.load(shards.root / "tokenizer.json")
        if (
            choice not in (None, "bpe")
            and Tokenizer.load(store.tokenizer_path(choice)).digest != own.digest
        ):
            raise GptError(f"{shards.root}: prepared with another tokenizer than {choice!r}")
        return own
    if choice in (None, "bpe", "char"):
        raise GptError(
            "token shards need --tokenizer NAME|PATH: the tokenizer they were made with "
            "(for nanoGPT and llm.c shards, GPT-2's tokenizer.json)"
        )
    return Tokenizer.load(store.tokenizer_path(choice))


@dataclass
class Shape:
    preset: str
    block_size: int | None = None  # None: the preset's
    batch_size: int | None = None  # None: as configured
    dropout: float | None = None  # None: as configured (0 by default)
    rates: dict[str, Any] | None = None  # learning-rate settings, where none were given


SEQ_WARMUP = 0.5  # --seq-warmup for modern models with a context of 256 or more
SMALL_CORPUS = 100_000  # training tokens under which --preset auto adds dropout 0.2
MEDIUM_CORPUS = 1_000_000  # ... and under which 0.1
SHORT_CPU_RUN = 120.0  # seconds: a --max-time up to this on a CPU gets the micro preset, and
# these rates, and 60% of the run cooling down instead of 40% (measured, B1)
SHORT_RUN_RATES = dict(lr=1e-2, muon_lr=0.04, warmup_steps=5, cooldown=0.6)


@dataclass
class TrainRequest:
    """`gpt train`'s job for `run.execute`."""

    command: ClassVar[str] = "gpt train"
    inputs: list[str]
    name: str
    cfg: TrainConfig
    val: list[str] = field(default_factory=list)  # validation inputs (--val), else a fraction
    read: ReadOptions = field(default_factory=ReadOptions)  # --text-field, --skip-bad-lines
    tokenizer_sample: int = DEFAULT_SAMPLE  # bytes of text a BPE tokenizer is trained on
    preset: str = "auto"
    family: str | None = None  # None: the preset's (modern for new models)
    tokenizer: str | None = None  # None or "bpe": train BPE; "char"; or a stored name / path
    vocab_size: int | None = None
    block_size: int | None = None
    dropout: float | None = None
    force: bool = False
    resume: bool = False
    auto_batch: bool = False  # --preset auto, no batch size given: the shape may set it
    auto_rates: bool = False  # nor --lr, --muon-lr, --warmup-steps: the shape may set them
    # (and the cooldown, which no flag sets)
    config: dict[str, Any] | None = None  # the command's settings, as --print-config shows them

    def check(self, store: ModelStore) -> None:
        check_target(store, self.name, self.force, self.resume)
        if not self.resume:  # refuse a bad shape before anything is read or written
            ModelConfig.from_preset(
                "mini" if self.preset == "auto" else self.preset,
                family=self.family,
                block_size=self.block_size,
                dropout=self.dropout,
            )
        if not self.auto_batch:
            micro_batch_size(self.cfg, Distributed())
        if self.vocab_size is not None and not 257 <= self.vocab_size <= MAX_VOCAB:
            raise GptError(f"--vocab-size must be between 257 and {MAX_VOCAB:,} for BPE")

    def prepare(
        self, store: ModelStore, device: torch.device, dist: Distributed, log: Log
    ) -> Prepared:
        """Tokenizer -> corpus -> model and batches. With `resume`, the stored model's weights
        and settings continue (the optimizer and RNG states are the run's to restore)."""
        request = self  # replaced below by a copy with the chosen context
        texts, shards = None, None
        if wants_shards(request.inputs):
            shards = find_shards(request.inputs, request.val)
        else:
            texts = read_corpus(request.inputs, request.read, request.val, store.data_dir)
            for warning in texts.warnings:
                log(warning)
        info: dict[str, Any] = {}
        if request.resume:
            loaded = load_model(store.model_dir(request.name), device)
            model, tokenizer, info = loaded.model, loaded.tokenizer, loaded.info
            cfg = resumed_config(info.get("train", {}), request.cfg)
        else:
            tokenizer = None
            if shards is not None:
                tokenizer = shard_tokenizer(request.tokenizer, request.vocab_size, shards, store)
            elif dist.is_main:
                assert texts is not None
                tokenizer = prepare_tokenizer(
                    request.tokenizer,
                    request.vocab_size,
                    texts,
                    store,
                    log,
                    request.tokenizer_sample,
                )
            tokenizer = share_tokenizer(tokenizer, dist, device)
            cfg = request.cfg

        def build() -> Corpus:
            if shards is not None:
                return build_shard_corpus(shards, tokenizer, store.data_dir)
            assert texts is not None
            return build_corpus(texts, tokenizer, cfg.val_fraction, store.data_dir)

        corpus = build() if dist.is_main else None
        dist.barrier()
        corpus = corpus or build()
        if request.resume and corpus.key != info.get("data", {}).get("cache_key"):
            raise GptError("the training text differs from the run being resumed")
        n_train = len(corpus.train.tokens)
        if n_train < 2:
            raise GptError("the corpus is too small to train on (fewer than 2 training tokens)")
        log(f"corpus: {n_train:,} training tokens, {len(corpus.val.tokens):,} validation tokens")
        if not request.resume:
            shape = choose_shape(request, n_train, device)
            if shape.batch_size and request.auto_batch:
                cfg = dataclasses.replace(cfg, batch_size=shape.batch_size)
            if shape.rates and request.auto_rates:
                cfg = dataclasses.replace(cfg, **shape.rates)
            if shape.block_size and request.block_size is None:
                request = dataclasses.replace(request, block_size=shape.block_size)
            if shape.dropout is not None and request.dropout is None:
                request = dataclasses.replace(request, dropout=shape.dropout)
                log(
                    f"dropout {shape.dropout}: {n_train:,} training tokens are few for this "
                    "model (--dropout sets it)"
                )
            torch.manual_seed(cfg.seed)
            model = GPT(model_config_for(request, tokenizer, shape.preset)).to(device)
            if cfg.seq_warmup is None:
                long = model.config.family == "modern" and model.config.block_size >= 256
                cfg = dataclasses.replace(cfg, seq_warmup=SEQ_WARMUP if long else 0.0)
        config = model.config
        log(
            f"model: {config.family} {config.preset}, {model.num_params() / 1e6:.2f}M "
            f"parameters, context {config.block_size}, on {device.type}"
            + (f" x{dist.world}" if dist.enabled else "")
            + (f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else "")
        )
        train, val = token_batches(corpus, cfg, config.block_size, device, dist)
        record = continued(
            "train",
            info,
            request.resume,
            config=request.config,
            train=cfg.to_dict(),
            tokenizer=tokenizer.kind,
            data=corpus.describe() | {"val_fraction": cfg.val_fraction},
        )
        return Prepared(
            model,
            tokenizer,
            train,
            val,
            cfg,
            record,
            sample_prompt=prompt_from(texts, cfg)
            if texts
            else prompt_from_tokens(corpus.train.tokens, tokenizer, cfg),
            summary={"params": model.num_params(), "train_tokens": n_train}
            | ({"threads": torch.get_num_threads()} if device.type == "cpu" else {}),
        )


def choose_shape(request: TrainRequest, n_train_tokens: int, device: torch.device) -> Shape:
    """`--preset auto`: a model that can make good use of the data, the device and the time.

    Measured on two CPU cores (benchmarks/train_speed.py): under ~20 minutes a 4 x 128 model
    learns fastest per second, on short sequences (64) in batches of 32; bigger models only pay
    off with hours, or on a GPU, and only with data enough to feed them. Under two minutes a
    smaller one does: 3 x 96 (micro) makes 1.8x the steps of 4 x 128 in the same time and ends
    lower (Tiny Shakespeare, char: 1.87 against 1.97 in the time of 90 mini steps, 1.69
    against 1.76 in that of 270), with higher learning rates and a short warmup
    (SHORT_RUN_RATES; with the general defaults micro ends at 1.94 there), and a longer
    cooldown: 60% of the run instead of 40% gave 1.821 against 1.830 at 200 steps, 1.664
    against 1.684 at 519 (50%: 1.676, 80%: 1.667). The context is 256 all
    the same: --seq-warmup trains on 64, then 128 tokens first, at the same tokens per step
    (8 x 256 = 32 x 64). A corpus small for the model gets dropout (with --keep best, the
    stored model is the one before it overfits).
    """
    if request.preset != "auto":
        return Shape(request.preset)
    dropout = None
    if n_train_tokens < SMALL_CORPUS:
        dropout = 0.2
    elif n_train_tokens < MEDIUM_CORPUS:
        dropout = 0.1
    minutes = (request.cfg.max_time or 0) / 60
    rates = dict(SHORT_RUN_RATES)
    if device.type == "cpu":
        if request.cfg.max_time and request.cfg.max_time <= SHORT_CPU_RUN:
            return Shape("micro", block_size=256, batch_size=8, dropout=dropout, rates=rates)
        if minutes <= 20 or n_train_tokens < 2_000_000:
            return Shape("mini", block_size=256, batch_size=8, dropout=dropout)
        return Shape("small" if minutes <= 180 or n_train_tokens < 50_000_000 else "base")
    if n_train_tokens < 1_000_000:
        return Shape("mini", block_size=256, dropout=dropout)
    if (minutes and minutes <= 15) or n_train_tokens < 20_000_000:
        return Shape("small")
    return Shape("base")


def model_config_for(request: TrainRequest, tokenizer: Tokenizer, preset: str) -> ModelConfig:
    family = request.family or PRESETS[preset].get("family", "modern")
    config = ModelConfig.from_preset(
        preset,
        family=family,
        vocab_size=tokenizer.vocab_size,
        block_size=request.block_size,
        dropout=request.dropout,
    )
    if config.vocab_size < tokenizer.vocab_size:
        raise GptError(
            f"preset {preset!r} has a vocabulary of {config.vocab_size}, "
            f"smaller than the tokenizer's {tokenizer.vocab_size}"
        )
    return config


def share_tokenizer(
    tokenizer: Tokenizer | None, dist: Distributed, device: torch.device
) -> Tokenizer:
    """Rank 0's tokenizer on every rank (sent as JSON bytes in a tensor, no pickle)."""
    if not dist.enabled:
        assert tokenizer is not None
        return tokenizer
    payload = tokenizer.to_json().encode() if tokenizer is not None else b""
    size = torch.tensor([len(payload)], dtype=torch.long, device=device)
    torch_dist.broadcast(size, 0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if tokenizer is not None:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    torch_dist.broadcast(buffer, 0)
    return Tokenizer(HFTokenizer.from_str(bytes(buffer.cpu().tolist()).decode()))
