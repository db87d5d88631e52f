"""`gpt train`: a GPT from scratch on text files, saved to the store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from gptcli.cli.console import err, info, print_json, stderr_is_tty

HELP = """Train a GPT from scratch on text files (a directory means every .txt under it).

Example: gpt train examples/stories --max-time 60s
"""


class TrainProgress:
    """A rich progress bar on a terminal; one line per evaluation elsewhere."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = stderr_is_tty() and not quiet
        self.progress: Any = None

    def __enter__(self) -> TrainProgress:
        if self.live:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]step {task.fields[step]}"),
                BarColumn(),
                TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
                TextColumn("{task.fields[rate]} tok/s"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task(
                "train", total=1000, step="0", loss="-", val="-", rate="-"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _show(self, stats: Any) -> None:
        total = f"/{stats.total_steps}" if stats.total_steps else ""
        val = fmt(stats.val_loss)
        self.progress.update(
            self.task,
            completed=min(stats.progress, 1.0) * 1000,
            step=f"{stats.step}{total}",
            loss=fmt(stats.train_loss),
            val=val,
            rate=f"{stats.tokens_per_second:,.0f}",
        )

    def on_step(self, stats: Any) -> None:
        if self.live:
            self._show(stats)

    def on_eval(self, stats: Any) -> None:
        if self.live:
            self._show(stats)
        elif not self.quiet:
            info(
                f"step {stats.step}: train loss {fmt(stats.train_loss)}, "
                f"val loss {fmt(stats.val_loss)}, "
                f"{stats.tokens_per_second:,.0f} tok/s, {stats.seconds:.1f}s"
            )


def fmt(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def default_name(inputs: list[str]) -> str:
    import re

    stem = Path(inputs[0]).expanduser().resolve().stem or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_")[:100] or "model"


def train(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="FILE_OR_DIR...", help="Text files or directories of .txt files."),
    ],
    name: Annotated[
        str | None,
        typer.Option("--name", "-o", help="Model name in the store (default: first file's name)."),
    ] = None,
    preset: Annotated[
        str, typer.Option(help="Model size: tiny, mini, small, base, gpt2.")
    ] = "mini",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer",
            "-t",
            help="bpe (trained on the corpus, default), char, a stored tokenizer, "
            "or a tokenizer.json path.",
        ),
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option(help="BPE vocabulary size (default: suited to the corpus size).")
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(help="Stop after this many steps (default: 2000 when no --max-time)."),
    ] = None,
    max_time: Annotated[str | None, typer.Option(help="Stop after this long: 30s, 5m, 1h.")] = None,
    batch_size: Annotated[int, typer.Option(help="Sequences per step.")] = 16,
    block_size: Annotated[
        int | None, typer.Option(help="Context length (default: the preset's).")
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 3e-3,
    warmup_steps: Annotated[int, typer.Option(help="Learning-rate warmup steps.")] = 50,
    dropout: Annotated[float | None, typer.Option(help="Dropout probability (default: 0).")] = None,
    eval_every: Annotated[int, typer.Option(help="Evaluate every N steps.")] = 100,
    val_fraction: Annotated[
        float, typer.Option(help="Fraction of the text held out for validation (the end of it).")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 1337,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    force: Annotated[
        bool, typer.Option("--force", help="Replace a model of the same name.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print a JSON summary on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or messages.")] = False,
) -> None:
    from gptcli.config import PRESETS, TrainConfig, parse_duration
    from gptcli.errors import GptError
    from gptcli.store import ModelStore, check_name
    from gptcli.train import TrainRequest, train_from_scratch

    if preset not in PRESETS:
        raise GptError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    if block_size is not None and block_size < 1:
        raise GptError("--block-size must be at least 1")
    if warmup_steps < 0:
        raise GptError("--warmup-steps must be 0 or more")
    cfg = TrainConfig(
        max_steps=max_steps,
        max_time=parse_duration(max_time) if max_time else None,
        batch_size=batch_size,
        lr=lr,
        warmup_steps=max(warmup_steps, 1),
        eval_every=eval_every,
        seed=seed,
        device=device,
        val_fraction=val_fraction,
    )
    request = TrainRequest(
        inputs=inputs,
        name=check_name(name or default_name(inputs)),
        cfg=cfg,
        preset=preset,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        block_size=block_size,
        dropout=dropout,
        force=force,
    )
    with TrainProgress(quiet) as progress:
        summary = train_from_scratch(request, ModelStore(), progress, log=lambda m: info(m, quiet))
    if json_out:
        print_json(summary)
    else:
        typer.echo(
            f"saved {summary['name']}: {summary['steps']} steps, "
            f"train loss {fmt(summary['train_loss'])}, val loss {fmt(summary['val_loss'])}, "
            f"{summary['seconds']:.1f}s"
        )
        if not quiet:
            info(f'try: gpt generate "Once upon a time" -m {summary["name"]}')
