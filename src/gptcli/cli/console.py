"""Consoles: results go to stdout, progress and messages to stderr; colour only on a TTY."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

_no_color = bool(os.environ.get("NO_COLOR"))
err = Console(stderr=True, no_color=_no_color, highlight=False)
out = Console(no_color=_no_color, highlight=False, soft_wrap=True)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


def info(message: str, quiet: bool = False) -> None:
    """A status line on stderr (dimmed on a terminal)."""
    if not quiet:
        err.print(Text(message, style="dim"))


def print_json(data: Any) -> None:
    """One JSON object on stdout (plain, so pipes get exactly the object)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
