"""Text files -> token ids (cached as memmaps keyed by content and tokenizer) -> batches.

Everything streams: files are read, checked and tokenized a block at a time, so memory does not
grow with the corpus. The validation split is the last `val_fraction` of the corpus's UTF-8
bytes (for ASCII text, exactly nanoGPT's character split); files are joined in order with the
end-of-text token between them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptcli.datasources import find_files, progress
from gptcli.datasources.corpus import SourceFile, Texts, read_corpus
from gptcli.datasources.shards import ShardSet, check_ids, side_tokens
from gptcli.datasources.streams import iter_blocks
from gptcli.errors import GptError
from gptcli.store import atomic_path, read_json, write_json_atomic
from gptcli.tokenizer import Tokenizer, iter_chunks
from gptcli.tokenwriter import PIECE_CHARS, Encoder, TokenWriter, token_dtype, utf8_size

CACHE_VERSION = 2
__all__ = ["SourceFile", "Texts", "read_corpus"]  # and what is defined here


def find_text_files(inputs: list[str]) -> list[Path]:
    """Files as given; a directory means every `.txt` under it; globs are expanded (sorted).
    (The rule of `gpt finetune` without --task text and of `gpt eval --data`; training reads
    every supported format, see `gptcli.datasources`.)"""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise GptError(f"{path}: no .txt files in this directory")
            files.extend(found)
        else:
            files.extend(find_files([raw]))
    if not files:
        raise GptError("no input files given")
    return files


def read_text(path: Path) -> str:
    """A whole file's text (for small inputs such as prompts and evaluation files)."""
    return "".join(iter_blocks(path))


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; malformed lines are refused by number."""
    number = 0
    for block in _lines(path):
        number += 1
        if not block.strip():
            continue
        try:
            record = json.loads(block)
        except json.JSONDecodeError as exc:
            raise GptError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise GptError(f"{path}:{number}: each line must be a JSON object")
        yield number, record


def _lines(path: Path) -> Iterator[str]:
    rest = ""
    for block in iter_blocks(path):
        rest += block
        *lines, rest = rest.split("\n")
        yield from lines
    if rest:
        yield rest


def encode_text(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """One text's ids, encoded in short pieces on all cores (same ids as a single encode)."""
    dtype = token_dtype(tokenizer.vocab_size)
    ids = [
        np.asarray(piece, dtype=dtype)
        for piece in tokenizer.encode_batch(list(iter_chunks(text, PIECE_CHARS)))
    ]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=dtype)


Item = str | None | list[str]  # a piece of a document, its end, or whole documents


def split_stream(texts: Texts, val_fraction: float) -> Iterator[tuple[str, Item]]:
    """Yields (side, item) in order, side "train" or "val": a piece of a one-document input's
    text, None where such a document ends, or a list of whole documents of a many-document
    input ("" for an empty one).

    With validation inputs given (--val), they are the "val" side and the corpus the "train"
    side. Otherwise the cut is at (1 - val_fraction) of the corpus's UTF-8 bytes: on a
    character boundary inside a plain text file (as it always was), at the nearest document
    boundary in an input of many documents.
    """
    if texts.val_files:
        for side, files in (("train", texts.files), ("val", texts.val_files)):
            for source in files:
                items = source.pieces() if source.one_document else source.batches()
                for item in items:
                    yield side, item
        return
    cut = int(texts.n_bytes * (1.0 - val_fraction))
    seen = 0
    for source in texts.files:
        side = "train" if seen < cut else "val"
        if not source.one_document:
            for batch in source.batches():
                if side == "train":
                    total = utf8_size("".join(batch))
                    if seen + total > cut:  # the cut may fall in this batch
                        at = first_past(batch, seen, cut)
                        if at < len(batch):
                            if at:
                                yield "train", batch[:at]
                            side, batch = "val", batch[at:]
                    seen += total
                yield side, batch
            continue
        for piece in source.pieces():
            if piece is None:
                yield side, None
                continue
            encoded = piece.encode()
            if side == "train" and seen + len(encoded) > cut:
                at = cut - seen
                while at < len(encoded) and (encoded[at] & 0xC0) == 0x80:
                    at += 1  # step out of a multi-byte character
                if at:
                    yield "train", encoded[:at].decode()
                side = "val"
                piece = encoded[at:].decode()
            seen += len(encoded)
            if piece:
                yield side, piece


def first_past(documents: list[str], seen: int, cut: int) -> int:
    """The first of these documents (after `seen` bytes) most of which lies past the cut."""
    for n, text in enumerate(documents):
        size = utf8_size(text)
        if seen + size / 2 > cut:
            return n
        seen += size
    return len(documents)


def encode_corpus(
    texts: Texts,
    tokenizer: Tokenizer,
    val_fraction: float,
    paths: dict[str, Path],
    header: bool = False,
) -> dict[str, int]:
    """Streams the corpus into one id file per side (llm.c shards with `header`); returns the
    UTF-8 bytes of each side."""
    progress.start("tokenizing", texts.paths)
    encoder = Encoder()
    writers = {side: TokenWriter(tokenizer, path, encoder, header) for side, path in paths.items()}
    starting = dict.fromkeys(paths, True)  # the next text on this side begins a document
    try:
        for side, item in split_stream(texts, val_fraction):
            if isinstance(item, str):
                writers[side].add(item, starting[side])
                starting[side] = False
                continue
            if item is not None:
                writers[side].add_documents(item)
            starting[side] = True
    finally:
        try:
            for writer in writers.values():
                writer.close()
        finally:
            encoder.close()
    return {side: writer.n_bytes for side, writer in writers.items()}


@dataclass
class Split:
    """One side of the corpus: ids (a read-only memmap) and the UTF-8 bytes they came from."""

    tokens: np.ndarray
    n_bytes: int | None  # None: unknown (token shards carry no text)
    path: Path


@dataclass
class Corpus:
    train: Split
    val: Split
    files: list[dict]
    key: str
    text_field: str = "text"
    source: dict = field(default_factory=dict)  # token shards: {"shards": True, ...}

    def describe(self) -> dict:
        return (
            ({"text_field": self.text_field} if self.text_field != "text" else {})
            | self.source
            | {
                "files": self.files,
                "cache_key": self.key,
                "train_tokens": len(self.train.tokens),
                "train_bytes": self.train.n_bytes,
                "val_tokens": len(self.val.tokens),
                "val_bytes": self.val.n_bytes,
            }
        )


def load_tokens(path: Path, vocab_size: int) -> np.ndarray:
    dtype = token_dtype(vocab_size)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def corpus_key(
    texts: Texts, tokenizer: Tokenizer, val_fraction: float
) -> tuple[str, list[dict[str, Any]]]:
    """The content key of a tokenized corpus, and the description of its inputs."""
    described = [f.describe() for f in texts.files]
    parts: list[Any] = [CACHE_VERSION, tokenizer.digest, val_fraction, [f.key for f in texts.files]]
    if texts.val_files:  # the split is the inputs given, whatever the fraction
        described += [f.describe() | {"val": True} for f in texts.val_files]
        parts[2:] = ["val", [f.key for f in texts.files], [f.key for f in texts.val_files]]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32], described


def build_corpus(
    texts: Texts, tokenizer: Tokenizer, val_fraction: float, cache_dir: Path
) -> Corpus:
    """Splits and tokenizes the corpus into memmaps, reusing the cache when nothing changed."""
    key, described = corpus_key(texts, tokenizer, val_fraction)
    meta_path = cache_dir / f"{key}.json"
    paths = {side: cache_dir / f"{key}.{side}.bin" for side in ("train", "val")}
    if not (meta_path.is_file() and all(p.is_file() for p in paths.values())):
        with atomic_path(paths["train"]) as train_tmp, atomic_path(paths["val"]) as val_tmp:
            n_bytes = encode_corpus(
                texts, tokenizer, val_fraction, {"train": train_tmp, "val": val_tmp}
            )
        write_json_atomic(meta_path, {"bytes": n_bytes, "files": described})
    meta = read_json(meta_path)
    splits = {
        side: Split(
            load_tokens(paths[side], tokenizer.vocab_size), int(meta["bytes"][side]), paths[side]
        )
        for side in ("train", "val")
    }
    return Corpus(splits["train"], splits["val"], described, key, texts.options.text_field)


def build_shard_corpus(shards: ShardSet, tokenizer: Tokenizer, cache_dir: Path) -> Corpus:
    """Token shards as a corpus: ids checked against the tokenizer (a prepared corpus was
    checked when written), each side in place or joined into the cache."""
    vocab = tokenizer.vocab_size
    n_bytes: dict[str, int | None] = {"train": None, "val": None}
    source: dict[str, Any] = {"shards": True}
    if shards.prepared is not None:
        assert shards.root is not None
        key, described = shards.prepared["key"], shards.prepared["files"]
        n_bytes = shards.prepared["bytes"]
        source = {"prepared": str(shards.root.resolve()), "documents": shards.prepared["documents"]}
    else:
        for shard in shards.train + shards.val:
            check_ids(shard, vocab)
        described = shards.describe()
        parts = [
            CACHE_VERSION,
            "shards",
            tokenizer.digest,
            [(d["sha256"], d.get("val", False)) for d in described],
        ]
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    splits = {}
    for side, group in (("train", shards.train), ("val", shards.val)):
        cache = cache_dir / f"{key}.{side}.bin"
        tokens, path = side_tokens(group, vocab, cache, token_dtype(vocab))
        splits[side] = Split(tokens, n_bytes[side], path)
    return Corpus(splits["train"], splits["val"], described, key, source=source)


class Batches:
    """Random (x, y) windows from a token array; `fixed` ones for a stable validation loss
    (the whole array, in order, when it is small enough to score at once).

    Under DDP every rank draws the same global batch and keeps its own slice, so N processes
    see exactly the examples one process with the same global batch would.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        if len(tokens) < 2:
            raise GptError("not enough tokens to make a single training example")
        self.tokens = tokens
        self.batch_size = batch_size  # per process
        self.block_size = min(block_size, len(tokens) - 1)
        self.device = device
        self.rank, self.world = rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.tokens_per_batch = self.batch_size * self.block_size

    def set_length(self, length: int) -> None:
        """Windows of `length` tokens from now on (at most the context), and as many of them
        per batch as keep the tokens per batch (--seq-warmup)."""
        self.block_size = max(1, min(length, len(self.tokens) - 1))
        self.batch_size = max(1, self.tokens_per_batch // self.block_size)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """A batch as the model's keyword arguments: {"idx": x, "targets": y}."""
        high = len(self.tokens) - self.block_size
        starts = torch.randint(
            high, (self.batch_size * self.world,), generator=generator or self.generator
        )
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        index = mine.numpy()[:, None] + np.arange(self.block_size + 1)
        window = torch.from_numpy(self.tokens[index].astype(np.int64))
        if self.device.type == "cuda":
            window = window.pin_memory().to(self.device, non_blocking=True)
        else:
            window = window.to(self.device)
        return {"idx": window[:, :-1], "targets": window[:, 1:]}

    def fixed(self, count: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """`count` batches drawn with `seed`, or every target of the array once when that
        takes no more windows than those batches would."""
        n_targets = len(self.tokens) - 1
        if n_targets <= count * self.batch_size * self.block_size:
            yield from self.whole()
            return
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            yield self.sample(generator)

    def whole(self) -> Iterator[dict[str, torch.Tensor]]:
        """Consecutive windows over the whole array, each target scored once: the windows of
        `gpt eval --stride CONTEXT` (a shorter last one comes in a batch of its own)."""
        n_targets, length = len(self.tokens) - 1, self.block_size
        starts = list(range(0, n_targets - length + 1, length))
        rest = starts[-1] + length if starts else 0
        for i in range(0, len(starts), self.batch_size):
            yield self._windows(starts[i : i + self.batch_size], length)
        if rest < n_targets:
            yield self._windows([rest], n_targets - rest)

    def _windows(self, starts: list[int], length: int) -> dict[str, torch.Tensor]:
        index = np.array(starts)[:, None] + np.arange(length + 1)
        window = torch.from_numpy(self.tokens[index].astype(np.int64)).to(self.device)
        return {"idx": window[:, :-1], "targets": window[:, 1:]}
