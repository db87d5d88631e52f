"""JSON lines (.jsonl, .ndjson, and .json holding lines) and .json arrays of objects: one
document per record, the text of its `text_field`.

A record without the field, or whose field is not a string, is refused as `FILE:LINE` naming
the fields it has (so a chat set with `messages` is never trained on as text), or skipped and
counted with `skip_bad_lines`. Compressed files stream through `streams`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.datasources.base import ReadOptions, pieces_of
from gptcli.datasources.streams import iter_bytes, iter_line_blocks
from gptcli.errors import GptError

SHOWN_FIELDS = 8  # fields named in an error, at most
SCAN = json.JSONDecoder().scan_once  # the C scanner under json.loads: (value, end) at an index
BOM = b"\xef\xbb\xbf"
NOT_PARSED = object()  # a line the fast path could not parse


def type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "true/false", int: "a number"}
    names |= {float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def text_of(record: Any, options: ReadOptions, where: str) -> str:
    """The text of one record, or GptError(`where`: why not)."""
    name = options.text_field
    if not isinstance(record, dict):
        raise GptError(f"{where}: each record must be a JSON object, not {type_name(record)}")
    if name not in record:
        fields = ", ".join(list(record)[:SHOWN_FIELDS]) or "none"
        more = ", ..." if len(record) > SHOWN_FIELDS else ""
        hint = "" if name != "text" else "; --text-field NAME reads another"
        raise GptError(f'{where}: no "{name}" field (fields: {fields}{more}){hint}')
    value = record[name]
    if not isinstance(value, str):
        raise GptError(f'{where}: "{name}" is {type_name(value)}, not a string')
    return value


@dataclass
class RecordsReader:
    path: Path
    options: ReadOptions
    format: str = "jsonl"
    one_document: bool = False
    skipped: int = 0
    bad: list[str] = field(default_factory=list)  # the first bad record's message, if skipped

    def pieces(self) -> Iterator[str | None]:
        return pieces_of(self.batches())

    def batches(self) -> Iterator[list[str]]:
        """The records' texts, a block of lines at a time."""
        self.skipped = 0
        if self.format == "json" and self._is_array():
            yield from self._array_batches()
            return
        name = self.options.text_field
        number = 0
        for lines in iter_line_blocks(self.path):
            batch = []
            for line in lines:
                number += 1
                try:  # the common case as json.loads(line) parses it, without its wrappers
                    string = line.decode("utf-8", "surrogatepass")
                    record, end = SCAN(string, 0)
                    if end != len(string) and string[end:].strip(" \t\n\r"):
                        record = NOT_PARSED  # something after the value: _checked says what
                except (StopIteration, ValueError):  # blank, bad JSON or UTF-8: see _checked
                    record = NOT_PARSED
                text = record.get(name) if type(record) is dict else None
                if type(text) is not str:
                    text = self._checked(line, number, record)
                    if text is None:
                        continue  # a blank line, or a bad record skipped
                batch.append(text)
            yield batch

    def _checked(self, line: bytes, number: int, record: Any) -> str | None:
        """The text of a line the fast path did not take: None for a blank line or a bad
        record skipped; GptError (`FILE:LINE`: why) for a bad one otherwise."""
        if not (line.removeprefix(BOM) if number == 1 else line).strip():
            return None
        where = lambda: f"{self.path}:{number}"  # noqa: E731
        try:
            if record is NOT_PARSED:  # a BOM, UTF-16/32 (which json.loads detects), or bad
                record = self._parse(line, where)
            return text_of(record, self.options, where())
        except GptError as exc:
            self._skip(exc)
            return None

    def _skip(self, exc: GptError) -> None:
        """Counts a bad record with skip_bad_lines; raises what is wrong with it otherwise."""
        if not self.options.skip_bad_lines:
            raise exc
        self.skipped += 1
        if not self.bad:
            self.bad.append(str(exc))

    def _array_batches(self) -> Iterator[list[str]]:
        try:
            data = self._parse(b"".join(iter_bytes(self.path)), lambda: str(self.path))
        except GptError as exc:
            raise exc from None  # a broken array is never skipped
        batch = []
        for number, record in enumerate(data, 1):
            try:
                batch.append(text_of(record, self.options, f"{self.path}: item {number}"))
            except GptError as exc:
                self._skip(exc)
        yield batch

    def _parse(self, raw: bytes, where: Callable[[], str]) -> Any:
        try:
            return json.loads(raw.removeprefix(BOM))
        except UnicodeDecodeError:
            raise GptError(f"{where()}: not UTF-8 text; convert it to UTF-8") from None
        except json.JSONDecodeError as exc:
            raise GptError(f"{where()}: not valid JSON ({exc.msg})") from None

    def _is_array(self) -> bool:
        """Whether a .json file holds one array (read whole: such exports are small) rather
        than lines."""
        for block in iter_bytes(self.path, 1 << 16):
            stripped = block.removeprefix(BOM).lstrip()
            if stripped:
                return stripped.startswith(b"[")
        return False
