"""`gpt classify`: a classifier model's label for a text, or for each line of stdin."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from gptcli.cli.console import print_json
from gptcli.cli.options import complete_model_name
from gptcli.errors import GptError

HELP = """Label texts with a classifier model (one fine-tuned with --task classify).

With no TEXT, each line of stdin is classified.

Example: gpt classify "What a lovely day" -m sentiment
"""


def classify(
    text: Annotated[
        str | None, typer.Argument(help="Text to label ('-' or omitted: stdin lines).")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Classifier model (default: the default model).",
            autocompletion=complete_model_name,
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    json_out: Annotated[
        bool,
        typer.Option("--json", help="One JSON object per text, with every label's probability."),
    ] = False,
) -> None:
    from gptcli.evaluate import classify_probs
    from gptcli.inference.loader import load

    if text is not None and text != "-":
        texts = [text]
    else:
        if sys.stdin.isatty():
            raise GptError("no text: give one as an argument or pipe lines through stdin")
        try:
            texts = [
                line
                for line in sys.stdin.buffer.read().decode("utf-8").splitlines()
                if line.strip()
            ]
        except UnicodeDecodeError:
            raise GptError("stdin is not UTF-8 text") from None
        if not texts:
            raise GptError("no text on stdin")
    loaded = load(model, device, dtype=None)  # as stored: the classifier's own numbers
    labels = loaded.model.config.labels or []
    probs = classify_probs(loaded.model, loaded.tokenizer, texts)
    for line, row in zip(texts, probs.tolist(), strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        if json_out:
            print_json(
                {
                    "text": line,
                    "label": labels[best],
                    "probability": row[best],
                    "probabilities": dict(zip(labels, row, strict=True)),
                }
            )
        else:
            typer.echo(f"{labels[best]}\t{row[best]:.3f}" + (f"\t{line}" if len(texts) > 1 else ""))
