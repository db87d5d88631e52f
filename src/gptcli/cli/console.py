"""Consoles: results go to stdout, progress and messages to stderr.

Colour, progress bars and line wrapping only on a terminal, and no colour at all when NO_COLOR
is set (https://no-color.org). They are decided each time something is printed, not when the
module is imported, so one process can print to a pipe and to a terminal.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text


def no_color() -> bool:
    return os.environ.get("NO_COLOR", "") != ""


class TerminalConsole(Console):
    """A rich Console whose colour system follows the terminal and NO_COLOR as it prints."""

    @property  # type: ignore[override]  # rich's attribute, made a property read per print
    def _color_system(self) -> Any:
        if no_color() or not self.is_terminal:
            return None
        return self._detect_color_system()

    @_color_system.setter
    def _color_system(self, value: Any) -> None:
        pass  # rich's constructor sets it once; we decide per print instead

    @property  # type: ignore[override]  # rich's attribute, made a property read per print
    def soft_wrap(self) -> bool:
        """Outside a terminal (a pipe, a log file) a message is one line, whatever its length:
        rich would otherwise break it at 80 columns, and grep and log collectors see halves."""
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


err = TerminalConsole(stderr=True, highlight=False)
out = TerminalConsole(highlight=False, soft_wrap=True)


def stderr_is_tty() -> bool:
    """Whether progress bars belong on stderr (a terminal, or FORCE_COLOR / TTY_COMPATIBLE)."""
    return err.is_terminal


def info(message: str, quiet: bool = False) -> None:
    """A status line on stderr (dimmed on a terminal)."""
    if not quiet:
        err.print(Text(message, style="dim"))


def print_json(data: Any) -> None:
    """One JSON object on stdout (plain, so pipes get exactly the object)."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False) + "\n")
    sys.stdout.flush()
