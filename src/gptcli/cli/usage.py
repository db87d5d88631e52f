"""How commands present themselves: usage lines, flags in help, and usage errors on one line.

Every command is a `Command` and every group a `Group`, so that each usage line reads the same
way (`[OPTIONS] NAME`, `[PROMPT]`, `FILE_OR_DIR...`: brackets for what may be left out, `...`
for what repeats), a flag is listed without a value type (`--json`, not `--json <bool>`), and
a command's row in its group's help is one sentence, not broken where the source text is.
Knows nothing about models or torch.
"""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperCommand, TyperGroup


def shown_as_in_usage(params: list[Any]) -> list[Any]:
    """The parameters, with flags (which take no value) showing no value type, and arguments
    named in capitals as in the usage line (FILE_OR_DIR... where they repeat)."""
    for param in params:
        if param.param_type_name == "argument":
            name = (param.metavar or param.name or "ARG").upper().removesuffix("...")
            param.metavar = name + ("..." if param.nargs != 1 else "")
        elif getattr(param, "is_flag", False):
            param.metavar = ""
    return params


def argument_usage(param: Any) -> str:
    """NAME, [NAME], NAME... or [NAME...] for an argument (already `shown_as_in_usage`)."""
    return param.metavar if param.required else f"[{param.metavar}]"


def reflowed(help_text: str | None) -> str | None:
    """A help text whose paragraphs are each one line, for the terminal to wrap at its own
    width: rich keeps every line break of the source, which is wrapped at ~95 columns, so an
    80-column terminal would show a long line and a stub. Lines that start an example or are
    indented stay lines of their own."""
    if not help_text:
        return help_text
    paragraphs = []
    for paragraph in inspect.cleandoc(help_text).split("\n\n"):
        lines = paragraph.split("\n")
        text = lines[0]
        for line in lines[1:]:
            kept = line[:1].isspace() or line.startswith("Example")
            text += "\n" + line if kept else " " + line.strip()
        paragraphs.append(text)
    return "\n\n".join(paragraphs)


def summary_line(help_text: str | None) -> str | None:
    """A help text's first paragraph on one line: the row a group's help shows for a command."""
    if not help_text:
        return None
    return " ".join(inspect.cleandoc(help_text).split("\n\n")[0].split())


def present(command: Any) -> None:
    """Paragraphs on one line each, and a one-line row in the group's list of commands."""
    command.help = reflowed(command.help)
    command.short_help = command.short_help or summary_line(command.help)


class Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        present(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return shown_as_in_usage(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = ["[OPTIONS]"]
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and not getattr(param, "hidden", False):
                pieces.append(argument_usage(param))
        return pieces


class Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        present(self)

    def get_params(self, ctx: Any) -> list[Any]:
        return shown_as_in_usage(super().get_params(ctx))


def usage_error_line(exc: Any) -> str:
    """A usage error as one line: what is wrong, and where the help is."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "gpt"
    return f"{message} (see {path} --help)"
