"""Parquet files: one document per row of the text column, read a row group at a time.

Needs `pyarrow` (an optional extra), imported only here. A missing column is refused naming
the columns the file has; a column that is not text, or a null in it, names the file (and row).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.datasources import progress
from gptcli.datasources.base import ReadOptions, pieces_of
from gptcli.errors import GptError


def pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GptError('Parquet needs pyarrow: pip install "gptcli[parquet]"') from None
    return pq


def open_parquet(path: Path, text_field: str) -> Any:
    """The file, checked: readable, with a text column named `text_field`."""
    pq = pyarrow_parquet()
    import pyarrow as pa

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise GptError(f"{path}: not a readable Parquet file ({exc})") from None
    schema = file.schema_arrow
    if text_field not in schema.names:
        columns = ", ".join(schema.names) or "none"
        hint = "" if text_field != "text" else "; --text-field NAME reads another"
        raise GptError(f'{path}: no column "{text_field}" (columns: {columns}){hint}')
    kind = schema.field(text_field).type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    textual = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if not (textual or getattr(pa.types, "is_string_view", lambda _: False)(kind)):
        raise GptError(f'{path}: column "{text_field}" holds {kind}, not text')
    return file


@dataclass
class ParquetReader:
    path: Path
    options: ReadOptions
    format: str = "parquet"
    one_document: bool = False
    skipped: int = 0
    bad: list[str] = field(default_factory=list)

    def pieces(self) -> Iterator[str | None]:
        return pieces_of(self.batches())

    def batches(self) -> Iterator[list[str]]:
        """The text column's values, a column chunk of a row group at a time."""
        file = open_parquet(self.path, self.options.text_field)
        import pyarrow as pa

        self.skipped = 0
        row = 0
        share = self.path.stat().st_size // max(1, file.num_row_groups)
        for group in range(file.num_row_groups):
            progress.advance(share)
            try:
                table = file.read_row_group(group, columns=[self.options.text_field])
            except (pa.ArrowException, OSError) as exc:
                raise GptError(f"{self.path}: row group {group}: cannot read it ({exc})") from None
            for column in table.column(0).chunks:
                values = column.to_pylist()
                if column.null_count:
                    values = self._without_nulls(values, row)
                row += len(column)
                yield values

    def _without_nulls(self, values: list[str | None], row: int) -> list[str]:
        """A chunk's values, its nulls refused (naming the row) or, with skip_bad_lines,
        counted and left out."""
        kept = []
        for number, value in enumerate(values, row + 1):
            if value is not None:
                kept.append(value)
                continue
            message = f'{self.path}: row {number}: "{self.options.text_field}" is null'
            if not self.options.skip_bad_lines:
                raise GptError(message)
            self.skipped += 1
            if not self.bad:
                self.bad.append(message)
        return kept
