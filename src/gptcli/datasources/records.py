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

from gptcli.datasources.base import ReadOptions
from gptcli.datasources.streams import iter_byte_lines, iter_bytes
from gptcli.errors import GptError

SHOWN_FIELDS = 8  # fields named in an error, at most
DECODE = json.JSONDecoder().decode  # what json.loads does with a str, without its checks


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
        self.skipped = 0
        name = self.options.text_field
        for where, record in self._records():
            try:
                if isinstance(record, GptError):
                    raise record
                text = record.get(name) if isinstance(record, dict) else None
                if not isinstance(text, str):
                    text = text_of(record, self.options, where())  # raises: says why
            except GptError as exc:
                if not self.options.skip_bad_lines:
                    raise
                self.skipped += 1
                if not self.bad:
                    self.bad.append(str(exc))
                continue
            if text:
                yield text
            yield None

    def _records(self) -> Iterator[tuple[Callable[[], str], Any]]:
        """(where, the parsed record or the GptError that says why there is none) for each."""
        if self.format == "json" and self._is_array():
            try:
                data = self._parse(b"".join(iter_bytes(self.path)), lambda: str(self.path))
            except GptError as exc:
                raise exc from None  # a broken array is never skipped
            for number, record in enumerate(data, 1):
                yield (lambda n=number: f"{self.path}: item {n}"), record
            return
        number = 0
        for line in iter_byte_lines(self.path):
            number += 1
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            where = lambda n=number: f"{self.path}:{n}"  # noqa: E731
            try:  # the common case as json.loads(line) parses it, without its detection
                if b"\x00" in line[:4]:  # UTF-16/32, which json.loads would detect
                    raise ValueError
                record = DECODE(line.decode("utf-8", "surrogatepass"))
            except ValueError:  # UnicodeDecodeError, JSONDecodeError: _parse says which
                try:
                    record = self._parse(line, where)
                except GptError as exc:
                    record = exc
            yield where, record

    def _parse(self, raw: bytes, where: Callable[[], str]) -> Any:
        try:
            return json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
        except UnicodeDecodeError:
            raise GptError(f"{where()}: not UTF-8 text; convert it to UTF-8") from None
        except json.JSONDecodeError as exc:
            raise GptError(f"{where()}: not valid JSON ({exc.msg})") from None

    def _is_array(self) -> bool:
        """Whether a .json file holds one array (read whole: such exports are small) rather
        than lines."""
        for block in iter_bytes(self.path, 1 << 16):
            stripped = block.removeprefix(b"\xef\xbb\xbf").lstrip()
            if stripped:
                return stripped.startswith(b"[")
        return False
