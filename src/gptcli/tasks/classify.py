"""The classify task: JSONL {"text", "label"}, GPT-1 style.

A linear head reads the last position, an appended `<|classify|>` token; the loss is the
classification loss plus aux_lm_weight x the LM loss on the same text. The label set is the
data's (sorted), or the resumed model's. `gpt classify` and `gpt eval` read texts the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from gptcli.data import read_jsonl
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.tasks.base import TaskData, TaskInputs
from gptcli.tasks.examples import Example, example_batches
from gptcli.tokenizer import Tokenizer

NAME = "classify"
CLASSIFY_TOKEN = "<|classify|>"


def recognises(files: list[Path], first: dict[str, Any] | None) -> bool:
    return first is not None and "label" in first


def read_labelled(files: list[Path]) -> list[tuple[str, str, str]]:
    """(text, label, "file:line") for each line {"text": ..., "label": ...}."""
    records = []
    for path in files:
        for number, record in read_jsonl(path):
            text, label = record.get("text"), record.get("label")
            if not isinstance(text, str) or not text:
                raise GptError(f"{path}:{number}: needs a non-empty string 'text'")
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise GptError(f"{path}:{number}: needs a 'label' (a string)")
            records.append((text, str(label), f"{path}:{number}"))
    if not records:
        raise GptError("no labelled lines in " + ", ".join(str(f) for f in files))
    return records


def classify_examples(
    files: list[Path], tokenizer: Tokenizer, block_size: int, labels: list[str] | None = None
) -> tuple[list[Example], list[str]]:
    """Labelled texts -> examples; the label set is given (resume) or taken from the data."""
    records = read_labelled(files)
    labels = labels or sorted({label for _, label, _ in records})
    if len(labels) < 2:
        raise GptError("classification needs at least two different labels in the data")
    index = {label: i for i, label in enumerate(labels)}
    cls_id = classify_token_id(tokenizer)
    examples = []
    for text, label, where in records:
        if label not in index:
            raise GptError(f"{where}: label {label!r} is not one of the model's labels")
        ids = classify_ids(tokenizer, text, block_size, cls_id)
        targets = [*ids[1:-1], -100]  # the LM does not learn to predict the classify token
        examples.append(Example(ids, targets, len(ids) - 1, index[label]))
    return examples, labels


def classify_token_id(tokenizer: Tokenizer) -> int:
    token = tokenizer.hf.token_to_id(CLASSIFY_TOKEN)
    if token is None:
        raise GptError(f"the tokenizer has no {CLASSIFY_TOKEN} token: not a classifier model")
    return token


def classify_ids(tokenizer: Tokenizer, text: str, block_size: int, cls_id: int) -> list[int]:
    """The text's ids (their last block_size - 1) followed by the classify token."""
    return [*tokenizer.encode(text)[-(block_size - 1) :], cls_id]


def add_classifier(model: GPT, labels: list[str]) -> None:
    model.config.labels = list(labels)
    head = nn.Linear(model.config.n_embd, len(labels))
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    model.classifier = head.to(next(model.parameters()))


def prepare(inputs: TaskInputs) -> TaskData:
    model, tokenizer = inputs.model, inputs.tokenizer
    if not inputs.resume:
        tokenizer.hf.add_special_tokens([CLASSIFY_TOKEN])
    examples, labels = classify_examples(
        inputs.files,
        tokenizer,
        model.config.block_size,
        model.config.labels if inputs.resume else None,
    )
    model.grow_vocab(tokenizer.vocab_size)
    if not inputs.resume:
        add_classifier(model, labels)
    train, val, counts = example_batches(
        examples, inputs.cfg, inputs.device, inputs.dist, inputs.aux_lm_weight
    )
    data = {"files": [str(f.resolve()) for f in inputs.files], "labels": labels}
    return TaskData(train, val, data | counts)
