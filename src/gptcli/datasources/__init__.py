"""Where training text comes from: files of each format, read as documents.

`find_readers(inputs)` turns what the user named (files, directories, globs) into one reader
per input (the interface is in `datasources.base`). The format is recognised by content and
suffix: compression by the file's magic number (gzip, bzip2, xz, zstd; streamed, never
written out), then the suffix under it (`.jsonl`/`.ndjson`/`.json` records, `.parquet`,
anything else plain text); a Parquet file is also known by its magic number. A directory
means every supported file under it, sorted. A Hugging Face dataset is named `hf:ORG/NAME`
(or is a directory saved with `save_to_disk`). Nothing here tokenizes, splits or caches.
"""

from __future__ import annotations

from pathlib import Path

from gptcli.datasources.base import Reader, ReadOptions
from gptcli.datasources.streams import compression, inner_suffix
from gptcli.errors import GptError

RECORD_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
DATA_SUFFIXES = {".txt", ".parquet", *RECORD_SUFFIXES}  # what a directory's files are
PARQUET_MAGIC = b"PAR1"

__all__ = ["DATA_SUFFIXES", "ReadOptions", "Reader", "find_readers", "reader_for"]


def is_data_file(path: Path) -> bool:
    """Whether a file under a directory is training data (by its suffix, under compression)."""
    return path.is_file() and inner_suffix(path) in DATA_SUFFIXES


def reader_for(path: Path, options: ReadOptions) -> Reader:
    """The reader of one file, from its content and its suffix."""
    kind = compression(path)
    suffix = inner_suffix(path)
    if suffix == ".parquet" or (kind is None and _starts_with(path, PARQUET_MAGIC)):
        if kind is not None:
            raise GptError(
                f"{path}: a {kind}-compressed Parquet file cannot be read in place; "
                "decompress it (Parquet compresses its own pages)"
            )
        from gptcli.datasources.parquet import ParquetReader

        return ParquetReader(path, options)
    if suffix in RECORD_SUFFIXES:
        from gptcli.datasources.records import RecordsReader

        return RecordsReader(path, options, format=RECORD_SUFFIXES[suffix])
    from gptcli.datasources.text import TextReader

    return TextReader(path)


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def find_files(inputs: list[str]) -> list[Path]:
    """Files as given; a directory means every supported file under it (sorted); globs are
    expanded (sorted)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if is_data_file(p))
            if not found:
                raise GptError(
                    f"{path}: no training data in this directory (.txt, .jsonl, .json, "
                    ".parquet, compressed or not)"
                )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        elif path.exists():
            raise GptError(f"{path}: not a regular file")
        elif any(ch in raw for ch in "*?["):
            root = Path(path.anchor) if path.is_absolute() else Path()
            pattern = str(path.relative_to(path.anchor)) if path.is_absolute() else raw
            matches = sorted(p for p in root.glob(pattern) if p.is_file())
            if not matches:
                raise GptError(f"{raw}: no files match this pattern")
            files.extend(matches)
        else:
            raise GptError(f"{path}: no such file or directory")
    if not files:
        raise GptError("no input files given")
    return files


def find_readers(inputs: list[str], options: ReadOptions | None = None) -> list[Reader]:
    """One reader per input file; a Hugging Face dataset (`hf:...`, or a directory written by
    `save_to_disk`) is one input."""
    from gptcli.datasources.hf import HFReader, is_dataset

    options = options or ReadOptions()
    readers: list[Reader] = []
    for raw in inputs:
        if is_dataset(raw):
            readers.append(HFReader(Path(raw), options))
        else:
            readers.extend(reader_for(path, options) for path in find_files([raw]))
    return readers
