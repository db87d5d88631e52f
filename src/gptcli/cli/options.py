"""Options shared by several commands, and shell completion of model names.

Completion runs on every Tab press, so it reads the store's directory listing and nothing
else: no torch, no weights.
"""

from __future__ import annotations

from typing import Annotated

import typer


def complete_model_name(incomplete: str) -> list[str]:
    """Stored model names that start with what has been typed so far."""
    from gptcli.store import ModelStore

    try:
        return [name for name in ModelStore().names() if name.startswith(incomplete)]
    except OSError:  # an unreadable store completes nothing rather than failing the shell
        return []


ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name or directory (default: the store's default, the last trained).",
        autocompletion=complete_model_name,
    ),
]
