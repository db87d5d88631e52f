"""Plain text files (compressed or not): the whole file is one document, read in blocks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptcli.datasources.streams import iter_blocks

LOOKS_LIKE_JSON_LINES = 3  # this many first lines, all JSON objects: probably meant as JSONL


@dataclass
class TextReader:
    path: Path
    format: str = "text"
    one_document: bool = True
    skipped: int = 0

    def pieces(self) -> Iterator[str | None]:
        yield from iter_blocks(self.path)
        yield None

    def warning(self, first_block: str) -> str | None:
        """A line for a text file that looks like JSON lines (it is still trained as text)."""
        lines = [line for line in first_block.splitlines() if line.strip()]
        lines = lines[:LOOKS_LIKE_JSON_LINES]
        if not lines:
            return None
        for line in lines:
            try:
                if not isinstance(json.loads(line), dict):
                    return None
            except ValueError:
                return None
        return (
            f"warning: {self.path}: its lines are JSON objects, trained as plain text as its "
            "name says; name it .jsonl to train on their text field"
        )
