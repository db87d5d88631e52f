"""`--config FILE.toml` and `--print-config`, for `gpt train` and `gpt finetune`.

A config file holds a command's flags as flat TOML keys, each spelled like its long flag with
underscores (`max_time = "45s"`, `batch_size = 32`, `inputs = ["stories/"]`, `name = "x"`).
The file's values become the command's default map, so the command line still wins:
flags given there, then the file, then the built-in defaults. Paths in a file are read like
paths on the command line, from the current directory; `--print-config` writes absolute ones.
"""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from gptcli.errors import GptError

# Settings about this invocation, not about the run: never read from a file, or not printed.
NOT_IN_FILE = frozenset({"config", "print_config"})
NOT_PRINTED = NOT_IN_FILE | {"json", "quiet"}


def config_keys(command: Any) -> dict[str, Any]:
    """Config key -> parameter, for each flag and argument of a command."""
    keys = {}
    for param in command.params:
        long = [opt for opt in param.opts if opt.startswith("--")]
        keys[long[0][2:].replace("-", "_") if long else param.name] = param
    return keys


def convert(value: Any, annotation: Any, where: str) -> Any:
    """A TOML value checked against a flag's type (`int | None`, `list[str]`, ...)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        items = value if isinstance(value, list) else [value]
        return [convert(v, item, where) for v in items]
    expected = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        # a bare number is fine where the flag takes text: max_time = 90 (seconds)
        str: isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }
    if annotation not in ok:
        return value
    if not ok[annotation]:
        raise GptError(f"{where} must be {expected[annotation]}, not {value!r}")
    return annotation(value)


def load_config_file(ctx: typer.Context, param: typer.CallbackParam, value: str | None) -> Any:
    """Eager callback of --config: the file's values become the defaults of the other flags."""
    from gptcli.config import read_toml

    if value is None:
        return None
    path = Path(value).expanduser()
    keys = config_keys(ctx.command)
    hints = typing.get_type_hints(ctx.command.callback)
    defaults = {}
    for key, raw in read_toml(path).items():
        target = keys.get(key)
        if target is None or key in NOT_IN_FILE:
            raise GptError(
                f"{path}: unknown key {key!r} (keys are the flags of `gpt {ctx.info_name}` "
                "with underscores, e.g. max_time)"
            )
        defaults[target.name] = convert(raw, hints.get(target.name), f"{path}: {key}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def resolved_config(ctx: typer.Context, resolved: dict[str, Any]) -> dict[str, Any]:
    """The command's settings as config keys, in flag order: `resolved` (what the command
    worked out: absolute inputs, the name, the training defaults), else the given value."""
    values = {}
    for key, param in config_keys(ctx.command).items():
        if key in NOT_PRINTED:
            continue
        value = resolved.get(key)
        if value is None:
            value = ctx.params.get(param.name)
        if isinstance(value, tuple):
            value = list(value)
        if value is not None and value != []:
            values[key] = value
    return values


def print_config(values: dict[str, Any]) -> None:
    from gptcli.config import to_toml

    typer.echo(to_toml(values), nl=False)


def absolute_inputs(inputs: list[str] | None) -> list[str] | None:
    return [os.path.abspath(os.path.expanduser(p)) for p in inputs] if inputs else None


def missing(ctx: typer.Context, what: str, key: str) -> typer.Exit:
    """The usage error (exit 2) for a required value given neither as a flag nor in --config."""
    ctx.fail(f"Missing {what} (or {key} in --config).")
    return typer.Exit(2)  # not reached: ctx.fail raises


ConfigFile = Annotated[
    str | None,
    typer.Option(
        "--config",
        metavar="FILE.toml",
        help="Read settings from a TOML file: keys are the flag names with underscores "
        '(max_time = "5m", batch_size = 32, inputs = ["data/"]). Flags given here override it.',
        callback=load_config_file,
        is_eager=True,
    ),
]
PrintConfig = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the resolved settings as TOML (a file for --config) and exit without training.",
    ),
]
