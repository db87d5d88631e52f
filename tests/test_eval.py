"""`gpt eval` against direct computations with the model's forward pass.

Tiny models are built directly (no training) with weights large enough that every prediction
depends on its context, so a window that is off by one token shows up in the numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, SHARED_DATA, run
from test_errors import expect_error

from gptcli.checkpoint import write_model_dir
from gptcli.config import ModelConfig
from gptcli.evaluate import ChoiceItem, choice_loglikelihoods, windows
from gptcli.model import GPT
from gptcli.tokenizer import Tokenizer

CONTEXT = 24
ENGLISH = (
    "The fox counted the stars, one by one, until the owl asked him why. "
    "Because, said the fox, the moon will not tell me."
)


def make_model(
    home: Path, name: str, tokenizer: Tokenizer, family: str = "gpt2", seed: int = 0
) -> GPT:
    """A random tiny model with sharp predictions, saved as models/NAME in the store."""
    torch.manual_seed(seed)
    config = ModelConfig(
        family=family,
        n_layer=2,
        n_head=2,
        n_embd=32,
        block_size=CONTEXT,
        vocab_size=max(300, tokenizer.vocab_size),
    )
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.5)
    write_model_dir(home / "models" / name, model, tokenizer)
    return model.eval()


def token_logprob(model: GPT, inputs: list[int], target: int) -> float:
    """log p(target | inputs) from one forward pass over exactly `inputs`."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([inputs]))
    return torch.log_softmax(logits[0, -1].double(), dim=-1)[target].item()


def reference_loss(model: GPT, ids: list[int], stride: int) -> float:
    """Mean loss, each token t >= 1 predicted from the window the spec implies: window k starts
    at k*stride, and t is scored in the first window that holds it (the smallest k with
    k*stride + context >= t)."""
    total = 0.0
    for t in range(1, len(ids)):
        k = max(0, math.ceil((t - CONTEXT) / stride))
        total -= token_logprob(model, ids[k * stride : t], ids[t])
    return total / (len(ids) - 1)


def chunked_loss(model: GPT, ids: list[int]) -> float:
    """Mean loss over non-overlapping chunks of the context's length, one pass each."""
    total = 0.0
    for begin in range(0, len(ids) - 1, CONTEXT):
        chunk = torch.tensor([ids[begin : begin + CONTEXT + 1]])
        with torch.no_grad():
            logits, _ = model(chunk[:, :-1])
        logprobs = torch.log_softmax(logits[0].double(), dim=-1)
        total -= logprobs.gather(1, chunk[0, 1:, None]).sum().item()
    return total / (len(ids) - 1)


def eval_json(*args: str) -> dict:
    return json.loads(run("eval", *args, "--json").stdout)


@pytest.fixture
def char_tokenizer() -> Tokenizer:
    return Tokenizer.train_char([ENGLISH])


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_text_that_fits_equals_one_forward_pass(
    home: Path, tmp_path: Path, char_tokenizer: Tokenizer, family: str
) -> None:
    model = make_model(home, "m", char_tokenizer, family)
    text = ENGLISH[: CONTEXT + 1]  # 25 chars: 24 inputs predict 24 targets in one pass
    ids = char_tokenizer.encode(text)
    assert len(ids) == CONTEXT + 1
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    expected = -torch.log_softmax(logits[0].double(), -1).gather(1, torch.tensor(ids[1:])[:, None])
    expected_loss = expected.mean().item()
    path = tmp_path / "fits.txt"
    path.write_text(text)
    row = eval_json("m", "--data", str(path))
    assert row["tokens"] == len(ids) - 1
    assert row["loss"] == pytest.approx(expected_loss, abs=1e-5)
    assert row["perplexity"] == pytest.approx(math.exp(expected_loss), rel=1e-5)
    assert abs(row["loss"] - math.log(300)) > 0.5  # sharp predictions, not a uniform guess


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_sliding_window_equals_reference(
    home: Path, tmp_path: Path, char_tokenizer: Tokenizer, family: str
) -> None:
    model = make_model(home, "m", char_tokenizer, family)
    ids = char_tokenizer.encode(ENGLISH)
    assert len(ids) > 4 * CONTEXT
    path = tmp_path / "long.txt"
    path.write_text(ENGLISH)
    for stride in (CONTEXT // 2, CONTEXT, 5):
        args = ["m", "--data", str(path)]
        row = (
            eval_json(*args)
            if stride == CONTEXT // 2
            else eval_json(*args, "--stride", str(stride))
        )
        assert row["tokens"] == len(ids) - 1
        assert row["loss"] == pytest.approx(reference_loss(model, ids, stride), abs=1e-5), stride
        assert row["perplexity"] == pytest.approx(math.exp(row["loss"]), rel=1e-9)
        if stride == CONTEXT:
            assert row["loss"] == pytest.approx(chunked_loss(model, ids), abs=1e-5)
    # the reference tells windows apart: more context gives another number
    assert abs(reference_loss(model, ids, CONTEXT // 2) - chunked_loss(model, ids)) > 1e-3


def test_windows_score_each_target_once() -> None:
    for n, context, stride in [(2, 24, 12), (25, 24, 12), (26, 24, 12), (100, 24, 24), (97, 8, 3)]:
        scored = []
        for begin, end, first in windows(n, context, stride):
            assert 0 < end - begin <= context and begin < first <= end
            scored.extend(range(first, end + 1))
        assert scored == list(range(1, n))
    assert [w[:2] for w in windows(73, 24, 24)] == [(0, 24), (24, 48), (48, 72)]


@pytest.mark.shared_data("guwenguanzhi.txt")
def test_bits_per_byte_on_chinese(home: Path, tmp_path: Path) -> None:
    text = (SHARED_DATA / "guwenguanzhi.txt").read_text(encoding="utf-8")[:300]
    assert len(text.encode()) > 2.5 * len(text)  # mostly 3-byte characters
    char = Tokenizer.train_char([text[:150]])  # later characters fall back to byte tokens
    bpe = Tokenizer.train_bpe([text], vocab_size=300)
    make_model(home, "char", char)
    make_model(home, "bpe", bpe, family="modern")
    path = tmp_path / "guwen.txt"
    path.write_text(text, encoding="utf-8")
    result = run("eval", "char", "bpe", "--data", str(path), "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["model"] for r in rows] == ["char", "bpe"]
    for row, tokenizer in zip(rows, (char, bpe), strict=True):
        ids = tokenizer.encode(text)
        first = tokenizer.token_bytes(ids[0])
        assert row["tokens"] == len(ids) - 1
        assert row["bytes"] == len(text.encode()) - len(first)  # the first token is not scored
        expected = row["loss"] * row["tokens"] / (row["bytes"] * math.log(2))
        assert row["bits_per_byte"] == pytest.approx(expected, rel=1e-9)
    assert rows[0]["tokens"] != rows[1]["tokens"]  # two tokenizers, one text
    table = run("eval", "char", "bpe", "--data", str(path)).stdout
    assert "bits/byte" in table and "char" in table and "bpe" in table


def test_choice_loglikelihoods_equal_forward_passes(home: Path, char_tokenizer: Tokenizer) -> None:
    model = make_model(home, "m", char_tokenizer, "modern")
    items = [
        ChoiceItem("The fox", [" ran.", " sat", " counted the stars."], 2),
        ChoiceItem(ENGLISH[:60], [" moon", " owl"], 0),  # context longer than the window
        ChoiceItem("", ["fox", "owl"], 1),  # empty context: predicted after end of text
    ]
    got = choice_loglikelihoods(model, char_tokenizer, items)
    eot = char_tokenizer.eot_id
    assert eot is not None
    for item, lls in zip(items, got, strict=True):
        for choice, ll in zip(item.choices, lls, strict=True):
            context = char_tokenizer.encode(item.context) or [eot]
            full = context + char_tokenizer.encode(choice)
            start = max(0, len(full) - 1 - CONTEXT)  # left-truncated to one window
            expected = sum(
                token_logprob(model, full[start:p], full[p]) for p in range(len(context), len(full))
            )
            assert ll == pytest.approx(expected, abs=1e-4)


def test_choice_task_through_the_cli(home: Path, tmp_path: Path, char_tokenizer: Tokenizer) -> None:
    model = make_model(home, "m", char_tokenizer)
    lines = [
        {"context": "The fox", "choices": [" ran.", " sat", " counted the stars."], "label": 2},
        {"context": "the owl asked", "choices": [" him", " why", " a"], "label": 0},
        {"context": ENGLISH[:40], "choices": [" the moon", " tell"], "label": 1},
    ]
    path = tmp_path / "set.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    items = [ChoiceItem(d["context"], d["choices"], d["label"]) for d in lines]
    lls = choice_loglikelihoods(model, char_tokenizer, items)
    picks = [max(range(len(ll)), key=ll.__getitem__) for ll in lls]
    norm = [
        max(range(len(ll)), key=lambda j, ll=ll, item=item: ll[j] / len(item.choices[j]))
        for ll, item in zip(lls, items, strict=True)
    ]
    row = eval_json("m", "--task", "choice", "--data", str(path))
    assert set(row) == {"model", "task", "accuracy", "accuracy_norm", "examples"}
    assert row["model"] == "m" and row["task"] == "choice" and row["examples"] == 3
    assert row["accuracy"] == pytest.approx(
        sum(p == i.label for p, i in zip(picks, items, strict=True)) / 3
    )
    assert row["accuracy_norm"] == pytest.approx(
        sum(p == i.label for p, i in zip(norm, items, strict=True)) / 3
    )
    table = run("eval", "m", "m", "--task", "choice", "--data", str(path)).stdout
    assert "acc_norm" in table and len(table.strip().splitlines()) == 3


def test_choice_on_the_example_set(trained_home: Path) -> None:
    row = eval_json("--task", "choice", "--data", str(EXAMPLES / "choice.jsonl"))
    assert row["model"] == "tiny" and row["examples"] == 30
    for key in ("accuracy", "accuracy_norm"):  # a count of the 30 items, the same each run
        assert row[key] * 30 == pytest.approx(round(row[key] * 30))
    again = eval_json("--task", "choice", "--data", str(EXAMPLES / "choice.jsonl"))
    assert again["accuracy"] == row["accuracy"] and again["accuracy_norm"] == row["accuracy_norm"]


def test_progress_bar_on_a_terminal(trained_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gptcli.cli.eval as eval_cmd

    monkeypatch.setattr(eval_cmd, "stderr_is_tty", lambda: True)
    reports: list[tuple[int, int]] = []
    track = eval_cmd.EvalProgress.track

    def recording(self, description: str, unit: str):  # type: ignore[no-untyped-def]
        report = track(self, description, unit)
        assert report is not None  # a terminal gets a bar

        def both(done: int, total: int) -> None:
            reports.append((done, total))
            report(done, total)

        return both

    monkeypatch.setattr(eval_cmd.EvalProgress, "track", recording)
    result = run("eval", "--json")
    assert json.loads(result.stdout)["model"] == "tiny"  # stdout stays one clean object
    # the bar moved forward to the end of the work
    assert reports and reports[-1][0] == reports[-1][1] > 0
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_bad_choice_files(trained_home: Path, tmp_path: Path) -> None:
    good = '{"context": "a", "choices": [" b", " c"], "label": 0}'
    cases = {
        "{not json": "not valid JSON",
        '{"choices": [" b"], "label": 0}': "missing key 'context'",
        '{"context": "a", "label": 0}': "missing key 'choices'",
        '{"context": "a", "choices": [" b", " c"], "label": 2}': "label 2 is out of range",
        '{"context": "a", "choices": [" b"], "label": -1}': "label -1 is out of range",
        '{"context": "a", "choices": [], "label": 0}': "'choices' must be a non-empty list",
        '{"context": "a", "choices": [" b", ""], "label": 0}': "every choice must be a non-empty",
        '{"context": "a", "choices": [" b"], "label": "0"}': "'label' must be an integer",
        '["a", [" b"], 0]': "each line must be a JSON object",
    }
    for n, (line, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{n}.jsonl"
        path.write_text(f"{good}\n\n{line}\n{good}\n")
        args = ("eval", "--task", "choice", "--data", str(path))
        expect_error(trained_home, *args, match=f"{path}:3: {message}")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    expect_error(
        trained_home, "eval", "--task", "choice", "--data", str(empty), match="no examples"
    )


def test_eval_bad_options(trained_home: Path, corpus: Path) -> None:
    h = trained_home
    expect_error(h, "eval", "--task", "choice", match="--task choice needs --data")
    expect_error(h, "eval", "--stride", "0", match="--stride must be at least 1")
    expect_error(h, "eval", "--stride", "33", match="more than the context of tiny (32)")
    expect_error(h, "eval", "--task", "classify", match="tiny is not a classifier model")
    expect_error(h, "eval", "--task", "choice", "--data", str(corpus.parent), match="not a file")
    assert run("eval", "--task", "nope", code=2).exit_code == 2
