"""`gpt train`: a GPT from scratch on text files, saved to the store."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.runconfig import (
    ConfigFile,
    PrintConfig,
    absolute_inputs,
    missing,
    print_config,
    resolved_config,
)
from gptcli.cli.trainflags import (
    Force,
    Inputs,
    JsonOut,
    Quiet,
    Resume,
    SkipBadLines,
    TextField,
    TokenizerSample,
    Val,
    read_options,
    sample_size,
    train_config,
    train_settings,
    training_flags,
)
from gptcli.cli.training import measure_other_work, run_training, train_on_free_cores
from gptcli.errors import GptError

if TYPE_CHECKING:
    pass

HELP = """Train a GPT from scratch on text, JSONL, Parquet or a dataset (a directory: all of it).

Reads .txt, JSONL (.jsonl, .json: the "text" field of each line), Parquet (the "text" column),
each compressed or not (.gz, .zst, .bz2, .xz), Hugging Face datasets (hf:ORG/NAME), token
shards (.bin, with --tokenizer) and corpora made by `gpt tokenize corpus`. Each line or row is a
document, as is each text file.

Every flag can also come from a TOML file (--config run.toml; keys are the flag names with
underscores); flags on the command line override it. --print-config shows the result.

Example: gpt train examples/stories --max-time 60s
Example: gpt train examples/stories --max-time 5m --print-config > run.toml
"""


def default_name(inputs: list[str]) -> str:
    stem = Path(inputs[0]).expanduser().resolve().stem or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_")[:100] or "model"


Name = Annotated[
    str | None,
    typer.Option("--name", "-o", help="Model name in the store (default: first file's name)."),
]
Preset = Annotated[
    str,
    typer.Option(
        help="Model size: auto (suits data, device and time), tiny, micro, mini, small, base, gpt2."
    ),
]
Family = Annotated[
    str | None, typer.Option(help="modern (rotary, RMSNorm, Muon; default) or gpt2 (GPT-2 layout).")
]
BlockSize = Annotated[int | None, typer.Option(help="Context length (default: the preset's).")]
Dropout = Annotated[
    float | None,
    typer.Option(
        help="Dropout probability (default: 0; with --preset auto, 0.2 under 100k training "
        "tokens, 0.1 under 1M)."
    ),
]


RATE_SETTINGS = ("lr", "muon_lr", "warmup_steps")  # chosen together, or not at all
SHAPE_NOTE = "(set with the model where it picks them, else the defaults)"


def chosen_with_the_shape(preset: str, flags: dict[str, Any]) -> list[str]:
    """The settings `--preset auto` may choose along with the model (where it picks one for
    short CPU runs, see `pretrain.choose_shape`; else the defaults stand): the batch size unless
    one is given, and the rates unless one of them is. They are left out of the run's settings
    (--print-config, `models show`), so that a run from that file makes the same choice
    instead of taking the general defaults."""
    if preset != "auto":
        return []
    chosen = [] if flags.get("batch_size") is not None else ["batch_size"]
    if all(flags.get(key) is None for key in RATE_SETTINGS):
        chosen += RATE_SETTINGS
    return chosen


@training_flags("train", after="dropout")
def train(
    ctx: typer.Context,
    inputs: Inputs = None,
    name: Name = None,
    preset: Preset = "auto",
    family: Family = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "-t",
            help="bpe (trained on the corpus, default), char, "
            "a stored tokenizer, or a tokenizer.json path.",
        ),
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option(help="BPE vocabulary size (default: suited to the corpus size).")
    ] = None,
    tokenizer_sample: TokenizerSample = None,
    block_size: BlockSize = None,
    dropout: Dropout = None,
    val: Val = None,
    text_field: TextField = None,
    skip_bad_lines: SkipBadLines = False,
    resume: Resume = False,
    force: Force = False,
    config: ConfigFile = None,
    print_config_: PrintConfig = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    **flags: Any,
) -> None:
    use = measure_other_work()  # before torch loads
    from gptcli.config import FAMILIES, PRESETS
    from gptcli.store import check_name

    if preset != "auto" and preset not in PRESETS:
        raise GptError(f"unknown preset {preset!r} (choose from auto, {', '.join(PRESETS)})")
    if family is not None and family not in FAMILIES:
        raise GptError(f"unknown family {family!r} (choose from {', '.join(FAMILIES)})")
    if block_size is not None and block_size < 1:
        raise GptError("--block-size must be at least 1")
    if resume and force:
        raise GptError("--resume and --force do not go together")
    cfg = train_config(flags)
    name = check_name(name) if name is not None else (default_name(inputs) if inputs else None)
    settings = resolved_config(
        ctx,
        train_settings(cfg)
        | {"inputs": absolute_inputs(inputs), "val": absolute_inputs(val), "name": name},
    )
    chosen = chosen_with_the_shape(preset, flags)
    settings = {k: v for k, v in settings.items() if k not in chosen}
    if print_config_:
        print_config(settings)
        if chosen:
            typer.echo(f"# left to --preset auto: {', '.join(chosen)} {SHAPE_NOTE}")
        return
    if not inputs:
        raise missing(ctx, "argument 'FILE_OR_DIR...'", "inputs")

    from gptcli.pretrain import TrainRequest

    train_on_free_cores(use, quiet)
    request = TrainRequest(
        inputs=inputs,
        name=name,
        cfg=cfg,
        val=val or [],
        read=read_options(text_field, skip_bad_lines),
        tokenizer_sample=sample_size(tokenizer_sample),
        preset=preset,
        family=family,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        block_size=block_size,
        dropout=dropout,
        force=force,
        resume=resume,
        auto_batch="batch_size" in chosen,
        auto_rates="lr" in chosen,
        config=settings,
    )
    run_training(request, quiet, json_out)
