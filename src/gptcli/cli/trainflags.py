"""The training flags of `gpt train` and `gpt finetune`, made from TrainConfig's fields.

A field with `config.flag(...)` metadata is an option of both commands (or of the one its
`only` names): `@training_flags("train")` adds one option per such field to the command's
signature, in field order, after the parameter it names. The command receives them in its
`**flags` and turns them into a TrainConfig with `train_config`. --config keys and
--print-config follow from the options (cli/runconfig.py), so a new training setting is one
field in config.py. Every option defaults to None: "the command's default".
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from gptcli.config import TrainConfig, parse_duration

if TYPE_CHECKING:
    from gptcli.datasources.base import ReadOptions

Command = TypeVar("Command", bound=Callable[..., None])


def flag_fields(command: str) -> list[tuple[str, Any, dict[str, Any]]]:
    """(name, type, flag metadata) of each TrainConfig field that is a flag of `command`."""
    hints = typing.get_type_hints(TrainConfig)
    fields = []
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata.get("flag")
        if meta is not None and meta["only"] in (None, command):
            fields.append((f.name, str if meta["text"] else hints[f.name], meta))
    return fields


def training_flags(command: str, after: str) -> Callable[[Command], Command]:
    """Adds the training flags of `command` to a Typer command's signature, after `after`."""

    def decorate(func: Command) -> Command:
        own = list(inspect.signature(func, eval_str=True).parameters.values())
        if own[-1].kind is not inspect.Parameter.VAR_KEYWORD:
            raise TypeError(f"{func.__name__} must take the training flags as **flags")
        options = []
        for name, kind, meta in flag_fields(command):
            option = typer.Option(*meta["decls"], help=meta["help"], metavar=meta.get("metavar"))
            annotation = Annotated[kind | None, option]
            options.append(
                inspect.Parameter(
                    name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
                )
            )
        at = [p.name for p in own].index(after) + 1
        params = [*own[:at], *options, *own[at:-1]]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]
        # inspect.signature, and so Typer, reads __signature__ instead of the code's
        func.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]  # see above
        func.__annotations__ = {p.name: p.annotation for p in params}
        return func

    return decorate


def train_config(flags: dict[str, Any], defaults: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from the flags that were given, over the command's defaults."""
    values = dict(defaults or {})
    given = {k: v for k, v in flags.items() if v is not None}
    save_every = given.pop("save_every", None)
    max_time = given.pop("max_time", None)
    values.update(given)
    if max_time is not None:
        values["max_time"] = parse_duration(max_time)
    if save_every is not None:
        if save_every.strip().isdigit():
            values["save_every"], values["save_seconds"] = int(save_every), None
        else:
            values["save_every"], values["save_seconds"] = None, parse_duration(save_every)
    return TrainConfig(**values)


def train_settings(cfg: TrainConfig) -> dict[str, Any]:
    """A TrainConfig as config-file values: every setting resolved, max_time as given."""
    return {k: v for k, v in cfg.to_dict().items() if k != "max_time"}


# Options of both commands that are not TrainConfig's: what to train on and how to report.
Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="FILE_OR_DIR...",
        help="Data files (.txt, .jsonl, .json, .parquet, compressed or not), directories of "
        "them, or globs (or inputs in --config).",
        show_default=False,
    ),
]
Resume = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue the stored model of this name exactly where it stopped."
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Replace a model of the same name.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]
Quiet = Annotated[
    bool, typer.Option("--quiet", "-q", help="No progress, samples or messages on stderr.")
]

# How the training data is read (`gpt train`, and `gpt finetune --task text`).
TextField = Annotated[
    str | None,
    typer.Option(
        "--text-field",
        metavar="NAME",
        help="The field (JSONL) or column (Parquet) that holds the text (default: text).",
    ),
]
SkipBadLines = Annotated[
    bool,
    typer.Option(
        "--skip-bad-lines",
        help="Skip records without the text field (or not JSON) and count them, instead of "
        "refusing the file.",
    ),
]
Val = Annotated[
    list[str] | None,
    typer.Option(
        "--val",
        metavar="FILE_OR_DIR",
        help="Validation data, held out whole (repeatable; default: the last --val-fraction "
        "of the inputs).",
    ),
]


def read_options(text_field: str | None, skip_bad_lines: bool) -> ReadOptions:
    """The readers' options from the flags."""
    from gptcli.datasources.base import ReadOptions

    return ReadOptions(text_field=text_field or "text", skip_bad_lines=skip_bad_lines)


TokenizerSample = Annotated[
    str | None,
    typer.Option(
        "--tokenizer-sample",
        metavar="SIZE",
        help="Train the BPE tokenizer on all the text up to this size, beyond it on a sample "
        "of this size drawn across the corpus (default: 100MB).",
    ),
]


def sample_size(text: str | None) -> int:
    from gptcli.datasources.sample import DEFAULT_SAMPLE, parse_size

    return DEFAULT_SAMPLE if text is None else parse_size(text)
