"""The corpus as checked: every input read once, before anything is written.

`read_corpus` runs each reader to its end: it refuses bad input (naming the file, and line or
row), counts documents and UTF-8 bytes and hashes the text, so that the token cache can be
keyed by content. The text itself is not kept: `Texts` streams it again on demand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.datasources import find_readers, progress
from gptcli.datasources.base import DocumentsReader, Reader, ReadOptions
from gptcli.errors import GptError

DOCUMENT_END = b"\xff"  # hashed after each document of a many-document input (never in UTF-8)


@dataclass
class SourceFile:
    path: Path
    n_bytes: int  # UTF-8 bytes of the text (without a BOM)
    sha256: str  # of the text (and, for many-document inputs, where each document ends)
    reader: Reader | None = None
    documents: int = 1
    skipped: int = 0

    @property
    def key(self) -> str:
        """What the token cache key takes from this input. A plain text file gives its text's
        hash alone, as it always has (so existing caches stay valid)."""
        return self.sha256 if self.one_document else f"documents:{self.sha256}"

    @property
    def one_document(self) -> bool:
        return self.reader is None or self.reader.one_document

    def describe(self) -> dict[str, Any]:
        named = str(self.path).startswith("hf:")  # a dataset's name, not a path
        described: dict[str, Any] = {
            "path": str(self.path) if named else str(self.path.resolve()),
            "bytes": self.n_bytes,
            "sha256": self.sha256,
        }
        if not self.one_document:
            assert self.reader is not None
            described |= {"format": self.reader.format, "documents": self.documents}
            if self.skipped:
                described["skipped"] = self.skipped
        return described

    def pieces(self) -> Iterator[str | None]:
        assert self.reader is not None
        return self.reader.pieces()

    def batches(self) -> Iterator[list[str]]:
        """Whole documents, in lists (a many-document input)."""
        assert isinstance(self.reader, DocumentsReader)
        return self.reader.batches()


@dataclass
class Texts:
    """The checked corpus: its inputs (and the held-out ones given with --val)."""

    files: list[SourceFile]
    val_files: list[SourceFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    options: ReadOptions = field(default_factory=ReadOptions)

    @property
    def n_bytes(self) -> int:
        return sum(f.n_bytes for f in self.files)

    @property
    def documents(self) -> int:
        return sum(f.documents for f in self.files)

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files + self.val_files]

    def iter_text(self) -> Iterator[str]:
        """The text of the training inputs, in pieces (document ends left out)."""
        for f in self.files:
            yield from (piece for piece in f.pieces() if piece)


def scan(reader: Reader) -> tuple[SourceFile, bool, str | None]:
    """One input read through: (what it holds, whether any text is not blank, a warning)."""
    if not reader.one_document:
        assert isinstance(reader, DocumentsReader)
        return scan_documents(reader)
    digest = hashlib.sha256()
    n_bytes = 0
    any_text = False
    warning = None
    for piece in reader.pieces():
        if piece is None:
            continue
        if not n_bytes and hasattr(reader, "warning"):
            warning = reader.warning(piece)
        encoded = utf8(piece, reader.path, 1)
        digest.update(encoded)
        n_bytes += len(encoded)
        any_text = any_text or bool(piece.strip())
    return SourceFile(reader.path, n_bytes, digest.hexdigest(), reader), any_text, warning


def scan_documents(reader: DocumentsReader) -> tuple[SourceFile, bool, None]:
    """`scan` of a many-document input: its text hashed with DOCUMENT_END after each document."""
    digest = hashlib.sha256()
    n_bytes = documents = 0
    any_text = False
    for batch in reader.batches():
        encoded = [utf8(text, reader.path, documents + n) for n, text in enumerate(batch, 1)]
        if encoded:
            digest.update(DOCUMENT_END.join(encoded) + DOCUMENT_END)
        n_bytes += sum(map(len, encoded))
        documents += len(batch)
        any_text = any_text or any(text and not text.isspace() for text in batch)
    source = SourceFile(reader.path, n_bytes, digest.hexdigest(), reader, documents)
    source.skipped = reader.skipped
    return source, any_text, None


def utf8(text: str, path: Path, document: int) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise GptError(
            f"{path}: document {document}: its text holds an unpaired "
            "surrogate (an escape such as \\ud800 that is not a character)"
        ) from None


SCAN_VERSION = 1


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes as stored (compressed, where it is)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


class ScanCache:
    """What checking a record file found, keyed by the file's bytes and the reading options:
    a second run on the same data hashes the files instead of parsing them again. Written
    only once every input has passed, so bad input leaves nothing behind."""

    def __init__(self, folder: Path | None, options: ReadOptions) -> None:
        self.folder = folder
        self.options = options
        self.new: dict[Path, dict[str, Any]] = {}

    def path(self, reader: Reader) -> Path | None:
        if self.folder is None or reader.one_document or reader.format == "hf":
            return None  # plain text: checking it is hashing it; datasets: no file
        parts = [SCAN_VERSION, file_digest(reader.path), reader.format]
        parts += [self.options.text_field, self.options.skip_bad_lines]
        key = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
        return self.folder / f"{key}.scan.json"

    def scan(self, reader: Reader) -> tuple[SourceFile, bool, str | None]:
        where = self.path(reader)
        if where is not None and where.is_file():
            found = json.loads(where.read_text(encoding="utf-8"))
            reader.skipped = found["skipped"]
            if found["skipped"]:
                reader.bad = [found["bad"]]  # type: ignore[attr-defined]  # record readers
            source = SourceFile(reader.path, found["bytes"], found["sha256"], reader)
            source.documents, source.skipped = found["documents"], found["skipped"]
            return source, found["any_text"], None
        source, any_text, warning = scan(reader)
        if where is not None:
            self.new[where] = {
                "bytes": source.n_bytes,
                "sha256": source.sha256,
                "documents": source.documents,
                "skipped": source.skipped,
                "bad": (getattr(reader, "bad", None) or [""])[0],
                "any_text": any_text,
            }
        return source, any_text, warning

    def save(self) -> None:
        from gptcli.store import write_json_atomic

        for where, found in self.new.items():
            write_json_atomic(where, found)


def read_corpus(
    inputs: list[str],
    options: ReadOptions | None = None,
    val: list[str] | None = None,
    cache_dir: Path | None = None,
) -> Texts:
    """Finds and checks every input in one streaming pass. Missing, binary, non-UTF-8, bad
    records and empty inputs are refused before anything is written. With `cache_dir` (the
    token cache), what checking a record file found is kept for the next run."""
    options = options or ReadOptions()
    texts = Texts([], options=options)
    cache = ScanCache(cache_dir, options)
    found = [find_readers(names, options) if names else [] for names in (inputs, val)]
    progress.start("checking the data", [r.path for readers in found for r in readers])
    for readers, target in zip(found, (texts.files, texts.val_files), strict=True):
        if not readers:
            continue
        any_text = False
        for reader in readers:
            source, has_text, warning = cache.scan(reader)
            any_text = any_text or has_text
            if warning:
                texts.warnings.append(warning)
            if source.skipped:
                bad = getattr(reader, "bad", [""])[0]
                texts.warnings.append(
                    f"warning: skipped {source.skipped:,} bad records of {source.path} "
                    f"(the first: {bad})"
                )
            target.append(source)
        if not any_text:
            which = "validation text" if target is texts.val_files else "corpus"
            raise GptError(f"the {which} is empty: " + ", ".join(str(s.path) for s in target))
    cache.save()
    return texts
