"""Pre-tokenized shards: token ids made elsewhere (nanoGPT, llm.c) or by `gpt tokenize corpus`.

- nanoGPT: raw `uint16` ids, no header (`train.bin`, `val.bin`);
- llm.c: a header of 256 int32 (magic 20240520, version 1 for uint16 ids or 2 for uint32, the
  number of ids), then the ids; `gpt tokenize corpus` writes this format too, one shard per
  side, next to `corpus.json` (what was read, with which tokenizer) and `tokenizer.json`.

Shards carry no text, so the bytes behind their tokens are unknown (bits per byte cannot be
reported) unless a prepared corpus recorded them. Ids beyond the tokenizer's vocabulary are
refused. A side held in one shard of the right width is used in place (a memmap); several are
joined into the token cache. This is the one input that is tokens already: it knows the token
cache's layout, and nothing about text formats.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gptcli.errors import GptError

LLMC_MAGIC = 20240520
LLMC_HEADER = 256 * 4  # bytes
LLMC_DTYPES = {1: np.dtype(np.uint16), 2: np.dtype(np.uint32)}
PREPARED = "corpus.json"  # the description of a prepared corpus directory
CHECK_TOKENS = 1 << 22  # ids checked (and copied) at a time


def llmc_header(dtype: np.dtype, n_tokens: int) -> bytes:
    """The header of an llm.c shard holding `n_tokens` ids of `dtype`."""
    version = next(v for v, d in LLMC_DTYPES.items() if d == dtype)
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [LLMC_MAGIC, version, n_tokens]
    return header.tobytes()


@dataclass
class Shard:
    path: Path
    offset: int  # header bytes before the ids
    dtype: np.dtype
    n_tokens: int
    format: str  # "nanogpt" or "llm.c"

    def tokens(self) -> np.ndarray:
        if self.n_tokens == 0:
            return np.zeros(0, dtype=self.dtype)
        return np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset)[: self.n_tokens]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        return digest.hexdigest()


def open_shard(path: Path) -> Shard:
    """A shard, its format recognised by its header (llm.c) or not (raw uint16, nanoGPT)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(LLMC_HEADER)
    except OSError as exc:
        raise GptError(f"{path}: cannot read ({exc.strerror})") from None
    if len(head) == LLMC_HEADER and int(np.frombuffer(head[:4], np.int32)[0]) == LLMC_MAGIC:
        version, n_tokens = (int(v) for v in np.frombuffer(head[4:12], np.int32))
        dtype = LLMC_DTYPES.get(version)
        if dtype is None:
            raise GptError(f"{path}: llm.c shard of unknown version {version} (known: 1, 2)")
        held = (size - LLMC_HEADER) // dtype.itemsize
        if held != n_tokens:
            raise GptError(
                f"{path}: truncated llm.c shard: its header says {n_tokens:,} tokens, "
                f"the file holds {held:,}"
            )
        return Shard(path, LLMC_HEADER, dtype, n_tokens, "llm.c")
    if size % 2:
        raise GptError(f"{path}: not a token shard (an odd number of bytes: not uint16 ids)")
    return Shard(path, 0, np.dtype(np.uint16), size // 2, "nanogpt")


def is_shard_file(path: Path) -> bool:
    return path.suffix.lower() == ".bin"


def is_val_name(path: Path) -> bool:
    """nanoGPT's val.bin, llm.c's *_val_*.bin."""
    name = path.name.lower()
    return name == "val.bin" or "_val_" in name or name.startswith("val_")


def wants_shards(inputs: list[str]) -> bool:
    """Whether the inputs are token shards (.bin files, or directories of them, or a prepared
    corpus) rather than text."""
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            if (path / PREPARED).is_file() or any(path.glob("*.bin")):
                return True
        elif is_shard_file(path):
            return True
    return False


@dataclass
class ShardSet:
    """The shards of each side; `prepared`: the description of a prepared corpus."""

    train: list[Shard]
    val: list[Shard]
    prepared: dict[str, Any] | None = None
    root: Path | None = None  # the prepared corpus's directory
    hashes: dict[Path, str] = field(default_factory=dict)

    def sha256(self, shard: Shard) -> str:
        if shard.path not in self.hashes:
            self.hashes[shard.path] = shard.sha256()
        return self.hashes[shard.path]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "path": str(s.path.resolve()),
                "format": s.format,
                "tokens": s.n_tokens,
                "sha256": self.sha256(s),
            }
            | ({"val": True} if s in self.val else {})
            for s in self.train + self.val
        ]


def _shard_files(raw: str) -> list[Path]:
    path = Path(raw).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.rglob("*.bin") if p.is_file())
        if not found:
            raise GptError(f"{path}: no .bin token shards in this directory")
        return found
    if not path.is_file():
        raise GptError(f"{path}: no such file")
    if not is_shard_file(path):
        raise GptError(f"{path}: token shards (.bin) cannot be mixed with text inputs")
    return [path]


def read_prepared(root: Path) -> ShardSet:
    """A directory written by `gpt tokenize corpus`."""
    try:
        meta = json.loads((root / PREPARED).read_text(encoding="utf-8"))
        if meta.get("format") != "gptcli-corpus":
            raise ValueError("its format is not gptcli-corpus")
        sides = {
            side: [open_shard(root / name) for name in meta["shards"][side]]
            for side in ("train", "val")
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GptError(f"{root / PREPARED}: not a prepared corpus description ({exc})") from None
    return ShardSet(sides["train"], sides["val"], meta, root)


def find_shards(inputs: list[str], val: list[str]) -> ShardSet:
    """The shards named, split: --val's, else those named as validation (val.bin, *_val_*),
    else a val.bin beside a train.bin."""
    if len(inputs) == 1 and (Path(inputs[0]).expanduser() / PREPARED).is_file():
        if val:
            raise GptError("a prepared corpus has its own split: --val does not apply")
        return read_prepared(Path(inputs[0]).expanduser())
    files = [p for raw in inputs for p in _shard_files(raw)]
    if val:
        train = files
        held = [p for raw in val for p in _shard_files(raw)]
    else:
        train = [p for p in files if not is_val_name(p)]
        held = [p for p in files if is_val_name(p)]
        if not held and len(files) == 1 and files[0].name == "train.bin":
            beside = files[0].with_name("val.bin")
            held = [beside] if beside.is_file() else []
    if not train:
        raise GptError("no training shards: every shard given is a validation one")
    return ShardSet([open_shard(p) for p in train], [open_shard(p) for p in held])


def check_ids(shard: Shard, vocab_size: int) -> None:
    tokens = shard.tokens()
    for start in range(0, len(tokens), CHECK_TOKENS):
        block = tokens[start : start + CHECK_TOKENS]
        top = int(block.max()) if len(block) else 0
        if top >= vocab_size:
            at = start + int(np.argmax(block >= vocab_size))
            raise GptError(
                f"{shard.path}: token {at:,} is id {int(tokens[at]):,}, beyond the tokenizer's "
                f"vocabulary of {vocab_size:,}: pass the --tokenizer the shards were made with"
            )


def side_tokens(
    shards: list[Shard], vocab_size: int, cache: Path, dtype: np.dtype
) -> tuple[np.ndarray, Path]:
    """One side's ids as one array: its shard in place, or the shards joined into `cache`."""
    from gptcli.store import atomic_path

    if len(shards) == 1 and shards[0].dtype == dtype:
        return shards[0].tokens(), shards[0].path
    if not shards:
        return np.zeros(0, dtype=dtype), cache
    if not cache.is_file():
        with atomic_path(cache) as tmp, open(tmp, "wb") as out:
            for shard in shards:
                tokens = shard.tokens()
                for start in range(0, len(tokens), CHECK_TOKENS):
                    tokens[start : start + CHECK_TOKENS].astype(dtype).tofile(out)
    if cache.stat().st_size == 0:
        return np.zeros(0, dtype=dtype), cache
    return np.memmap(cache, dtype=dtype, mode="r"), cache
