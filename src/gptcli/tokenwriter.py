"""Text -> token id files: how a corpus's text is cut into pieces and encoded.

`TokenWriter` appends one side's ids (train or validation) to a file, an end-of-text token
between documents; the `Encoder` thread runs the encoding while the caller reads on. The cuts
and joins here never change an id: a piece ends only where no token can straddle it, and
documents are joined only by the end-of-text token's text, for tokenizers that split it out
first.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from gptcli.datasources.shards import LLMC_HEADER, llmc_header
from gptcli.datasources.streams import BLOCK_BYTES
from gptcli.tokenizer import EOT, Tokenizer, iter_chunks

PIECE_CHARS = 1 << 12  # encode_batch gets many short pieces: long ones encode much slower
SHORT_PIECE_CHARS = 1 << 10  # shorter still where the tokenizer allows (faster to encode)
ENCODE_CHARS = 1 << 21  # text handed to the encoding thread at a time (1 MB: 2% slower)
JOIN_CHARS = 1 << 11  # short documents joined up to this (2k-4k encode as fast as plain text)
IN_FLIGHT = 2  # batches the encoding thread may hold before the reader waits for it
LINE_CUT = re.compile(r"(?<=[!-~])\n(?=[!-~])")  # a line end between two ASCII non-spaces


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def utf8_size(text: str) -> int:
    """UTF-8 bytes of a text (ASCII text, the common case, without encoding it)."""
    return len(text) if text.isascii() else len(text.encode())


def cuts_lines(tokenizer: Tokenizer) -> bool:
    """Whether cutting a text after a `LINE_CUT` newline leaves its ids as they are: for a
    GPT-2 byte-level BPE (the newline is a pre-token of its own and the next one starts after
    it) and for the char tokenizer (which splits after every newline), with no normalizer and
    no added token that holds a newline or takes the whitespace before it."""
    spec = json.loads(tokenizer.to_json())
    pre = spec.get("pre_tokenizer") or {}
    byte_level = pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
    byte_level = byte_level and not pre.get("add_prefix_space")
    added = spec.get("added_tokens") or []
    plain = not any("\n" in a.get("content", "") or a.get("lstrip") for a in added)
    return spec.get("normalizer") is None and plain and (byte_level or tokenizer.kind == "char")


def short_pieces(piece: str, size: int = SHORT_PIECE_CHARS) -> list[str]:
    """A piece cut again at `LINE_CUT` newlines, into parts of at least `size` characters."""
    if len(piece) <= size:
        return [piece]
    parts, start = [], 0
    while len(piece) - start > size:
        found = LINE_CUT.search(piece, start + size)
        if found is None:
            break
        parts.append(piece[start : found.end()])
        start = found.end()
    if start < len(piece):
        parts.append(piece[start:])
    return parts


def joins_documents(tokenizer: Tokenizer) -> bool:
    """Whether short documents may be encoded as one text joined by the end-of-text token's
    own text: the tokenizer cuts its input at added tokens before anything else, so each
    document keeps the ids it has alone. Only where that is known to hold: a byte-level BPE
    (each part is pre-tokenized as a text of its own) or the char tokenizer, no normalizer,
    truncation or padding, an end-of-text token that takes no whitespace around it, and no
    other added token that overlaps its text (one matched first would break it)."""
    spec = json.loads(tokenizer.to_json())
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    if not (pre == "ByteLevel" or (pre == "Split" and tokenizer.kind == "char")):
        return False
    if any(spec.get(key) is not None for key in ("normalizer", "truncation", "padding")):
        return False
    added = spec.get("added_tokens") or []
    eot = next((a for a in added if a.get("content") == EOT), None)
    if eot is None or eot.get("lstrip") or eot.get("rstrip") or eot.get("single_word"):
        return False
    return not any(overlaps(a.get("content", ""), EOT) for a in added if a is not eot)


def overlaps(a: str, b: str) -> bool:
    """Whether a written next to, inside or around b could share characters with it."""
    if not a or a in b or b in a:
        return bool(a)
    ends = range(1, min(len(a), len(b)))
    return any(a.endswith(b[:n]) or b.endswith(a[:n]) for n in ends)


def join_documents(queue: list[str | None], size: int) -> list[str]:
    """A writer's queue as texts to encode, end-of-text tokens written as `EOT` text: pieces
    of different documents joined into texts of about `size` characters, pieces of one
    document kept apart (each is encoded alone, as it was cut)."""
    texts: list[str] = []
    run: list[str] = []
    length = 0
    after_text = False  # the run ends with a piece, not with an end-of-text
    for piece in queue:
        if piece is None:
            run.append(EOT)
            length += len(EOT)
            after_text = False
            if length >= size:
                texts.append("".join(run))
                run, length = [], 0
            continue
        if after_text:
            texts.append("".join(run))
            run, length = [], 0
        run.append(piece)
        length += len(piece)
        after_text = True
    if run:
        texts.append("".join(run))
    return texts


class Encoder:
    """One thread that runs the encoding jobs of a corpus's writers in the order they are
    handed over, while the caller reads and parses the next text (`encode_batch` runs without
    the GIL). One job at a time keeps memory to one batch's encodings."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gptcli-encode")
        self.in_flight: deque[Future[None]] = deque()

    def submit(self, job: Callable[[], None]) -> None:
        """Queues a job, waiting while IN_FLIGHT others are queued or running."""
        self.in_flight.append(self.pool.submit(job))
        while len(self.in_flight) > IN_FLIGHT:
            self.in_flight.popleft().result()  # raises what the job raised

    def drain(self) -> None:
        while self.in_flight:
            self.in_flight.popleft().result()

    def close(self) -> None:
        try:
            self.drain()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


class TokenWriter:
    """Appends the ids of one side to a file, an end-of-text token between documents.

    A document's text is cut into pieces where its pending text passes BLOCK_BYTES and where it
    ends (the pieces, and so the ids, do not depend on how many documents there are); pieces
    of many documents are encoded together, so that short documents use every core too.
    Batches are encoded and written by an `Encoder`'s thread (shared by the writers of a
    corpus).
    """

    def __init__(
        self, tokenizer: Tokenizer, path: Path, encoder: Encoder, header: bool = False
    ) -> None:
        self.tokenizer = tokenizer
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.file = open(path, "wb")  # noqa: SIM115
        self.header = header  # an llm.c shard header before the ids (written at the end)
        if header:
            self.file.write(bytes(LLMC_HEADER))
        self.short = cuts_lines(tokenizer)  # pieces cut again at safe line ends
        self.join = joins_documents(tokenizer)  # short documents encoded together
        self.pending = ""  # the current document's text not yet cut into pieces
        self.queue: list[str | None] = []  # pieces to encode; None: an end-of-text token
        self.queued = 0  # characters in the queue
        self.n_tokens = 0  # written by the encoding thread
        self.n_bytes = 0
        self.documents = 0
        self.encoder = encoder

    def add(self, text: str, new_document: bool) -> None:
        """A piece of a one-document input's text (`new_document`: its first)."""
        if new_document:
            self.cut()
            self.begin()
        self.n_bytes += utf8_size(text)
        self.pending = self.pending + text if self.pending else text
        if len(self.pending) >= BLOCK_BYTES:
            chunks = list(iter_chunks(self.pending, PIECE_CHARS))
            self.pending = chunks.pop()  # its end may not be a safe cut yet
            self.enqueue(chunks)

    def add_documents(self, texts: list[str]) -> None:
        """Whole documents (of a many-document input), each ended."""
        self.cut()
        self.n_bytes += utf8_size("".join(texts))
        for text in texts:
            if text:  # an empty document has no end-of-text of its own (as an empty file)
                self.begin()
                self.pending = text
                self.cut()

    def begin(self) -> None:
        """A new document: an end-of-text token after the one before."""
        if self.documents and self.tokenizer.eot_id is not None:
            self.queue.append(None)
        self.documents += 1

    def cut(self) -> None:
        """The current document's pending text, cut into pieces and queued."""
        if len(self.pending) > (SHORT_PIECE_CHARS if self.short else PIECE_CHARS):
            self.enqueue(list(iter_chunks(self.pending, PIECE_CHARS)))
        elif self.pending:  # a short document: one piece, as iter_chunks would give it
            self.queue.append(self.pending)
            self.queued += len(self.pending)
            if self.queued >= ENCODE_CHARS:
                self.encode()
        self.pending = ""

    def enqueue(self, chunks: list[str]) -> None:
        if self.short:
            chunks = [part for chunk in chunks for part in short_pieces(chunk)]
        for chunk in chunks:
            self.queue.append(chunk)
            self.queued += len(chunk)
            if self.queued >= ENCODE_CHARS:
                self.encode()

    def encode(self) -> None:
        """Hands the queue to the encoding thread."""
        if not self.queue:
            return
        queue, self.queue, self.queued = self.queue, [], 0
        self.encoder.submit(lambda: self.write(queue))

    def write(self, queue: list[str | None]) -> None:
        """Encodes one batch and appends its ids (on the encoding thread)."""
        if self.join:  # end-of-text tokens as text: the tokenizer gives their ids
            parts = self.tokenizer.encode_batch(join_documents(queue, JOIN_CHARS))
        else:
            chunks = [c for c in queue if c is not None]
            parts = self.tokenizer.encode_batch(chunks) if chunks else []
            if len(chunks) < len(queue):  # end-of-text tokens between documents
                encoded, eot = iter(parts), [self.tokenizer.eot_id]
                parts = [next(encoded) if c is not None else eot for c in queue]
        count = sum(map(len, parts))
        ids = np.fromiter(itertools.chain.from_iterable(parts), dtype=self.dtype, count=count)
        ids.tofile(self.file)
        self.n_tokens += count

    def close(self) -> None:
        self.cut()
        self.encode()
        self.encoder.drain()
        if self.header:
            self.file.seek(0)
            self.file.write(llmc_header(self.dtype, self.n_tokens))
        self.file.close()
