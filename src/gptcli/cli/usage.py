"""How commands present themselves: usage lines, flags in help, and usage errors on one line.

Every command is a `Command` and every group a `Group`, so that each usage line reads the same
way (`[OPTIONS] NAME`, `[PROMPT]`, `FILE_OR_DIR...`: brackets for what may be left out, `...`
for what repeats) and a flag is listed without a value type (`--json`, not `--json <bool>`).
Knows nothing about models or torch.
"""

from __future__ import annotations

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


class Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return shown_as_in_usage(super().get_params(ctx))

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = ["[OPTIONS]"]
        for param in self.get_params(ctx):
            if param.param_type_name == "argument" and not getattr(param, "hidden", False):
                pieces.append(argument_usage(param))
        return pieces


class Group(TyperGroup):
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
