"""`gpt models list|show|rm|prune|default|import|pull|export`: the store, Hugging Face, GGUF."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from gptcli.cli.console import info, out, print_json
from gptcli.cli.modelinfo import (
    damage,
    fmt_loss,
    human_count,
    print_summary,
    summarize,
)
from gptcli.cli.options import complete_model_name
from gptcli.cli.usage import Command, Group
from gptcli.errors import GptError

app = typer.Typer(
    help="List, inspect, remove, prune and choose stored models; import and export Hugging "
    "Face models, export GGUF.\n\nExample: gpt models list",
    no_args_is_help=True,
    cls=Group,
)

JsonOption = Annotated[bool, typer.Option("--json", help="JSON on stdout.")]
ModelName = Annotated[
    str, typer.Argument(help="Model name.", autocompletion=complete_model_name, show_default=False)
]


@app.command(
    "list",
    cls=Command,
    help="Stored models, newest first: parameters, context, the validation loss of the weights "
    "stored, size on disk and date. Runs that have not saved a model yet are listed as "
    "training.\n\n"
    "--json: the fields of gpt models show --json but history; kept_val_loss is the stored "
    "weights' validation loss, val_loss the last evaluation's (they differ when an earlier "
    "step was kept as the best).\n\n"
    "Example: gpt models list --json",
)
def list_cmd(json_out: JsonOption = False) -> None:
    from rich.table import Table
    from rich.text import Text

    from gptcli.store import ModelStore

    store = ModelStore()
    default = store.default_name()
    rows = []
    for name in store.names() + store.unfinished_names():
        try:
            row = summarize(store.model_dir(name), default)
        except GptError as exc:
            row = {"name": name, "damaged": damage(str(exc)), "error": str(exc), "created": ""}
        row.pop("history", None)  # the curve is `gpt models show`'s
        rows.append(row)

    def age(row: dict[str, Any]) -> int:
        directory = store.model_dir(row["name"])
        stamps = [
            f.stat().st_mtime_ns
            for f in (directory / "model.safetensors", directory / "train.json")
            if f.is_file()
        ]
        return max(stamps, default=0)

    rows.sort(key=age, reverse=True)
    if json_out:
        print_json({"models": rows, "default": default})
        return
    if not rows:
        typer.echo("no models yet: run `gpt train FILE` to make one")
        return
    table = Table(box=None, header_style="bold")
    for column in ("name", "family", "params", "context", "val loss", "size", "date"):
        table.add_column(column, justify="right" if column in ("params", "val loss") else "left")
    for r in rows:
        mark = "* " if r["name"] == default else "  "
        if "damaged" in r:
            damaged = Text(f"damaged: {r['damaged']}", style="red")
            table.add_row(mark + r["name"], damaged, "-", "-", "-", "-", "-")
            continue
        val = fmt_loss(r["kept_val_loss"])
        table.add_row(
            mark + r["name"],
            r["family"] or "(training)",
            human_count(r["params"]),
            str(r["context"] or "-"),
            val,
            human_count(r["size_bytes"]) + "B",
            (r["created"] or "")[:16].replace("T", " "),
        )
    out.print(table)


SHOW_HELP = """Details of one model, and its loss curve drawn in the terminal; or, with
--compare, the settings in which two or more models differ and their loss curves side by side.

Parameters, family and preset, tokenizer and vocabulary, context, training data, steps, time,
final losses, the loss curve (the train loss of every point in metrics.jsonl, the validation
loss of each evaluation) and the settings of the run (as lines that `gpt train --config`
reads). A run still training shows its progress so far.

--json fields: name, path, default, weights (false before a run's first checkpoint), kind
(train, finetune, import), task, base, source, family, preset, params, layers, heads, width,
context, vocab_size, labels, tokenizer, data {files, bytes, train_tokens, val_tokens,
train_examples, val_examples}, data_files, steps, tokens, seconds, train_loss and val_loss
(the last evaluation's), kept_val_loss (the stored weights'), stopped (max_steps, max_time,
interrupted, running), kept (the step whose weights are stored: step, val_loss, why), created,
size_bytes, weights_bytes,
train_state_bytes (the optimizer state kept for --resume; null without), config (the run's
settings), history (one record per evaluation: step, tokens, seconds, train_loss, val_loss, lr),
points (metrics.jsonl: one record every --log-every steps and at each evaluation: step, tokens,
seconds, train_loss, val_loss, lr, muon_lr, grad_norm, tokens_per_second), inference_dtype
{auto, int8, decode} (what `--dtype auto` and `--dtype int8` run on this machine's CPU, and
what decodes one row there: the native step or torch's kernels). With --compare, --json gives
{models, differ}: one such object a model, and each setting that differs with one value a
model.

Example: gpt models show stories --plot stories-loss.png
Example: gpt models show stories stories-big --compare
"""


@app.command("show", help=SHOW_HELP, cls=Command)
def show_cmd(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="NAME",
            help="Model name or directory (default: the default model); several with --compare.",
            autocompletion=complete_model_name,
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        bool,
        typer.Option(
            "--compare", help="Compare the models: the settings that differ, the loss curves."
        ),
    ] = False,
    plot: Annotated[
        str | None,
        typer.Option(
            metavar="FILE.png",
            help="Also draw the loss curve into an image (needs matplotlib: the plot extra).",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    from gptcli.store import ModelStore

    names = names or []
    if compare and len(names) < 2:
        ctx.fail("--compare needs two or more models: gpt models show A B --compare")
    if not compare and len(names) > 1:
        ctx.fail("one model at a time, or --compare to compare them")
    store = ModelStore()
    default = store.default_name()
    rows = [summarize(locate(store, name), default) for name in names or [None]]
    if plot is not None:
        from gptcli.cli.compare import write_plot

        write_plot(Path(plot).expanduser(), rows)
        info(f"wrote {plot}")
    if compare:
        from gptcli.cli.compare import differences, print_comparison

        if json_out:
            print_json({"models": rows, "differ": differences(rows)})
        else:
            print_comparison(rows)
        return
    if json_out:
        print_json(rows[0])
        return
    print_summary(rows[0])


def locate(store: Any, name: str | None) -> Path:
    """A model's directory: a stored name or a path, a run before its first checkpoint, or the
    default model."""
    if name is not None and name in store.unfinished_names():
        return store.model_dir(name)
    return store.resolve(name)


@app.command(
    "rm", help="Remove a model from the store.\n\nExample: gpt models rm old-model", cls=Command
)
def rm_cmd(name: ModelName, json_out: JsonOption = False) -> None:
    from gptcli.store import ModelStore

    ModelStore().remove(name)
    if json_out:
        print_json({"removed": name})
    else:
        typer.echo(f"removed {name}")


PRUNE_HELP = """Drop a model's training state, keeping the model.

The training state (optimizer moments, RNG and step) is what --resume needs: one to two times
the size of the weights (Muon keeps one moment per weight, AdamW two). Without it the model
generates, evaluates and fine-tunes as before, but --resume cannot continue it.
`gpt train --no-train-state` does not keep it in the first place.

Example: gpt models prune stories
"""


@app.command("prune", help=PRUNE_HELP, cls=Command)
def prune_cmd(name: ModelName, json_out: JsonOption = False) -> None:
    from gptcli.store import ModelStore

    freed = ModelStore().drop_train_state(name)
    if json_out:
        print_json({"pruned": name, "freed_bytes": freed})
    elif freed:
        typer.echo(f"pruned {name}: dropped {human_count(freed)}B of training state")
    else:
        typer.echo(f"{name} has no training state to drop")


@app.command(
    "default",
    cls=Command,
    help="Show or set the default model.\n\nExample: gpt models default stories",
)
def default_cmd(
    name: Annotated[
        str | None,
        typer.Argument(help="Model name to make default.", autocompletion=complete_model_name),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    from gptcli.store import ModelStore

    store = ModelStore()
    if name is not None:
        store.set_default(name)
    current = store.default_name()
    if current is None:
        raise GptError("no default model yet: run `gpt train FILE` first")
    if json_out:
        print_json({"default": current})
    else:
        typer.echo(current if name is None else f"default model: {name}")


IMPORT_HELP = """Import a Hugging Face GPT-2 or NanoChat model directory into the store.

DIR holds config.json (model_type gpt2 or nanochat), model.safetensors, and tokenizer.json or
vocab.json + merges.txt, as written by transformers' save_pretrained. Pickle checkpoints
(pytorch_model.bin) are refused. ORG/NAME[@REVISION] imports a repo already in the Hugging
Face cache (see `gpt models pull`), offline; a directory of that relative path wins. Nothing is
downloaded. The model becomes the default if there is none yet. Any command's -m also takes
such a directory directly, without importing it.

Example: gpt models import ~/models/gpt2 --name gpt2
"""


@app.command("import", help=IMPORT_HELP, cls=Command)
def import_cmd(
    directory: Annotated[
        str,
        typer.Argument(
            metavar="DIR|ORG/NAME", help="Hugging Face directory, or a repo in the HF cache."
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(help="Name in the store (default: the directory's or repo's last part)."),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name.")] = False,
    json_out: JsonOption = False,
) -> None:
    from gptcli import hub
    from gptcli.interop import import_hf_dir
    from gptcli.store import ModelStore, check_name

    path = Path(directory).expanduser()
    repo = None if path.exists() else hub.parse_repo(directory)
    source = None
    if repo is not None:
        snapshot = hub.cached_snapshot(repo)
        if snapshot is None:
            raise GptError(
                f"{directory}: no such directory, and {repo} is not in the Hugging Face cache "
                f"({hub.cache_dir()}); download it with: gpt models pull {repo}"
            )
        path, source = snapshot, f"hf:{repo.repo_id}@{snapshot.name}"
    default = repo.name if repo is not None else path.resolve().name
    summary = import_hf_dir(path, check_name(name or default), force, ModelStore(), source)
    print_import(summary, json_out)


def print_import(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(summary)
        return
    typer.echo(
        f"imported {summary['name']}: {human_count(summary['params'])} parameters, "
        f"context {summary['context']}"
    )
    info(f'try: gpt generate "Hello, I\'m a language model," -m {summary["name"]}')


PULL_HELP = """Download a model from the Hugging Face Hub and import it into the store.

ORG/NAME[@REVISION] names a model repo (a branch, tag or commit after @). Only what the model
needs is fetched: config.json, the safetensors weights (never pickle: a repo with only
pytorch_model.bin is refused) and the tokenizer files, into the Hugging Face cache, where an
interrupted download resumes next time. Then it is imported as `gpt models import` does
(GPT-2 and NanoChat models). Needs huggingface_hub (the hub extra). Honours HF_TOKEN,
HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, and HF_HUB_OFFLINE=1 (then only the cache is used).

Examples:
  gpt models pull openai-community/gpt2
  gpt finetune gpt2 my-notes.txt --name notes && gpt chat -m notes
"""


@app.command("pull", help=PULL_HELP, cls=Command)
def pull_cmd(
    repo: Annotated[
        str, typer.Argument(metavar="ORG/NAME[@REVISION]", help="Hugging Face model repo.")
    ],
    name: Annotated[
        str | None, typer.Option(help="Name in the store (default: the repo's last part).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a model of that name.")] = False,
    json_out: JsonOption = False,
) -> None:
    from gptcli import hub
    from gptcli.interop import import_hf_dir
    from gptcli.store import ModelStore, check_name

    ref = hub.require_repo(repo)
    target = check_name(name or ref.name)
    store = ModelStore()
    if store.model_dir(target).exists() and not force:
        raise GptError(f"a model named {target!r} already exists (use --force to replace it)")
    snapshot = hub.pull(ref)
    summary = import_hf_dir(snapshot, target, force, store, f"hf:{ref.repo_id}@{snapshot.name}")
    print_import(summary, json_out)


class ExportFormat(str, Enum):
    hf = "hf"
    gguf = "gguf"


class GgufDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
    bfloat16 = "bfloat16"
    q8_0 = "q8_0"


EXPORT_HELP = """Write a model for transformers (a directory) or llama.cpp and ollama (FILE.gguf).

A directory: transformers loads it with AutoModelForCausalLM.from_pretrained(DIR) and
AutoTokenizer.from_pretrained(DIR) and computes the same logits: GPT2LMHeadModel for the gpt2
family, NanoChatForCausalLM (transformers >= 5) for the default modern family. The chat
template travels as the tokenizer's Jinja chat_template. `gpt models import DIR` reads it back
bit for bit.

A .gguf file (or --format gguf; needs the gguf package, the gguf extra): llama.cpp's gpt2
architecture, so gpt2-family models with a BPE tokenizer only (llama.cpp has no architecture
for the modern family). --dtype float32 (default), float16, bfloat16 or q8_0; --ollama also
writes an ollama Modelfile beside it. Classifiers are refused.

Examples:
  gpt models export stories ./stories-hf
  gpt train examples/stories --family gpt2 --name stories-gpt2 --max-time 60s
  gpt models export stories-gpt2 stories.gguf --dtype q8_0 --ollama
"""


@app.command("export", help=EXPORT_HELP, cls=Command)
def export_cmd(
    name: Annotated[
        str,
        typer.Argument(help="Model name or directory.", autocompletion=complete_model_name),
    ],
    target: Annotated[
        str, typer.Argument(metavar="DIR|FILE.gguf", help="Directory or GGUF file to write.")
    ],
    format: Annotated[
        ExportFormat | None,
        typer.Option("--format", help="hf or gguf (default: gguf for a .gguf target, else hf)."),
    ] = None,
    dtype: Annotated[
        GgufDtype, typer.Option(help="GGUF weights: float32, float16, bfloat16 or q8_0.")
    ] = GgufDtype.float32,
    ollama: Annotated[
        bool, typer.Option("--ollama", help="GGUF: also write an ollama Modelfile beside it.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace what is at the target.")] = False,
    json_out: JsonOption = False,
) -> None:
    from gptcli.interop import export_gguf, export_hf_dir
    from gptcli.store import ModelStore

    path = Path(target).expanduser()
    kind = format.value if format else ("gguf" if path.suffix.lower() == ".gguf" else "hf")
    if kind == "gguf":
        summary = export_gguf(name, path, dtype.value, ollama, force, ModelStore())
    else:
        if dtype is not GgufDtype.float32 or ollama:
            raise GptError("--dtype and --ollama apply to GGUF exports (a .gguf target)")
        summary = export_hf_dir(name, path, force, ModelStore())
    if json_out:
        print_json(summary)
        return
    typer.echo(f"exported {summary['name']} to {summary['path']}")
