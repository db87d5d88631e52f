"""Loss curves of stored models, and `gpt models show A B --compare`.

`loss_series` picks a model's curves (the train loss of every point in metrics.jsonl, the
validation loss of each evaluation); `write_plot` draws one model's or several into an image
(matplotlib, the plot extra); `print_comparison` shows the settings in which runs differ, their
results, and their curves side by side on the same scales. Works on the rows
`models.summarize` makes (JSON files only, no weights loaded); knows nothing of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from gptcli.cli.chart import bounds, legend_line, loss_chart
from gptcli.cli.console import out
from gptcli.config import TRACKING
from gptcli.errors import GptError

# What the row says of the model itself (the run's settings come from its "config")
SHAPE = ("kind", "task", "base", "family", "preset", "params", "layers", "heads", "width",
         "context", "vocab_size", "tokenizer")  # fmt: skip
# Settings that differ between any two runs and say nothing of how they differ
IGNORED = {"name", *TRACKING}
MIN_CHART = 20  # columns of one chart, below which the charts go one under another


def settings(row: dict[str, Any]) -> dict[str, Any]:
    """One model's shape, data and run settings, flat."""
    values = {key: row.get(key) for key in SHAPE}
    data = row.get("data") or {}
    for key in ("files", "train_tokens", "train_examples"):
        if key in data:
            values[f"data {key.replace('_', ' ')}"] = data[key]
    for key, value in (row.get("config") or {}).items():
        if key not in IGNORED:
            values[key] = value
    return values


def differences(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The settings whose values are not the same for all the models: name -> one value per
    model (None where a model has no such setting)."""
    each = [settings(row) for row in rows]
    keys = list(dict.fromkeys(k for values in each for k in values))
    differ = {}
    for key in keys:
        values = [values.get(key) for values in each]
        if any(v != values[0] for v in values[1:]):
            differ[key] = values
    return differ


def shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(shown(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def result_rows(rows: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    def loss(value: Any) -> str:
        return "-" if value is None else f"{value:.4f}"

    def kept(row: dict[str, Any]) -> str:
        k = row.get("kept") or {}
        return "-" if not k else f"step {k['step']:,} ({loss(k.get('val_loss'))})"

    return [
        ("steps", [shown(r["steps"]) for r in rows]),
        ("tokens", [shown(r["tokens"]) for r in rows]),
        ("seconds", [shown(r["seconds"]) for r in rows]),
        ("train loss", [loss(r["train_loss"]) for r in rows]),
        ("val loss", [loss(r["val_loss"]) for r in rows]),
        ("kept", [kept(r) for r in rows]),
    ]


def print_comparison(rows: list[dict[str, Any]]) -> None:
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("")
    for row in rows:
        table.add_column(row["name"], overflow="fold")
    differ = differences(rows)
    table.add_row(Text("settings that differ", style="bold"), *[""] * len(rows))
    if not differ:
        table.add_row("  (none)", *[""] * len(rows))
    for key, values in differ.items():
        table.add_row("  " + key, *[shown(v) for v in values])
    table.add_row(Text("results", style="bold"), *[""] * len(rows))
    for key, values in result_rows(rows):
        table.add_row("  " + key, *values)
    out.print(table)

    curves = [loss_series(row) for row in rows]
    axes = bounds(*[series for pair in curves for series in pair])
    if axes is None:
        return
    if axes[2] == axes[3]:
        axes = (axes[0], axes[1], axes[2] - 0.5, axes[3] + 0.5)
    label = 12  # the loss axis and its labels
    width = (out.width - 2) // len(rows) - label - 2
    side_by_side = width >= MIN_CHART
    width = max(width, MIN_CHART) if side_by_side else max(20, min(72, out.width - 14))
    charts = []
    for row, (train, val) in zip(rows, curves, strict=True):
        chart = Text(row["name"] + "\n", style="bold")
        chart.append_text(loss_chart(train, val, width, indent=1, axes=axes, legend=False))
        charts.append(chart)
    out.print()
    if side_by_side:
        grid = Table.grid(padding=(0, 2))
        for _ in charts:
            grid.add_column(no_wrap=True)
        grid.add_row(*charts)
        out.print(grid)
    else:
        for chart in charts:
            out.print(chart)
    out.print(Text("  ").append_text(legend_line()))


def loss_series(row: dict[str, Any]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, validation) loss over steps: the train loss of every point in metrics.jsonl
    (train.json's evaluations for a model without one), the validation loss of each
    evaluation."""
    points = [(p["step"], p.get("train_loss")) for p in row.get("points") or []]
    train = [(s, v) for s, v in points if v is not None]
    if not train:
        train = [(h["step"], h.get("train_loss")) for h in row["history"]]
    val = [(h["step"], h.get("val_loss")) for h in row["history"]]
    return [(s, v) for s, v in train if v is not None], [(s, v) for s, v in val if v is not None]


def write_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """The loss curves of one model or more as an image, through matplotlib (an optional
    extra): train loss as lines, validation loss as dots, one colour a model."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise GptError("--plot needs matplotlib: pip install 'gptcli[plot]'") from None
    curves = [(row["name"], *loss_series(row)) for row in rows]
    for name, train, val in curves:
        if len(train) + len(val) < 2:
            raise GptError(f"{name} has no loss curve to plot (fewer than two evaluations)")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for n, (name, train, val) in enumerate(curves):
        prefix = f"{name}: " if len(curves) > 1 else ""
        colours = (f"C{2 * n}", f"C{2 * n + 1}") if len(curves) == 1 else (f"C{n}", f"C{n}")
        if train:
            ax.plot(*zip(*train, strict=True), color=colours[0], label=prefix + "train loss")
        if val:
            ax.plot(*zip(*val, strict=True), marker="o", markersize=3, color=colours[1],
                    linestyle="--" if len(curves) > 1 else "-",
                    label=prefix + "validation loss")  # fmt: skip
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title(" vs ".join(name for name, _, _ in curves))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise GptError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
