"""Hugging Face datasets: `hf:ORG/NAME[:CONFIG][@SPLIT]`, or a directory saved with
`save_to_disk`; one document per row, the text of its `text_field` column.

Through `datasets` (an optional extra, imported only here). By name, the dataset is streamed
when online; offline (`HF_DATASETS_OFFLINE` or `HF_HUB_OFFLINE`), one already in the
`datasets` cache is read from it, and one that is not is refused in one line. A `save_to_disk`
directory (`hf:PATH`, or the directory itself) is always read locally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptcli.datasources.base import ReadOptions, pieces_of
from gptcli.errors import GptError

PREFIX = "hf:"
BATCH_ROWS = 10_000  # rows handed on at a time
SAVED_MARKERS = ("dataset_info.json", "state.json")  # what save_to_disk writes
SAVED_DICT = "dataset_dict.json"  # ... for a DatasetDict


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        all((path / m).is_file() for m in SAVED_MARKERS) or (path / SAVED_DICT).is_file()
    )


def is_dataset(raw: str) -> bool:
    """Whether an input names a Hugging Face dataset (hf:...) or is a saved one."""
    return raw.startswith(PREFIX) or is_saved_dataset(Path(raw).expanduser())


def offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
    )


def parse(spec: str) -> tuple[str, str | None, str]:
    """`hf:ORG/NAME[:CONFIG][@SPLIT]` -> (name, config, split); the split defaults to train."""
    rest = spec.removeprefix(PREFIX)
    rest, _, split = rest.partition("@")
    name, _, config = rest.partition(":")
    if not name:
        raise GptError(f"{spec}: name a dataset, as hf:ORG/NAME[:CONFIG][@SPLIT]")
    return name, config or None, split or "train"


def datasets_module() -> Any:
    try:
        import datasets
    except ImportError:
        raise GptError(
            'Hugging Face datasets need datasets: pip install "gptcli[datasets]"'
        ) from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    return datasets


@dataclass
class HFReader:
    path: Path  # the spec as given (hf:...), or the save_to_disk directory
    options: ReadOptions
    format: str = "hf"
    one_document: bool = False
    skipped: int = 0
    bad: list[str] = field(default_factory=list)

    @property
    def spec(self) -> str:
        return str(self.path)

    def _open(self) -> Any:
        datasets = datasets_module()
        spec = self.spec
        local = Path(spec.removeprefix(PREFIX)).expanduser()
        name, config, split = parse(spec) if spec.startswith(PREFIX) else (spec, None, "train")
        if is_saved_dataset(local) or is_saved_dataset(Path(name).expanduser()):
            where = local if is_saved_dataset(local) else Path(name).expanduser()
            try:
                data = datasets.load_from_disk(str(where))
            except Exception as exc:  # datasets raises many kinds
                raise GptError(f"{spec}: cannot read this saved dataset ({exc})") from None
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise GptError(f"{spec}: no split {split!r} (splits: {', '.join(data)})")
                data = data[split]
            return data
        try:
            return datasets.load_dataset(name, config, split=split, streaming=not offline())
        except Exception as exc:  # DatasetNotFoundError, ConnectionError, ValueError, ...
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if offline():
                raise GptError(
                    f"{spec}: not in the datasets cache, and HF_DATASETS_OFFLINE / "
                    f"HF_HUB_OFFLINE forbid downloading it ({message})"
                ) from None
            raise GptError(f"{spec}: cannot load this dataset ({message})") from None

    def pieces(self) -> Iterator[str | None]:
        return pieces_of(self.batches())

    def batches(self) -> Iterator[list[str]]:
        """The text column's values, BATCH_ROWS rows at a time."""
        data = self._open()
        column = self.options.text_field
        names = list(getattr(data, "column_names", None) or (data.features or {}))
        if names and column not in names:
            hint = "" if column != "text" else "; --text-field NAME reads another"
            raise GptError(f'{self.spec}: no column "{column}" (columns: {", ".join(names)}){hint}')
        self.skipped = 0
        rows = data.select_columns([column]) if hasattr(data, "select_columns") else data
        batch: list[str] = []
        for number, row in enumerate(rows, 1):
            value = row.get(column)
            if not isinstance(value, str):
                message = f'{self.spec}: row {number}: "{column}" is not a string'
                if not self.options.skip_bad_lines:
                    raise GptError(message)
                self.skipped += 1
                self.bad = self.bad or [message]
                continue
            batch.append(value)
            if len(batch) == BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch
