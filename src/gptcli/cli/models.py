"""`gpt models list|show|rm|default|import|export`: the model store, and Hugging Face GPT-2."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from gptcli.cli.console import out, print_json

app = typer.Typer(
    help="List, inspect, remove and choose stored models; import and export Hugging Face "
    "GPT-2.\n\nExample: gpt models list",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]


def summarize(path: Any) -> dict[str, Any]:
    """What the store knows of a model, from its JSON files alone (no weights loaded)."""
    from gptcli import hf
    from gptcli.config import ModelConfig
    from gptcli.store import count_parameters, read_json

    if hf.is_hf_dir(path):
        config = hf.read_hf_config(path)
        params = hf.count_hf_parameters(path)
    else:
        config = ModelConfig.from_dict(read_json(path / "config.json"))
        params = count_parameters(path / "model.safetensors")
    info = read_json(path / "train.json") if (path / "train.json").is_file() else {}
    result = info.get("result", {})
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    return {
        "name": path.name,
        "path": str(path),
        "family": config.family,
        "preset": config.preset,
        "params": params,
        "layers": config.n_layer,
        "heads": config.n_head,
        "width": config.n_embd,
        "context": config.block_size,
        "vocab_size": config.vocab_size,
        "tokenizer": info.get("tokenizer"),
        "steps": result.get("steps"),
        "train_loss": result.get("train_loss"),
        "val_loss": result.get("val_loss"),
        "seconds": result.get("seconds"),
        "created": info.get("created"),
        "size_bytes": size,
        "data_files": [f.get("path") for f in info.get("data", {}).get("files", [])],
    }


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


@app.command("list", help="Stored models, newest first.\n\nExample: gpt models list --json")
def list_cmd(json_out: JsonOption = False) -> None:
    from rich.table import Table

    from gptcli.errors import GptError
    from gptcli.store import ModelStore

    store = ModelStore()
    rows = []
    for name in store.names():
        try:
            rows.append(summarize(store.model_dir(name)))
        except GptError as exc:
            rows.append({"name": name, "error": str(exc), "created": ""})

    def age(row: dict[str, Any]) -> int:
        weights = store.model_dir(row["name"]) / "model.safetensors"
        return weights.stat().st_mtime_ns if weights.is_file() else 0

    rows.sort(key=age, reverse=True)
    default = store.default_name()
    if json_out:
        print_json({"models": rows, "default": default})
        return
    if not rows:
        typer.echo("no models yet: run `gpt train FILE` to make one")
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "family", "params", "context", "val loss", "size", "created"):
        table.add_column(column)
    for r in rows:
        mark = "* " if r["name"] == default else "  "
        if "error" in r:
            table.add_row(mark + r["name"], f"[red]{r['error']}[/red]")
            continue
        val = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-"
        table.add_row(
            mark + r["name"],
            r["family"],
            human_count(r["params"]),
            str(r["context"]),
            val,
            human_count(r["size_bytes"]) + "B",
            (r["created"] or "")[:16],
        )
    out.print(table)


@app.command("show", help="Details of one model.\n\nExample: gpt models show stories")
def show_cmd(
    name: Annotated[
        str | None, typer.Argument(help="Model name or directory (default: the default model).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    from gptcli.store import ModelStore

    row = summarize(ModelStore().resolve(name))
    if json_out:
        print_json(row)
        return
    for key, value in row.items():
        if key == "params":
            value = f"{human_count(value)} ({value:,})"
        if isinstance(value, float):
            value = f"{value:.4f}"
        if isinstance(value, list):
            value = ", ".join(map(str, value)) or "-"
        typer.echo(f"{key:>12}: {value if value is not None else '-'}")


@app.command("rm", help="Remove a model from the store.\n\nExample: gpt models rm old-model")
def rm_cmd(name: Annotated[str, typer.Argument(help="Model name.")]) -> None:
    from gptcli.store import ModelStore

    ModelStore().remove(name)
    typer.echo(f"removed {name}")


@app.command(
    "default", help="Show or set the default model.\n\nExample: gpt models default stories"
)
def default_cmd(
    name: Annotated[str | None, typer.Argument(help="Model name to make default.")] = None,
) -> None:
    from gptcli.errors import GptError
    from gptcli.store import ModelStore

    store = ModelStore()
    if name is None:
        current = store.default_name()
        if current is None:
            raise GptError("no default model yet: run `gpt train FILE` first")
        typer.echo(current)
        return
    store.set_default(name)
    typer.echo(f"default model: {name}")


IMPORT_HELP = """Import a Hugging Face GPT-2 model directory into the store.

DIR holds config.json (model_type gpt2), model.safetensors, and tokenizer.json or vocab.json +
merges.txt, as written by transformers' save_pretrained. Nothing is downloaded. Pickle
checkpoints (pytorch_model.bin) are refused. The model becomes the default if there is none
yet. Any command's -m also takes such a directory directly, without importing it.

Example: gpt models import ~/models/gpt2 --name gpt2
"""


@app.command("import", help=IMPORT_HELP)
def import_cmd(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Hugging Face GPT-2 directory.")],
    name: Annotated[
        str | None, typer.Option(help="Name in the store (default: the directory's name).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name.")] = False,
    json_out: JsonOption = False,
) -> None:
    from pathlib import Path

    from gptcli.cli.console import info
    from gptcli.hf import import_hf_dir
    from gptcli.store import check_name

    path = Path(directory).expanduser()
    summary = import_hf_dir(path, check_name(name or path.resolve().name), force)
    if json_out:
        print_json(summary)
        return
    typer.echo(
        f"imported {summary['name']}: {human_count(summary['params'])} parameters, "
        f"context {summary['context']}"
    )
    info(f'try: gpt generate "Hello, I\'m a language model," -m {summary["name"]}')


EXPORT_HELP = """Write a gpt2-family model as a Hugging Face GPT-2 directory.

transformers loads the result with GPT2LMHeadModel.from_pretrained(DIR) and
AutoTokenizer.from_pretrained(DIR) and computes the same logits. Models of the modern family
(rotary, RMSNorm) have no GPT-2 equivalent and are refused.

Example: gpt models export stories ./stories-hf
"""


@app.command("export", help=EXPORT_HELP)
def export_cmd(
    name: Annotated[str, typer.Argument(help="Model name or directory.")],
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Directory to write.")],
    force: Annotated[bool, typer.Option("--force", help="Replace DIR if it is not empty.")] = False,
    json_out: JsonOption = False,
) -> None:
    from pathlib import Path

    from gptcli.hf import export_hf_dir

    summary = export_hf_dir(name, Path(directory).expanduser(), force)
    if json_out:
        print_json(summary)
        return
    typer.echo(f"exported {summary['name']} to {summary['path']}")
