"""The one interface every training-data reader implements, and the options readers share.

A reader is one input (a file, or a dataset) seen as a sequence of documents. `pieces()`
yields the documents' text in order, with `None` after each document:

- an input that is ONE document (a .txt file) yields its text in blocks of any size, so a file
  of many gigabytes never has to fit in memory, and the validation split may cut inside it;
- an input of many documents (a JSONL line, a Parquet row) yields each document as one str,
  then `None`; the validation split cuts only between them.

An input of many documents also gives `batches()`: lists of whole documents' texts (a block of
lines, a row group; "" for an empty document), which is how the corpus is checked and
tokenized (one Python step per document, not three); `pieces()` is derived from it.

A document whose text is empty yields nothing but its `None`. Readers check their input as
they go and raise `GptError` naming the file (and line or row) on anything they cannot read;
with `skip_bad_lines` they count bad records in `skipped` instead. Readers know nothing about
tokens, splits or caches (`gptcli.data` does those).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ReadOptions:
    """How record formats are read: which field holds the text, and what to do with bad ones."""

    text_field: str = "text"
    skip_bad_lines: bool = False


class Reader(Protocol):
    path: Path  # what the user named (a file, or a dataset's directory or name)
    format: str  # "text", "jsonl", "json", "parquet", "hf"
    one_document: bool  # True: the whole input is one document, read in blocks
    skipped: int  # bad records skipped so far (with skip_bad_lines)

    def pieces(self) -> Iterator[str | None]:
        """The text of each document in order, `None` after each one."""
        ...


@runtime_checkable
class DocumentsReader(Reader, Protocol):
    """A reader of an input of many documents (`one_document` is False)."""

    def batches(self) -> Iterator[list[str]]:
        """The documents' texts in order, in lists ("" for an empty document)."""
        ...


def pieces_of(batches: Iterable[list[str]]) -> Iterator[str | None]:
    """The `pieces()` of a many-document reader: each document's text (unless empty), then
    None."""
    for batch in batches:
        for text in batch:
            if text:
                yield text
            yield None
