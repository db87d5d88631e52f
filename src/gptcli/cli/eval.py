"""`gpt eval`: loss, perplexity, bits per byte or multiple-choice accuracy, a row per model."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.console import err, out, print_json, stderr_is_tty
from gptcli.cli.options import complete_model_name
from gptcli.errors import GptError

if TYPE_CHECKING:
    import numpy as np

    from gptcli.checkpoint import LoadedModel
    from gptcli.store import ModelStore

HELP = """Measure models, one row per model: mean loss per token (nats), perplexity and bits per
byte, or multiple-choice accuracy.

--task lm (default): without --data a model is scored on its own validation split (the text
held out when it was trained), with --data on those text files (a directory means every .txt
under it). Scored tokens: every token of a text except the first, which has nothing before it
to be predicted from (no BOS token is prepended). Texts longer than the context are scored with
a sliding window: window k starts at token k*stride (--stride, default half the context) and
each token is scored once, in the first window that holds it, so it sees at least
context - stride + 1 tokens before it; --stride equal to the context gives non-overlapping
windows. A text that fits in the context is scored in one pass. Bits per byte = total loss in
bits / UTF-8 bytes of the scored tokens (the text's bytes less its first token's), so models
with different tokenizers, char and BPE, compare fairly.

--task choice --data FILE.jsonl: one {"context": ..., "choices": [...], "label": INDEX} a line.
Each choice is appended to the context as is (give it its leading space) and scored by the
log-likelihood of its tokens given the context (cut on the left to fit the window). Reported:
accuracy (likeliest choice) and accuracy_norm (likeliest per character of the choice, as
lm-evaluation-harness's acc_norm).

--task classify --data FILE.jsonl: one {"text": ..., "label": ...} a line, for classifier models
(fine-tuned with --task classify): accuracy, per-label precision and recall, confusion matrix.

--harness TASK[,TASK...]: EleutherAI's lm-evaluation-harness run in-process on the model
(needs the harness extra: pip install "gptcli\\[harness]"), printing its table (or --json): its
tasks (hellaswag, arc_easy, lambada_openai, ...; their data comes from the Hugging Face Hub,
or its cache when offline) or local task YAMLs (--include-path DIR). --limit N (or a fraction)
scores the first items only; --num-fewshot K puts K solved examples before each.

Example: gpt eval stories other-model --data test.txt
Example: gpt eval --task choice --data examples/choice.jsonl
Example: gpt eval gpt2 --harness hellaswag,arc_easy --limit 200
"""

# A classifier model's config.json names its labels.
CLASSIFIER_KEYS = ("labels",)


class Task(str, Enum):
    lm = "lm"
    choice = "choice"
    classify = "classify"


class EvalProgress:
    """One transient rich progress bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> EvalProgress:
        if stderr_is_tty() and not self.quiet:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def track(self, description: str, unit: str) -> Callable[[int, int], None] | None:
        """A (done, total) callback that moves the bar, or None when there is no bar."""
        if self.progress is None:
            return None
        if self.task is None:
            self.task = self.progress.add_task(description, total=None, unit=unit)
        else:
            self.progress.reset(self.task, description=description, total=None, unit=unit)

        def report(done: int, total: int) -> None:
            self.progress.update(self.task, completed=done, total=total)

        return report


def validation_tokens(loaded: LoadedModel, store: ModelStore) -> tuple[np.ndarray, int | None]:
    """The validation split recorded at training time: (tokens, UTF-8 bytes of its text, None
    where unknown: token shards)."""
    from gptcli.data import build_corpus, load_tokens, read_corpus

    data = loaded.info.get("data") or {}
    key = data.get("cache_key")
    if not key:
        raise GptError(f"{loaded.name} has no recorded validation split: pass --data FILE")
    if data.get("shards") or data.get("prepared"):
        return shard_validation(loaded, store, data)
    cached = store.data_dir / f"{key}.val.bin"
    if cached.is_file():
        return load_tokens(cached, loaded.tokenizer.vocab_size), int(data.get("val_bytes") or 0)
    files = [f["path"] for f in data.get("files", [])]
    missing = [f for f in files if not (f.startswith("hf:") or Path(f).exists())]
    if missing:
        raise GptError(
            f"the validation text of {loaded.name} is gone ({missing[0]}): pass --data FILE"
        )
    from gptcli.datasources.base import ReadOptions

    texts = read_corpus(
        [f["path"] for f in data.get("files", []) if not f.get("val")],
        ReadOptions(text_field=data.get("text_field", "text")),
        [f["path"] for f in data.get("files", []) if f.get("val")],
    )
    corpus = build_corpus(texts, loaded.tokenizer, data.get("val_fraction", 0.1), store.data_dir)
    if corpus.key != key:
        raise GptError(
            f"the training files of {loaded.name} have changed since it was trained: "
            "pass --data FILE"
        )
    return corpus.val.tokens, corpus.val.n_bytes


def shard_validation(
    loaded: LoadedModel, store: ModelStore, data: dict[str, Any]
) -> tuple[np.ndarray, int | None]:
    """The validation shards a model was trained with (bytes unknown unless prepared)."""
    from gptcli.data import build_shard_corpus
    from gptcli.datasources.shards import find_shards, read_prepared

    try:
        if data.get("prepared"):
            shards = read_prepared(Path(data["prepared"]))
        else:
            files = data.get("files", [])
            train = [f["path"] for f in files if not f.get("val")]
            shards = find_shards(train, [f["path"] for f in files if f.get("val")])
    except GptError as exc:
        raise GptError(
            f"the validation shards of {loaded.name} are gone ({exc}): pass --data FILE"
        ) from None
    corpus = build_shard_corpus(shards, loaded.tokenizer, store.data_dir)
    if corpus.key != data.get("cache_key"):
        raise GptError(
            f"the shards of {loaded.name} have changed since it was trained: pass --data FILE"
        )
    return corpus.val.tokens, corpus.val.n_bytes


def is_classifier(model_dir: Path) -> bool:
    from gptcli.store import read_json

    config = read_json(model_dir / "config.json")
    return isinstance(config, dict) and any(config.get(k) for k in CLASSIFIER_KEYS)


def jsonl_files(data: list[str]) -> list[Path]:
    for raw in data:
        path = Path(raw).expanduser()
        if not path.exists():
            raise GptError(f"{path}: no such file")
        if not path.is_file():
            raise GptError(f"{path}: not a file (--task choice reads JSONL files)")
    return [Path(raw).expanduser() for raw in data]


def evaluate(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="MODEL",
            help="Model names or directories (default: the default model).",
            autocompletion=complete_model_name,
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            "-d",
            help="File(s) to score, repeatable: text for --task lm (default: the validation "
            "split), JSONL for --task choice.",
        ),
    ] = None,
    task: Annotated[
        Task, typer.Option(help="lm: loss and bits per byte; choice: multiple choice accuracy.")
    ] = Task.lm,
    stride: Annotated[
        int | None,
        typer.Option(help="Sliding-window step in tokens, 1 to the context (default: half)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="Weights: float32, bfloat16, int8, or auto as gpt generate picks them (to "
            "measure what lower precision costs)."
        ),
    ] = "float32",
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per model on stdout.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    harness: Annotated[
        str | None,
        typer.Option(metavar="TASK[,TASK...]", help="lm-evaluation-harness tasks, run in-process."),
    ] = None,
    limit: Annotated[
        float | None, typer.Option(help="--harness: the first N items (or a fraction < 1).")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option("--num-fewshot", help="--harness: solved examples shown first.")
    ] = None,
    include_path: Annotated[
        list[str] | None,
        typer.Option(
            "--include-path",
            metavar="DIR",
            help="--harness: a directory of task YAMLs, repeatable.",
        ),
    ] = None,
) -> None:
    from gptcli.data import find_text_files, read_text
    from gptcli.evaluate import (
        LMScore,
        read_choice_file,
        score_choices,
        score_classifier,
        score_text,
        score_tokens,
        scored_bytes,
    )
    from gptcli.inference.loader import load
    from gptcli.inference.precision import inference_dtype
    from gptcli.runtime import pick_device
    from gptcli.store import ModelStore
    from gptcli.tasks.classify import read_labelled

    store = ModelStore()
    model_dirs = [store.resolve(ref) for ref in models or [None]]
    if harness is not None:
        if data or task is not Task.lm or stride is not None:
            raise GptError(
                "--harness runs lm-evaluation-harness tasks: no --data, --task, --stride"
            )
        return harness_eval(
            model_dirs,
            harness,
            limit,
            num_fewshot,
            include_path or [],
            device,
            dtype,
            json_out,
            store,
        )
    if limit is not None or num_fewshot is not None or include_path:
        raise GptError("--limit, --num-fewshot and --include-path apply to --harness")
    if task is Task.classify:
        for model_dir in model_dirs:
            if not is_classifier(model_dir):
                raise GptError(
                    f"{model_dir.name} is not a classifier model "
                    "(--task classify needs one fine-tuned with --task classify)"
                )
        if not data:
            raise GptError("--task classify needs --data FILE.jsonl")
        labelled = read_labelled(jsonl_files(data))
    if stride is not None and task is not Task.lm:
        raise GptError("--stride only applies to --task lm")
    if stride is not None and stride < 1:
        raise GptError("--stride must be at least 1")
    if task is Task.choice:
        if not data:
            raise GptError("--task choice needs --data FILE.jsonl")
        items = [item for path in jsonl_files(data) for item in read_choice_file(path)]
    else:
        files = find_text_files(data) if data else []
        texts = [(f.name, read_text(f)) for f in files]
    inference_dtype(dtype, pick_device(device))  # a bad --device or --dtype fails here

    rows = []
    with EvalProgress(quiet) as progress:
        for model_dir in model_dirs:
            loaded = load(str(model_dir), device, dtype, store=store)
            name = loaded.name
            if task is Task.choice:
                result: dict[str, Any] = score_choices(
                    loaded.model, loaded.tokenizer, items, progress.track(name, "choices")
                ).as_dict()
            elif task is Task.classify:
                result = score_classifier(
                    loaded.model, loaded.tokenizer, labelled, progress.track(name, "texts")
                ).as_dict()
            else:
                context = loaded.model.config.block_size
                if stride is not None and stride > context:
                    raise GptError(
                        f"--stride {stride} is more than the context of {name} ({context})"
                    )
                if texts:
                    score = LMScore(0.0, 0, 0)
                    for label, text in texts:
                        track = progress.track(f"{name} · {label}", "windows")
                        score = score + score_text(
                            loaded.model, loaded.tokenizer, text, stride, track
                        )
                    if score.tokens == 0:
                        raise GptError("nothing to score: every text has fewer than 2 tokens")
                else:
                    tokens, text_bytes = validation_tokens(loaded, store)
                    if len(tokens) < 2:
                        raise GptError(f"{name}: the validation split is empty: pass --data FILE")
                    n_bytes = (
                        0  # unknown: bits per byte is reported as unavailable
                        if text_bytes is None
                        else scored_bytes(loaded.tokenizer, tokens, text_bytes)
                    )
                    track = progress.track(f"{name} · validation", "windows")
                    score = score_tokens(loaded.model, tokens, n_bytes, stride, track)
                result = score.as_dict()
            rows.append({"model": name, "task": task.value} | result)
            if json_out:
                print_json(rows[-1])
            del loaded
    if not json_out:
        print_table(rows, task)


def harness_eval(
    model_dirs: list[Path],
    tasks: str,
    limit: float | None,
    num_fewshot: int | None,
    include_path: list[str],
    device: str,
    dtype: str,
    json_out: bool,
    store: ModelStore,
) -> None:
    """`--harness`: lm-eval's results for each model, as its table or one JSON object each."""
    from gptcli.harness import import_lm_eval, run_harness
    from gptcli.inference.loader import load

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not names:
        raise GptError("--harness needs at least one task name")
    if limit is not None and (limit <= 0 or (limit > 1 and not limit.is_integer())):
        raise GptError("--limit must be a whole number of items, or a fraction between 0 and 1")
    if num_fewshot is not None and num_fewshot < 0:
        raise GptError("--num-fewshot must be 0 or more")
    if limit is not None and limit >= 1:
        limit = int(limit)  # a count of items; below 1, a fraction of them
    import_lm_eval()  # say that it is missing before loading anything
    from lm_eval.utils import make_table

    paths = [Path(p).expanduser() for p in include_path]
    for model_dir in model_dirs:
        loaded = load(str(model_dir), device, dtype, store=store)
        results = run_harness(loaded, names, limit, num_fewshot, paths)
        if json_out:
            print_json(
                {
                    "model": loaded.name,
                    "results": json_safe(results.get("results", {})),
                    "n-shot": json_safe(results.get("n-shot", {})),
                    "n-samples": json_safe(results.get("n-samples", {})),
                    "limit": limit,
                }
            )
        else:
            out.print(f"[bold]{loaded.name}[/bold]", highlight=False)
            out.print(make_table(results), markup=False, highlight=False)
            if results.get("groups"):
                out.print(make_table(results, "groups"), markup=False, highlight=False)
        del loaded


def json_safe(value: Any) -> Any:
    """lm-eval's results with numpy numbers as plain ones, and anything else as text."""
    import json

    return json.loads(
        json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    )


def print_table(rows: list[dict[str, Any]], task: Task) -> None:
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    if task is Task.classify:
        print_classification(rows)
        return
    if task is Task.choice:
        columns = {
            "model": lambda r: r["model"],
            "accuracy": lambda r: f"{r['accuracy']:.4f}",
            "acc_norm": lambda r: f"{r['accuracy_norm']:.4f}",
            "examples": lambda r: f"{r['examples']:,}",
        }
    else:
        columns = {
            "model": lambda r: r["model"],
            "loss": lambda r: f"{r['loss']:.4f}",
            "perplexity": lambda r: f"{r['perplexity']:.2f}",
            "bits/byte": lambda r: (
                "unavailable" if r["bits_per_byte"] is None else f"{r['bits_per_byte']:.4f}"
            ),
            "tokens": lambda r: f"{r['tokens']:,}",
            "bytes": lambda r: f"{r['bytes']:,}",
        }
    for column in columns:
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(*(cell(r) for cell in columns.values()))
    out.print(table)


def print_classification(rows: list[dict[str, Any]]) -> None:
    """Accuracy, then per-label precision/recall and the confusion matrix of each model."""
    from rich.table import Table

    for r in rows:
        out.print(
            f"[bold]{r['model']}[/bold]: accuracy {r['accuracy']:.4f} on {r['examples']:,} examples"
        )
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("label", "precision", "recall", "support", *[f"→{x}" for x in r["labels"]]):
            table.add_column(column, justify="left" if column == "label" else "right")
        for label, row in zip(r["labels"], r["confusion"], strict=True):
            stats = r["per_label"][label]
            table.add_row(
                label,
                f"{stats['precision']:.3f}",
                f"{stats['recall']:.3f}",
                str(stats["support"]),
                *map(str, row),
            )
        out.print(table)
