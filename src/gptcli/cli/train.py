"""`gpt train`: a GPT from scratch on text files, saved to the store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from gptcli.cli.console import err, info, print_json, stderr_is_tty
from gptcli.cli.runconfig import (
    ConfigFile,
    PrintConfig,
    absolute_inputs,
    missing,
    print_config,
    resolved_config,
)

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


def fmt(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def default_name(inputs: list[str]) -> str:
    import re

    stem = Path(inputs[0]).expanduser().resolve().stem or "model"
    return re.sub(r"[^A-Za-z0-9._-]", "-", stem).strip(".-_")[:100] or "model"


Inputs = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="FILE_OR_DIR...",
        help="Text files, directories of .txt files, or globs (or inputs in --config).",
        show_default=False,
    ),
]
Name = Annotated[
    str | None,
    typer.Option("--name", "-o", help="Model name in the store (default: first file's name)."),
]
Preset = Annotated[
    str,
    typer.Option(
        help="Model size: auto (suits data, device and time), tiny, mini, small, base, gpt2."
    ),
]
Family = Annotated[
    str | None, typer.Option(help="modern (rotary, RMSNorm, Muon; default) or gpt2 (GPT-2 layout).")
]

# Training flags shared by `train` and `finetune`; None means "the command's default".
MaxSteps = Annotated[
    int | None, typer.Option(help="Stop after this many steps (default: 2000 when no --max-time).")
]
MaxTime = Annotated[str | None, typer.Option(help="Stop after this long: 30s, 5m, 1h.")]
BatchSize = Annotated[
    int | None, typer.Option(help="Sequences per optimizer step, over all processes (default: 16).")
]
GradAccum = Annotated[
    int | None,
    typer.Option(help="Micro-batches per step, to reach a large batch in little memory."),
]
BlockSize = Annotated[int | None, typer.Option(help="Context length (default: the preset's).")]
Lr = Annotated[
    float | None,
    typer.Option(
        help="Peak AdamW learning rate (embeddings, head, gains; all with --optimizer adamw)."
    ),
]
MuonLr = Annotated[
    float | None, typer.Option(help="Peak Muon learning rate (matrices in the blocks).")
]
Optimizer = Annotated[
    str | None, typer.Option(help="auto (Muon + AdamW for modern, AdamW for gpt2), muon or adamw.")
]
Schedule = Annotated[
    str | None, typer.Option(help="wsd (warmup, stable, linear cooldown; default) or cosine.")
]
MinLrRatio = Annotated[
    float | None,
    typer.Option(help="The learning rate decays to this fraction of its peak (default: 0)."),
]
WarmupSteps = Annotated[int | None, typer.Option(help="Learning-rate warmup steps.")]
WeightDecay = Annotated[float | None, typer.Option(help="Weight decay on matrices.")]
Dropout = Annotated[float | None, typer.Option(help="Dropout probability (default: 0).")]
EvalEvery = Annotated[int | None, typer.Option(help="Evaluate every N steps (default: 100).")]
SampleEvery = Annotated[
    int | None,
    typer.Option(
        help="Print a short sample every N steps, 0 for none (default: ten in a run, none in "
        "runs under 1000 steps or 2 minutes).",
    ),
]
SamplePrompt = Annotated[
    str | None,
    typer.Option(help="Prompt of those samples (default: the first words of the text)."),
]
SaveEvery = Annotated[
    str | None,
    typer.Option(
        help="Checkpoint every N steps (e.g. 500) or every so long (e.g. 10m) "
        "(default: 5m), and always at the end."
    ),
]
SkipNonfinite = Annotated[
    int | None,
    typer.Option(help="Skip up to N batches whose loss is NaN or infinite instead of stopping."),
]
ValFraction = Annotated[
    float | None,
    typer.Option(help="Fraction of the text held out for validation, from its end (default: 0.1)."),
]
Seed = Annotated[int | None, typer.Option(help="Random seed (default: 1337).")]
Device = Annotated[str | None, typer.Option(help="auto, cpu, cuda or mps.")]
Dtype = Annotated[
    str | None,
    typer.Option(
        help="auto (bfloat16 autocast on CUDA, float32 elsewhere), float32, bfloat16, float16."
    ),
]
Compile = Annotated[
    bool | None,
    typer.Option("--compile/--no-compile", help="torch.compile the model (default: on for CUDA)."),
]
TrainStateFlag = Annotated[
    bool | None,
    typer.Option(
        "--train-state/--no-train-state",
        help="Keep the optimizer state (1-2x the weights' size) once the run ends, so that "
        "--resume can continue it (default: keep). An interrupted run keeps it either way.",
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


def train_config(max_time: str | None, defaults: dict[str, Any] | None = None, **given: Any):  # type: ignore[no-untyped-def]
    """TrainConfig from the flags that were given, over the command's defaults."""
    from gptcli.config import TrainConfig, parse_duration

    values = dict(defaults or {})
    save_every = given.pop("save_every", None)
    values.update({k: v for k, v in given.items() if v is not None})
    if max_time is not None:
        values["max_time"] = parse_duration(max_time)
    if save_every is not None:
        if save_every.strip().isdigit():
            values["save_every"], values["save_seconds"] = int(save_every), None
        else:
            values["save_every"], values["save_seconds"] = None, parse_duration(save_every)
    return TrainConfig(**values)


def train_settings(cfg: Any) -> dict[str, Any]:
    """A TrainConfig as config-file values: every setting resolved, max_time as given."""
    return {k: v for k, v in cfg.to_dict().items() if k != "max_time"}


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


def run_training(job: Any, quiet: bool, json_out: bool) -> None:
    """Runs a training job (a callable taking observer and log) and prints its summary.

    Under torchrun only rank 0 prints.
    """
    main_process = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main_process
    with sigterm_as_ctrl_c(), TrainProgress(quiet) as progress:
        summary = job(progress, lambda m: info(m, quiet))
    if not main_process:
        return
    if json_out:
        print_json(summary)
        return
    typer.echo(
        f"saved {summary['name']}: {summary['steps']} steps, "
        f"train loss {fmt(summary['train_loss'])}, val loss {fmt(summary['val_loss'])}, "
        f"{summary['seconds']:.1f}s"
    )
    if not quiet:
        info(f'try: gpt generate "Once upon a time" -m {summary["name"]}')


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
    max_steps: MaxSteps = None,
    max_time: MaxTime = None,
    batch_size: BatchSize = None,
    grad_accum: GradAccum = None,
    block_size: BlockSize = None,
    lr: Lr = None,
    muon_lr: MuonLr = None,
    optimizer: Optimizer = None,
    schedule: Schedule = None,
    warmup_steps: WarmupSteps = None,
    min_lr_ratio: MinLrRatio = None,
    weight_decay: WeightDecay = None,
    dropout: Dropout = None,
    eval_every: EvalEvery = None,
    save_every: SaveEvery = None,
    skip_nonfinite: SkipNonfinite = None,
    sample_every: SampleEvery = None,
    sample_prompt: SamplePrompt = None,
    val_fraction: ValFraction = None,
    seed: Seed = None,
    device: Device = None,
    dtype: Dtype = None,
    compile: Compile = None,
    train_state: TrainStateFlag = None,
    resume: Resume = False,
    force: Force = False,
    config: ConfigFile = None,
    print_config_: PrintConfig = False,
    json_out: JsonOut = False,
    quiet: Quiet = False,
) -> None:
    from gptcli.config import FAMILIES, PRESETS
    from gptcli.errors import GptError
    from gptcli.store import check_name

    if preset != "auto" and preset not in PRESETS:
        raise GptError(f"unknown preset {preset!r} (choose from auto, {', '.join(PRESETS)})")
    if family is not None and family not in FAMILIES:
        raise GptError(f"unknown family {family!r} (choose from {', '.join(FAMILIES)})")
    if block_size is not None and block_size < 1:
        raise GptError("--block-size must be at least 1")
    if resume and force:
        raise GptError("--resume and --force do not go together")
    cfg = train_config(
        max_time,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        muon_lr=muon_lr,
        optimizer=optimizer,
        schedule=schedule,
        warmup_steps=warmup_steps,
        min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay,
        eval_every=eval_every,
        save_every=save_every,
        skip_nonfinite=skip_nonfinite,
        sample_every=sample_every,
        sample_prompt=sample_prompt,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        dtype=dtype,
        compile=compile,
        train_state=train_state,
    )
    name = check_name(name) if name is not None else (default_name(inputs) if inputs else None)
    settings = resolved_config(
        ctx, train_settings(cfg) | {"inputs": absolute_inputs(inputs), "name": name}
    )
    if print_config_:
        print_config(settings)
        return
    if not inputs:
        raise missing(ctx, "argument 'FILE_OR_DIR...'", "inputs")

    from gptcli.store import ModelStore
    from gptcli.train import TrainRequest, train_from_scratch

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
        auto_batch=batch_size is None,
        config=settings,
    )
    run_training(
        lambda observer, log: train_from_scratch(request, ModelStore(), observer, log),
        quiet,
        json_out,
    )
