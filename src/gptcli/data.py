"""Text files -> token ids (cached as memmaps keyed by content and tokenizer) -> batches.

The validation split is the last `val_fraction` of the text, by characters, like nanoGPT's
char-level split; files are joined in order with the end-of-text token between them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gptcli.errors import GptError
from gptcli.store import atomic_path, read_json, write_json_atomic
from gptcli.tokenizer import Tokenizer, iter_chunks

CACHE_VERSION = 1


def find_text_files(inputs: list[str]) -> list[Path]:
    """Files as given; a directory means every `.txt` under it (sorted)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.txt") if p.is_file())
            if not found:
                raise GptError(f"{path}: no .txt files in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise GptError(f"{path}: not a regular file")
        else:
            raise GptError(f"{path}: no such file or directory")
    if not files:
        raise GptError("no input files given")
    return files


def read_text(path: Path) -> str:
    """A file's text, refusing what is not UTF-8 text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GptError(f"{path}: cannot read ({exc.strerror})") from None
    if b"\x00" in raw:
        raise GptError(f"{path}: looks like a binary file, not text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GptError(
            f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); convert it to UTF-8"
        ) from None
    return text.removeprefix("\ufeff")


def split_documents(texts: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Cuts the concatenated documents at (1 - val_fraction) of their characters."""
    total = sum(len(t) for t in texts)
    cut = int(total * (1.0 - val_fraction))
    train: list[str] = []
    val: list[str] = []
    seen = 0
    for text in texts:
        if seen + len(text) <= cut:
            train.append(text)
        elif seen >= cut:
            val.append(text)
        else:
            train.append(text[: cut - seen])
            val.append(text[cut - seen :])
        seen += len(text)
    return train, val


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def encode_documents(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """Documents -> one id stream, end-of-text between documents."""
    dtype = token_dtype(tokenizer.vocab_size)
    parts: list[np.ndarray] = []
    for i, doc in enumerate(docs):
        if i and tokenizer.eot_id is not None:
            parts.append(np.array([tokenizer.eot_id], dtype=dtype))
        chunks = list(iter_chunks(doc))
        for ids in tokenizer.encode_batch(chunks):
            parts.append(np.asarray(ids, dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


@dataclass
class Split:
    """One side of the corpus: ids (a read-only memmap) and the UTF-8 bytes they came from."""

    tokens: np.ndarray
    n_bytes: int
    path: Path


@dataclass
class Corpus:
    train: Split
    val: Split
    files: list[dict]
    key: str

    def describe(self) -> dict:
        return {
            "files": self.files,
            "cache_key": self.key,
            "train_tokens": len(self.train.tokens),
            "train_bytes": self.train.n_bytes,
            "val_tokens": len(self.val.tokens),
            "val_bytes": self.val.n_bytes,
        }


def load_tokens(path: Path, vocab_size: int) -> np.ndarray:
    dtype = token_dtype(vocab_size)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


@dataclass
class Texts:
    """The corpus as read: files in order and their text."""

    files: list[Path]
    texts: list[str]

    @property
    def n_bytes(self) -> int:
        return sum(len(t.encode()) for t in self.texts)


def read_corpus(inputs: list[str]) -> Texts:
    """Finds and reads every input, refusing missing, binary, non-UTF-8 or empty ones."""
    files = find_text_files(inputs)
    texts = [read_text(f) for f in files]
    if not any(t.strip() for t in texts):
        raise GptError("the corpus is empty: " + ", ".join(str(f) for f in files))
    return Texts(files, texts)


def build_corpus(
    corpus: Texts, tokenizer: Tokenizer, val_fraction: float, cache_dir: Path
) -> Corpus:
    """Splits and tokenizes the corpus, reusing the cache when nothing changed."""
    files, texts = corpus.files, corpus.texts
    described = [
        {
            "path": str(f.resolve()),
            "bytes": len(t.encode()),
            "sha256": hashlib.sha256(t.encode()).hexdigest(),
        }
        for f, t in zip(files, texts, strict=True)
    ]
    key_src = json.dumps(
        [CACHE_VERSION, tokenizer.digest, val_fraction, [d["sha256"] for d in described]]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    meta_path = cache_dir / f"{key}.json"
    paths = {side: cache_dir / f"{key}.{side}.bin" for side in ("train", "val")}
    if not (meta_path.is_file() and all(p.is_file() for p in paths.values())):
        train_docs, val_docs = split_documents(texts, val_fraction)
        n_bytes = {}
        for side, docs in (("train", train_docs), ("val", val_docs)):
            ids = encode_documents(tokenizer, docs)
            with atomic_path(paths[side]) as tmp:
                ids.tofile(tmp)
            n_bytes[side] = sum(len(d.encode()) for d in docs)
        write_json_atomic(meta_path, {"bytes": n_bytes, "files": described})
    meta = read_json(meta_path)
    splits = {
        side: Split(
            load_tokens(paths[side], tokenizer.vocab_size), int(meta["bytes"][side]), paths[side]
        )
        for side in ("train", "val")
    }
    return Corpus(splits["train"], splits["val"], described, key)


class Batches:
    """Random (x, y) windows from a token array; `fixed` ones for a stable validation loss."""

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        block_size: int,
        device: torch.device,
        seed: int,
    ) -> None:
        if len(tokens) < 2:
            raise GptError("not enough tokens to make a single training example")
        self.tokens = tokens
        self.batch_size = batch_size
        self.block_size = min(block_size, len(tokens) - 1)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.tokens) - self.block_size
        starts = torch.randint(high, (self.batch_size,), generator=generator or self.generator)
        index = starts.numpy()[:, None] + np.arange(self.block_size + 1)
        window = torch.from_numpy(self.tokens[index].astype(np.int64))
        if self.device.type == "cuda":
            window = window.pin_memory().to(self.device, non_blocking=True)
        else:
            window = window.to(self.device)
        return window[:, :-1], window[:, 1:]

    def fixed(self, count: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            yield self.sample(generator)
