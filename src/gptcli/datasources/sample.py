"""The text a BPE tokenizer is trained on: all of a corpus up to a size, beyond it a sample
of that size drawn evenly across the corpus.

Units are documents, or pieces of about a megabyte of a large text file; each is taken or
left whole, so that the share taken so far follows the share of the corpus read so far.
Nothing is held but the unit at hand: memory does not grow with the corpus (the tokenizer's
trainer holds the counts of the sample's words, which grow with the sample only).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from gptcli.errors import GptError
from gptcli.tokenizer import iter_chunks

DEFAULT_SAMPLE = 100 << 20  # bytes: corpora up to this train the tokenizer on all their text
UNIT_CHARS = 1 << 20  # a large file is sampled in pieces of about this many characters
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'100MB', '2G', '500k', '1GiB' or a number of bytes."""
    found = _SIZE.match(text)
    if not found:
        raise GptError(f"--tokenizer-sample: {text!r} is not a size (e.g. 100MB, 2GB)")
    unit = (found.group(2) or "b").lower()
    scale = 1
    if unit != "b":
        power = "kmgt".index(unit[0]) + 1
        scale = (1024 if "i" in unit else 1000) ** power
    size = int(float(found.group(1)) * scale)
    if size < 1:
        raise GptError("--tokenizer-sample must be at least 1 byte")
    return size


def sampled(units: Iterable[str], total_bytes: int, sample_bytes: int) -> Iterator[str]:
    """The units to train on: all when the corpus fits the sample, else an even share."""
    if total_bytes <= sample_bytes:
        yield from units
        return
    share = sample_bytes / total_bytes
    seen = taken = 0
    for unit in units:
        size = len(unit.encode())
        seen += size
        if taken + size / 2 <= share * seen:
            taken += size
            yield unit


def sample_units(pieces: Iterable[str | None], one_document: bool) -> Iterator[str]:
    """Units of a reader's pieces: each document of a many-document input, pieces of about
    UNIT_CHARS of a file that is one document."""
    for piece in pieces:
        if not piece:
            continue
        if one_document and len(piece) > UNIT_CHARS:
            yield from iter_chunks(piece, UNIT_CHARS)
        else:
            yield piece
