"""Bytes and text out of a file, decompressed on the fly: gzip, bzip2, xz and zstd.

Compression is recognised by the file's first bytes (its magic number), so a compressed file
is read as such whatever its name; a name that promises compression the bytes do not have is
refused. Nothing is ever decompressed to disk. A truncated or corrupt stream is an error
naming the file, never a silently shorter text. Text is decoded strictly as UTF-8 (a NUL byte
means a binary file). This module knows nothing about documents, formats or tokens.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gptcli.datasources import progress
from gptcli.errors import GptError

BLOCK_BYTES = 4 << 20  # read this much at a time

MAGIC = {
    "gzip": b"\x1f\x8b",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
    "zstd": b"\x28\xb5\x2f\xfd",
}
SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
SUFFIXES[".zstd"] = "zstd"


def compression(path: Path) -> str | None:
    """The compression of a file, from its first bytes ("gzip", "bzip2", "xz", "zstd"), or None."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise GptError(f"{path}: cannot read ({exc.strerror})") from None
    found = next((kind for kind, magic in MAGIC.items() if head.startswith(magic)), None)
    named = SUFFIXES.get(path.suffix.lower())
    if named and found != named:
        raise GptError(f"{path}: not {named} data, although its name says so")
    return found


def inner_suffix(path: Path) -> str:
    """The suffix of what a file holds, under any compression suffix: a.jsonl.gz -> .jsonl."""
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return Path(name).suffix


def _zstd_blocks(raw: IO[bytes], path: Path, block_bytes: int) -> Iterator[bytes]:
    """zstd frames one after another; a stream that stops inside a frame is refused."""
    try:
        import zstandard
    except ImportError:
        raise GptError(f'{path}: zstd needs zstandard: pip install "gptcli[zstd]"') from None
    maker = zstandard.ZstdDecompressor()
    decoder, fed = maker.decompressobj(), False
    try:
        while True:
            chunk = raw.read(block_bytes)
            if not chunk:
                break
            progress.advance(len(chunk))
            while chunk:
                out = decoder.decompress(chunk)
                fed = True
                if out:
                    yield out
                if decoder.eof:  # a frame ended: the rest starts the next one
                    chunk = decoder.unused_data
                    decoder, fed = maker.decompressobj(), False
                else:
                    chunk = b""
    except zstandard.ZstdError as exc:
        raise GptError(f"{path}: corrupt zstd data ({exc})") from None
    if fed:
        raise GptError(f"{path}: truncated zstd data (the stream stops inside a frame)")


def iter_bytes(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """A file's bytes in blocks, decompressed when it is compressed."""
    kind = compression(path)
    try:
        with open(path, "rb") as raw:
            if kind == "zstd":
                yield from _zstd_blocks(raw, path, block_bytes)
                return
            stream: IO[bytes] = raw
            if kind == "gzip":
                import gzip

                stream = gzip.GzipFile(fileobj=raw, mode="rb")
            elif kind == "bzip2":
                import bz2

                stream = bz2.BZ2File(raw, "rb")
            elif kind == "xz":
                import lzma

                stream = lzma.LZMAFile(raw, "rb")  # noqa: SIM115  (closed with raw)
            done = 0  # bytes of the file read (and reported) so far
            while True:
                try:
                    block = stream.read(block_bytes)
                except (EOFError, OSError, ValueError) as exc:
                    if kind is None and isinstance(exc, OSError):
                        raise
                    raise GptError(f"{path}: truncated or corrupt {kind} data ({exc})") from None
                except Exception as exc:  # zlib.error, lzma.LZMAError
                    raise GptError(f"{path}: corrupt {kind} data ({exc})") from None
                position = raw.tell()
                progress.advance(position - done)
                done = position
                if not block:
                    return
                yield block
    except OSError as exc:
        raise GptError(f"{path}: cannot read ({exc.strerror or exc})") from None


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """A file's text in blocks, decoded strictly as UTF-8 (binary and non-UTF-8 refused)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
    offset = 0
    first = True
    for raw in iter_bytes(path, block_bytes):
        if b"\x00" in raw:
            raise GptError(f"{path}: looks like a binary file, not text")
        try:
            text = decoder.decode(raw)
        except UnicodeDecodeError as exc:
            raise GptError(
                f"{path}: not UTF-8 text (invalid byte at offset {offset + exc.start}); "
                "convert it to UTF-8"
            ) from None
        if first and text:
            text = text.removeprefix("\ufeff")
            first = False
        if text:
            yield text
        offset += len(raw)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise GptError(
            f"{path}: not UTF-8 text (it ends inside a character); convert it to UTF-8"
        ) from None


def iter_line_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[list[bytes]]:
    """A file's lines as bytes, without their line ends (the last one even without a newline),
    a block's worth at a time."""
    rest = b""
    for block in iter_bytes(path, block_bytes):
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        yield lines
    if rest:
        yield [rest]


def file_size(path: Path) -> int:
    """Bytes on disk (compressed, where the file is)."""
    return os.stat(path).st_size
