"""Measuring a model: loss, perplexity and bits per byte of text, and multiple-choice accuracy.

Which tokens are scored: every token of a text but the first, which has nothing to be predicted
from (no BOS token is prepended: most models here never saw one at the start of a text). Bits
per byte divide the summed loss by the UTF-8 bytes of exactly the scored tokens (the text's
bytes less its first token's), so models with different tokenizers are compared on the same
footing.

Texts longer than the context go through a sliding window (`windows`): window k feeds tokens
from k·stride on, and each token is scored in the first window that holds it as a target, so
it sees at least context − stride + 1 tokens before it (all of them in the first window).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gptcli.data import encode_text, read_jsonl
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.tasks.classify import classify_ids, classify_token_id
from gptcli.tokenizer import Tokenizer

LOGITS_BUDGET = 1 << 24  # floats of logits per forward pass, to bound memory
MAX_ROWS = 64  # sequences per forward pass: bigger batches are no faster on a CPU

Progress = Callable[[int, int], None]  # (done, total)


# -- language modelling ------------------------------------------------------------------------
@dataclass
class LMScore:
    nll: float  # summed negative log-likelihood of the scored tokens, nats
    tokens: int  # scored tokens
    n_bytes: int  # UTF-8 bytes of the scored tokens

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(min(self.loss, 700.0))

    @property
    def bits_per_byte(self) -> float | None:
        """None where the bytes are unknown (token shards carry no text)."""
        return self.nll / (self.n_bytes * math.log(2)) if self.n_bytes else None

    def __add__(self, other: LMScore) -> LMScore:
        return LMScore(
            self.nll + other.nll, self.tokens + other.tokens, self.n_bytes + other.n_bytes
        )

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.n_bytes,
        }


def windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) for each window: inputs tokens[begin:end] predict
    tokens[begin+1:end+1], of which those before `first_scored` an earlier window scored.

    Window k begins at k·stride; with stride == context the windows do not overlap.
    """
    done = 0  # targets 1..done are scored (token 0 is never a target)
    begin = 0
    while done < n_tokens - 1:
        end = min(begin + context, n_tokens - 1)
        yield begin, end, done + 1
        done = end
        begin += stride


def scored_bytes(tokenizer: Tokenizer, tokens: np.ndarray, text_bytes: int) -> int:
    """UTF-8 bytes of the tokens that are scored: all but the first one's."""
    if len(tokens) == 0:
        return 0
    return text_bytes - len(tokenizer.token_bytes(int(tokens[0])))


def batch_rows(model: GPT, length: int) -> int:
    """How many sequences of `length` tokens one forward pass takes."""
    return max(1, min(MAX_ROWS, LOGITS_BUDGET // (length * model.config.vocab_size)))


def target_nll(model: GPT, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the targets y (-100: not scored) of each row: (B,)."""
    device = next(model.parameters()).device
    logits, _ = model(x.to(device))  # (B, T, V)
    y = y.to(device)
    nll = F.cross_entropy(
        logits.float().flatten(0, 1), y.flatten(), ignore_index=-100, reduction="none"
    )
    return nll.view(y.shape).double().sum(dim=1).cpu()


@torch.inference_mode()
def score_tokens(
    model: GPT,
    tokens: np.ndarray,
    n_bytes: int,
    stride: int | None = None,
    on_progress: Progress | None = None,
) -> LMScore:
    """Sums the loss of every token after the first, each predicted once (see `windows`).

    `n_bytes` are the bytes of the scored tokens (`scored_bytes`).
    """
    context = model.config.block_size
    stride = stride or max(context // 2, 1)
    if not 1 <= stride <= context:
        raise GptError(f"the stride must be between 1 and the context length ({context})")
    ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(ids)
    if n < 2:
        return LMScore(0.0, 0, n_bytes)
    plan = list(windows(n, context, stride))
    rows = batch_rows(model, min(context, n - 1))
    nll = 0.0
    counted = 0
    for first in range(0, len(plan), rows):
        group = plan[first : first + rows]
        length = max(end - begin for begin, end, _ in group)
        x = torch.zeros(len(group), length, dtype=torch.long)
        y = torch.full((len(group), length), -100, dtype=torch.long)
        for row, (begin, end, scored_from) in enumerate(group):
            x[row, : end - begin] = ids[begin:end]
            skip = scored_from - (begin + 1)  # targets an earlier window scored
            y[row, skip : end - begin] = ids[scored_from : end + 1]
        nll += float(target_nll(model, x, y).sum())
        counted += int((y != -100).sum())
        if on_progress:
            on_progress(first + len(group), len(plan))
    return LMScore(nll, counted, n_bytes)


def score_text(
    model: GPT,
    tokenizer: Tokenizer,
    text: str,
    stride: int | None = None,
    on_progress: Progress | None = None,
) -> LMScore:
    """`score_tokens` on a text, tokenized as training does."""
    tokens = encode_text(tokenizer, text)
    n_bytes = scored_bytes(tokenizer, tokens, len(text.encode()))
    return score_tokens(model, tokens, n_bytes, stride, on_progress)


# -- multiple choice ---------------------------------------------------------------------------
@dataclass
class ChoiceItem:
    context: str
    choices: list[str]
    label: int  # index of the right choice
    where: str = ""  # FILE:LINE, for messages


@dataclass
class ChoiceScore:
    correct: int  # highest log-likelihood on the right choice
    correct_norm: int  # highest log-likelihood per character on the right choice
    examples: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.examples if self.examples else float("nan")

    @property
    def accuracy_norm(self) -> float:
        return self.correct_norm / self.examples if self.examples else float("nan")

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "accuracy": self.accuracy,
            "accuracy_norm": self.accuracy_norm,
            "examples": self.examples,
        }


def read_choice_file(path: Path) -> list[ChoiceItem]:
    """`{"context": str, "choices": [str, ...], "label": int}` a line; blank lines are skipped."""
    items = []
    for number, record in read_jsonl(path):
        where = f"{path}:{number}"
        missing = [k for k in ("context", "choices", "label") if k not in record]
        if missing:
            raise GptError(f"{where}: missing key {missing[0]!r}")
        context, choices, label = record["context"], record["choices"], record["label"]
        if not isinstance(context, str):
            raise GptError(f"{where}: 'context' must be a string")
        if not isinstance(choices, list) or not choices:
            raise GptError(f"{where}: 'choices' must be a non-empty list")
        if not all(isinstance(c, str) and c for c in choices):
            raise GptError(f"{where}: every choice must be a non-empty string")
        if not isinstance(label, int) or isinstance(label, bool):
            raise GptError(f"{where}: 'label' must be an integer (the index of the right choice)")
        if not 0 <= label < len(choices):
            raise GptError(f"{where}: label {label} is out of range for {len(choices)} choices")
        items.append(ChoiceItem(context, choices, label, where))
    if not items:
        raise GptError(f"{path}: no examples")
    return items


def choice_sequence(
    tokenizer: Tokenizer, item: ChoiceItem, index: int, context_len: int
) -> tuple[list[int], int]:
    """(ids, n_choice_tokens): context and choice as one sequence, the choice's tokens last.

    The choice's tokens are those where the encoding of context + choice leaves the encoding
    of the context alone (a token merged across the seam counts as the choice's). A context
    longer than the window is cut on the left.
    """
    choice = item.choices[index]
    context_ids = tokenizer.encode(item.context)
    ids = tokenizer.encode(item.context + choice)
    common = 0
    for a, b in zip(context_ids, ids, strict=False):
        if a != b:
            break
        common += 1
    if common == 0:  # nothing to predict the first token from: start after an end of text
        if tokenizer.eot_id is None:
            raise GptError(f"{item.where}: the context is empty and the tokenizer has no BOS")
        ids = [tokenizer.eot_id, *ids]
        common = 1
    n_choice = len(ids) - common
    if n_choice > context_len:
        raise GptError(
            f"{item.where}: choice {index} is {n_choice} tokens, "
            f"longer than the model's context ({context_len})"
        )
    return ids[-(context_len + 1) :], n_choice


@torch.inference_mode()
def choice_loglikelihoods(
    model: GPT,
    tokenizer: Tokenizer,
    items: list[ChoiceItem],
    on_progress: Progress | None = None,
) -> list[list[float]]:
    """The log-likelihood of each choice given its context (nats), item by item."""
    context = model.config.block_size
    requests = [
        (i, j, *choice_sequence(tokenizer, item, j, context))
        for i, item in enumerate(items)
        for j in range(len(item.choices))
    ]
    requests.sort(key=lambda r: -len(r[2]))  # similar lengths share a batch: little padding
    result = [[0.0] * len(item.choices) for item in items]
    done = 0
    while done < len(requests):
        length = len(requests[done][2]) - 1
        group = requests[done : done + batch_rows(model, length)]
        x = torch.zeros(len(group), length, dtype=torch.long)
        y = torch.full((len(group), length), -100, dtype=torch.long)
        for row, (_, _, ids, n_choice) in enumerate(group):
            seq = torch.tensor(ids, dtype=torch.long)
            x[row, : len(ids) - 1] = seq[:-1]
            y[row, len(ids) - 1 - n_choice : len(ids) - 1] = seq[-n_choice:]
        for (i, j, _, _), nll in zip(group, target_nll(model, x, y).tolist(), strict=True):
            result[i][j] = -nll
        done += len(group)
        if on_progress:
            on_progress(done, len(requests))
    return result


def score_choices(
    model: GPT,
    tokenizer: Tokenizer,
    items: list[ChoiceItem],
    on_progress: Progress | None = None,
) -> ChoiceScore:
    """Accuracy of picking the likeliest choice, and of the likeliest per character of the
    choice (lm-evaluation-harness's `acc_norm`). Choices are appended to the context as is."""
    lls = choice_loglikelihoods(model, tokenizer, items, on_progress)
    correct = correct_norm = 0
    for item, ll in zip(items, lls, strict=True):
        scores = np.array(ll)
        lengths = np.array([len(c) for c in item.choices], dtype=np.float64)
        correct += int(np.argmax(scores)) == item.label
        correct_norm += int(np.argmax(scores / lengths)) == item.label
    return ChoiceScore(correct, correct_norm, len(items))


# -- classification ---------------------------------------------------------------------------


@torch.inference_mode()
def classify_probs(
    model: GPT,
    tokenizer: Tokenizer,
    texts: list[str],
    batch_size: int = 32,
    on_progress: Progress | None = None,
) -> torch.Tensor:
    """Label probabilities (N, labels) of a classifier model for each text."""
    if not model.config.labels:
        raise GptError("not a classifier model (fine-tune one with --task classify)")
    cls_id = classify_token_id(tokenizer)
    device = next(model.parameters()).device
    rows = [classify_ids(tokenizer, t, model.config.block_size, cls_id) for t in texts]
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        idx = torch.zeros(len(chunk), max(len(r) for r in chunk), dtype=torch.long)
        for i, r in enumerate(chunk):
            idx[i, : len(r)] = torch.tensor(r)
        positions = torch.tensor([len(r) - 1 for r in chunk])
        logits, _ = model(idx.to(device), cls_positions=positions.to(device))
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
        if on_progress:
            on_progress(min(start + batch_size, len(rows)), len(rows))
    return torch.cat(out)


@dataclass
class ClassifyScore:
    labels: list[str]
    confusion: list[list[int]]  # [true][predicted]

    @property
    def examples(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def accuracy(self) -> float:
        right = sum(self.confusion[i][i] for i in range(len(self.labels)))
        return right / self.examples if self.examples else float("nan")

    def per_label(self) -> dict[str, dict[str, float]]:
        result = {}
        for i, label in enumerate(self.labels):
            predicted = sum(row[i] for row in self.confusion)
            actual = sum(self.confusion[i])
            hit = self.confusion[i][i]
            result[label] = {
                "precision": hit / predicted if predicted else 0.0,
                "recall": hit / actual if actual else 0.0,
                "support": actual,
            }
        return result

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "examples": self.examples,
            "labels": self.labels,
            "per_label": self.per_label(),
            "confusion": self.confusion,
        }


def score_classifier(
    model: GPT,
    tokenizer: Tokenizer,
    items: list[tuple[str, str, str]],
    on_progress: Progress | None = None,
) -> ClassifyScore:
    """Accuracy and confusion matrix on (text, label, where) items."""
    labels = list(model.config.labels or [])
    index = {label: i for i, label in enumerate(labels)}
    for _, label, where in items:
        if label not in index:
            raise GptError(
                f"{where}: label {label!r} is not one of the model's labels ({', '.join(labels)})"
            )
    probs = classify_probs(model, tokenizer, [t for t, _, _ in items], on_progress=on_progress)
    confusion = [[0] * len(labels) for _ in labels]
    for (_, label, _), predicted in zip(items, probs.argmax(dim=-1).tolist(), strict=True):
        confusion[index[label]][predicted] += 1
    return ClassifyScore(labels, confusion)
