"""How far reading the data has got, for whoever shows it (the CLI's progress bar).

The readers report the bytes they take from disk (compressed bytes, for compressed files) to
the display installed with `showing(display)`; each pass over the data (checking it, training
the tokenizer, tokenizing) starts with `start(label, total bytes)`. With no display installed,
reporting costs nothing. This module knows nothing about terminals.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol


class Display(Protocol):
    def start(self, label: str, total: int) -> None: ...

    def advance(self, n_bytes: int) -> None: ...


_display: Display | None = None


@contextlib.contextmanager
def showing(display: Display | None) -> Iterator[None]:
    global _display
    previous, _display = _display, display
    try:
        yield
    finally:
        _display = previous


def start(label: str, paths: list[Path]) -> None:
    if _display is not None:
        _display.start(label, sum(p.stat().st_size for p in paths if p.is_file()))


def advance(n_bytes: int) -> None:
    if _display is not None and n_bytes:
        _display.advance(n_bytes)
