"""`gpt train`: a GPT from scratch on text files, saved to the store."""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.console import err, info, print_json, stderr_is_tty
from gptcli.cli.generate import sleeping_omp_threads
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
    train_config,
    train_settings,
    training_flags,
)
from gptcli.errors import GptError

if TYPE_CHECKING:
    from gptcli.hardware import CoreUse
    from gptcli.run import Job

HELP = """Train a GPT from scratch on text files (a directory means every .txt under it).

Every flag can also come from a TOML file (--config run.toml; keys are the flag names with
underscores); flags on the command line override it. --print-config shows the result.

Example: gpt train examples/stories --max-time 60s
Example: gpt train examples/stories --max-time 5m --print-config > run.toml
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

    def on_sample(self, step: int, text: str) -> None:
        """A sample from the model as it is now: above the bar on a terminal, a line otherwise."""
        if self.quiet:
            return
        from rich.text import Text

        line = Text.assemble((f"step {step} sample: ", "bold"), (text.replace("\n", " ⏎ "), "cyan"))
        (self.progress.console if self.live else err).print(line, soft_wrap=True)


MANY_PASSES = 4  # passes over the training tokens from which the summary warns


def fmt(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


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


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (a scheduler's stop) acts as Ctrl+C: before and after the training loop it ends
    the command as `error: interrupted`; inside the loop it stops after the step and saves."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach it only
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_training(job: Job, quiet: bool, json_out: bool) -> None:
    """Runs a training job (`run.execute`) with a progress display and prints its summary.

    Under torchrun only rank 0 prints.
    """
    from gptcli.run import execute
    from gptcli.store import ModelStore

    main_process = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main_process
    with sigterm_as_ctrl_c(), TrainProgress(quiet) as progress:
        summary = execute(job, ModelStore(), progress, lambda m: info(m, quiet))
    if not main_process:
        return
    if json_out:
        print_json(summary)
        return
    from gptcli.record import describe_kept

    typer.echo(
        f"saved {summary['name']}: {summary['steps']} steps, "
        f"train loss {fmt(summary['train_loss'])}, val loss {fmt(summary['val_loss'])}, "
        f"{summary['seconds']:.1f}s; {describe_kept(summary.get('kept'))}"
    )
    if not quiet:
        passes = summary["tokens"] / summary["train_tokens"] if summary.get("train_tokens") else 0
        if passes >= MANY_PASSES:
            info(
                f"note: {passes:.0f} passes over {summary['train_tokens']:,} training tokens: "
                "expect overfitting; more text helps"
            )
        info(f'try: gpt generate "Once upon a time" -m {summary["name"]}')


TAKEN_FROM = 0.75  # 1 - the share of a core busy elsewhere that counts it as taken


def share_the_cores(busy_elsewhere: float) -> str | None:
    """Trains on the cores other work leaves free (at least one), unless OMP_NUM_THREADS says.

    OpenMP threads that wait for a core another process holds stall every parallel region of a
    step. On two cores shared with other work (load average 1.7 to 2.6), a step of the micro
    preset took 128 to 138 ms on one thread, 155 to 162 ms on two sleeping threads
    (OMP_WAIT_POLICY=PASSIVE), 90 to 654 ms on two spinning ones, and 760 to 820 ms with
    GOMP_SPINCOUNT=30000. The measure, over the second torch takes to load, varies (0.51,
    1.01, 1.04 cores in three loads a few seconds apart, load average 1.8 to 2.1), and two
    threads on a core that turns out busy cost far more than one thread on an idle machine
    (1.4x), so a core counts as taken from a quarter of it busy. `busy_elsewhere`: cores other
    processes kept busy (hardware.CoreUse). Returns the line that says so when it gives cores
    up, None otherwise.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = torch.get_num_threads()
    taken = math.floor(busy_elsewhere + TAKEN_FROM)
    free = max(1, threads - taken)
    if free >= threads:
        return None
    torch.set_num_threads(free)
    return (
        f"training on {free} of {threads} threads: other work keeps {busy_elsewhere:.1f} "
        "cores busy (OMP_NUM_THREADS sets the count)"
    )


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


def train_on_free_cores(use: CoreUse, quiet: bool) -> None:
    """`share_the_cores` with what `use` measured while torch loaded, saying so on stderr."""
    said = share_the_cores(use.others())
    if said:
        info(said, quiet)


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
    block_size: BlockSize = None,
    dropout: Dropout = None,
    resume: Resume = False,
    force: Force = False,
    config: ConfigFile = None,
    print_config_: PrintConfig = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
    **flags: Any,
) -> None:
    sleeping_omp_threads(only_when_busy=True)  # before torch loads (README Performance)
    from gptcli.hardware import CoreUse

    use = CoreUse()  # how busy other work keeps the cores while torch loads
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
        ctx, train_settings(cfg) | {"inputs": absolute_inputs(inputs), "name": name}
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
