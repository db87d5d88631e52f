"""Options and inputs shared by several commands, and shell completion of model names.

Completion runs on every Tab press, so it reads the store's directory listing and nothing
else: no torch, no weights.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gptcli.errors import GptError


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


def read_prompt(prompt: str | None) -> str:
    """The argument, or all of stdin when it is omitted or '-'."""
    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin.isatty():
        raise GptError("no prompt: give one as an argument or pipe it through stdin")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GptError("the prompt on stdin is not UTF-8 text") from None
