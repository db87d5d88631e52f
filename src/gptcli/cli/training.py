"""How `gpt train` and `gpt finetune` run a job from the terminal: the progress display, SIGTERM
as Ctrl+C, the summary and the next step to try, and training on the cores other work leaves
free. Both commands call `run_training` and `train_on_free_cores`; neither imports the other.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import typer

from gptcli.cli.console import err, info, print_json, stderr_is_tty
from gptcli.hardware import sleeping_omp_threads

if TYPE_CHECKING:
    from gptcli.hardware import CoreUse
    from gptcli.run import Job


class TrainProgress:
    """A rich progress bar on a terminal; one line per evaluation elsewhere. Before training,
    a bar of the bytes read in each pass over the data, with its rate and ETA, once a pass has
    taken DATA_BAR_AFTER seconds (a `datasources.progress` display)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.live = stderr_is_tty() and not quiet
        self.progress: Any = None
        self.data_bar: Any = None
        self.pass_start = 0.0
        self.done = 0

    def __enter__(self) -> TrainProgress:
        return self

    def _start_bar(self) -> None:
        """The training bar, started with the first step (after the data bars)."""
        if self.progress is not None or not self.live:
            return
        self._stop_data_bar()
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

    def start(self, label: str, total: int) -> None:
        """A pass over the data begins (`datasources.progress.Display`)."""
        import time

        self._stop_data_bar()
        self.pass_start, self.done, self.label, self.total = time.monotonic(), 0, label, total

    def advance(self, n_bytes: int) -> None:
        import time

        self.done += n_bytes
        if not self.live or self.progress is not None:
            return
        if self.data_bar is None and time.monotonic() - self.pass_start > DATA_BAR_AFTER:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.data_bar = Progress(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.data_bar.__enter__()
            self.data_task = self.data_bar.add_task(self.label, total=self.total)
        if self.data_bar is not None:
            self.data_bar.update(self.data_task, completed=min(self.done, self.total))

    def _stop_data_bar(self) -> None:
        if self.data_bar is not None:
            self.data_bar.__exit__(None, None, None)
            self.data_bar = None

    def __exit__(self, *exc: object) -> None:
        self._stop_data_bar()
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def _show(self, stats: Any) -> None:
        self._start_bar()
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
        self._start_bar()
        (self.progress.console if self.live else err).print(line, soft_wrap=True)


DATA_BAR_AFTER = 2.0  # seconds of a pass over the data before its bar shows
MANY_PASSES = 4  # passes over the training tokens from which the summary warns


def fmt(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


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
    from gptcli.datasources.progress import showing

    with sigterm_as_ctrl_c(), TrainProgress(quiet) as progress, showing(progress):
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
        info(f"try: {next_step(summary)}")


def next_step(summary: dict[str, Any]) -> str:
    """The command to try on a model a run just made, for what its task makes it."""
    name = summary["name"]
    task = summary.get("task")
    if task == "chat":
        return f"gpt chat -m {name}"
    if task == "classify":
        return f'gpt classify "some text to label" -m {name} (or one text a line on stdin)'
    return f'gpt generate "Once upon a time" -m {name}'


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


def measure_other_work() -> CoreUse:
    """Called first thing by `train` and `finetune`, before torch loads: OpenMP threads sleep
    when the load already fills the cores (see `hardware.sleeping_omp_threads`), and how busy
    other work keeps the cores is measured while torch loads."""
    sleeping_omp_threads(only_when_busy=True)
    from gptcli.hardware import CoreUse

    return CoreUse()


def train_on_free_cores(use: CoreUse, quiet: bool) -> None:
    """`share_the_cores` with what `use` measured while torch loaded, saying so on stderr."""
    said = share_the_cores(use.others())
    if said:
        info(said, quiet)
