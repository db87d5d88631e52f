"""`gpt eval`: loss, perplexity and bits per byte, one row per model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gptcli.cli.console import err, out, print_json, stderr_is_tty

HELP = """Measure models: mean loss per token (nats), perplexity and bits per byte.

Without --data a model is scored on its own validation split (the text held out when it was
trained). Texts longer than the context are scored with a sliding window (--stride, default half
the context), so every token but the first is predicted exactly once; no BOS token is prepended,
so the first token of each text is not scored. Bits per byte divide the total loss by the text's
UTF-8 bytes, so models with different tokenizers compare fairly.

Example: gpt eval stories other-model --data test.txt
"""


def validation_tokens(loaded, store):  # type: ignore[no-untyped-def]
    """The validation split recorded at training time: (tokens, bytes)."""
    from gptcli.data import build_corpus, load_tokens, read_corpus
    from gptcli.errors import GptError

    data = loaded.info.get("data") or {}
    key = data.get("cache_key")
    if not key:
        raise GptError(f"{loaded.name} has no recorded validation split: pass --data FILE")
    cached = store.data_dir / f"{key}.val.bin"
    if cached.is_file():
        return load_tokens(cached, loaded.tokenizer.vocab_size), int(data.get("val_bytes", 0))
    files = [f["path"] for f in data.get("files", [])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise GptError(
            f"the validation text of {loaded.name} is gone ({missing[0]}): pass --data FILE"
        )
    corpus = build_corpus(
        read_corpus(files), loaded.tokenizer, data.get("val_fraction", 0.1), store.data_dir
    )
    if corpus.key != key:
        raise GptError(
            f"the training files of {loaded.name} have changed since it was trained: "
            "pass --data FILE"
        )
    return corpus.val.tokens, corpus.val.n_bytes


def evaluate(
    models: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[MODEL]...", help="Model names or directories (default: the default model)."
        ),
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data", "-d", help="Text file(s) to score (repeatable) (default: validation split)."
        ),
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Sliding-window step in tokens (default: half the context).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per model on stdout.")
    ] = False,
) -> None:
    import numpy as np

    from gptcli.checkpoint import load_model
    from gptcli.data import find_text_files, read_text
    from gptcli.errors import GptError
    from gptcli.evaluate import LMScore, score_tokens
    from gptcli.store import ModelStore
    from gptcli.tokenizer import iter_chunks
    from gptcli.train import pick_device

    if stride is not None and stride < 1:
        raise GptError("--stride must be at least 1")
    store = ModelStore()
    files = find_text_files(data) if data else []
    texts = [read_text(f) for f in files]
    dev = pick_device(device)
    rows = []
    for ref in models or [None]:
        loaded = load_model(store.resolve(ref), dev)
        if texts:
            score = LMScore(0.0, 0, 0)
            for text in texts:
                ids = [
                    i
                    for chunk in loaded.tokenizer.encode_batch(list(iter_chunks(text)))
                    for i in chunk
                ]
                score = score + score_tokens(
                    loaded.model, np.array(ids), len(text.encode()), stride
                )
        else:
            tokens, n_bytes = validation_tokens(loaded, store)
            if len(tokens) < 2:
                raise GptError(f"{loaded.name}: the validation split is empty: pass --data FILE")
            score = score_tokens(loaded.model, tokens, n_bytes, stride, progress_bar(loaded.name))
        if score.tokens == 0:
            raise GptError("nothing to score: the text has fewer than 2 tokens")
        rows.append({"model": loaded.name} | score.as_dict())
        if json_out:
            print_json(rows[-1])
    if not json_out:
        from rich.table import Table

        table = Table(box=None, header_style="bold")
        for column in ("model", "loss", "perplexity", "bits/byte", "tokens", "bytes"):
            table.add_column(column, justify="left" if column == "model" else "right")
        for r in rows:
            table.add_row(
                r["model"],
                f"{r['loss']:.4f}",
                f"{r['perplexity']:.2f}",
                f"{r['bits_per_byte']:.4f}",
                f"{r['tokens']:,}",
                f"{r['bytes']:,}",
            )
        out.print(table)


def progress_bar(name: str):  # type: ignore[no-untyped-def]
    """A callback that reports window progress on stderr when it is a terminal."""
    if not stderr_is_tty():
        return None

    def report(done: int, total: int) -> None:
        err.print(f"[dim]{name}: {done}/{total} windows[/dim]", end="\r")

    return report
