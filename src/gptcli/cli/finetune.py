"""`gpt finetune`: continue a stored model on text, chat data or labelled texts."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gptcli.cli.options import complete_model_name
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
    Val,
    read_options,
    train_config,
    train_settings,
    training_flags,
)
from gptcli.cli.training import measure_other_work, run_training, train_on_free_cores
from gptcli.errors import GptError

HELP = """Fine-tune a stored model (BASE is never modified; the result is a new model).

Tasks: text (more plain text, the default for .txt), chat (JSONL {"messages": [...]} or
{"prompt", "completion"}: loss on assistant turns only), classify (JSONL {"text", "label"}:
a head on the last token, loss = classification + --aux-lm-weight x LM loss).
Defaults suit fine-tuning: lr 3e-4 (Muon 0.005), 10 warmup steps, 300 steps.

Every flag can also come from a TOML file (--config ft.toml; keys are the flag names with
underscores, base and inputs included); flags on the command line override it.

Example: gpt finetune stories examples/chat.jsonl --name stories-chat
"""


@training_flags("finetune", after="aux_lm_weight")
def finetune(
    ctx: typer.Context,
    base: Annotated[
        str | None,
        typer.Argument(
            metavar="BASE",
            help="Stored model name or model directory to start from (or base in --config).",
            autocompletion=complete_model_name,
            show_default=False,
        ),
    ] = None,
    inputs: Inputs = None,
    name: Annotated[
        str | None, typer.Option("--name", "-o", help="Name of the new model (required).")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="text, chat or classify (default: from the data).")
    ] = None,
    lora: Annotated[
        int | None,
        typer.Option(
            "--lora",
            help="Train rank-R adapters on the attention and MLP matrices instead of all "
            "weights (merged when saved).",
        ),
    ] = None,
    val: Val = None,
    text_field: TextField = None,
    skip_bad_lines: SkipBadLines = False,
    aux_lm_weight: Annotated[
        float, typer.Option(help="classify: weight of the language-model loss (0 turns it off).")
    ] = 0.5,
    resume: Resume = False,
    force: Force = False,
    config: ConfigFile = None,
    print_config_: PrintConfig = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    **flags: Any,
) -> None:
    use = measure_other_work()  # before torch loads
    from gptcli.finetune import FINETUNE_DEFAULTS
    from gptcli.store import check_name

    if aux_lm_weight < 0:
        raise GptError("--aux-lm-weight must be 0 or more")
    if resume and force:
        raise GptError("--resume and --force do not go together")
    defaults = dict(FINETUNE_DEFAULTS)
    if flags.get("max_time") is not None or resume:
        # a time budget alone bounds the run; a resumed run keeps its stored budget
        defaults.pop("max_steps")
    cfg = train_config(flags, defaults)
    if name is not None:
        check_name(name)
    settings = resolved_config(
        ctx,
        train_settings(cfg) | {"inputs": absolute_inputs(inputs), "val": absolute_inputs(val)},
    )
    if task != "text" and (val or text_field or skip_bad_lines):
        raise GptError("--val, --text-field and --skip-bad-lines go with --task text")
    if print_config_:
        print_config(settings)
        return
    if base is None:
        raise missing(ctx, "argument 'BASE'", "base")
    if not inputs:
        raise missing(ctx, "argument 'FILE_OR_DIR...'", "inputs")
    if name is None:
        raise missing(ctx, "option '--name'", "name")

    from gptcli.finetune import FinetuneRequest

    train_on_free_cores(use, quiet)
    request = FinetuneRequest(
        base=base,
        inputs=inputs,
        name=name,
        cfg=cfg,
        task=task,
        val=val or [],
        read=read_options(text_field, skip_bad_lines),
        lora_rank=lora,
        aux_lm_weight=aux_lm_weight,
        force=force,
        resume=resume,
        config=settings,
    )
    run_training(request, quiet, json_out)
