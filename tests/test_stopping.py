"""Stopping and penalties, end to end: models whose weights make greedy decoding emit a chosen
chain of tokens (end-of-text, `<|end|>`, a stop string), and greedy generation with penalties
against a reference loop that applies the README's rule."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, run
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from gptcli.checkpoint import load_model
from gptcli.tokenizer import EOT, Tokenizer

GREEDY = ["--temperature", "0", "--dtype", "float32"]


def token_id(tokenizer: Tokenizer, token: str) -> int:
    special = tokenizer.hf.token_to_id(token)
    if special is not None and len(token) > 1:
        return special
    (only,) = tokenizer.encode(token)
    return only


def chain_model(source: Path, target: Path, chain: list[str]) -> None:
    """A copy of the model at `source` whose greedy next token after chain[i] is chain[i + 1].

    The blocks add nothing (their output projections are zero), so the last hidden state is the
    normed embedding of the last token (normed twice with plain norms: the same direction);
    each chain token's embedding is its own unit vector, and the head maps that vector to the
    next token of the chain (a repeated token must repeat its successor: the chain may be a
    cycle)."""
    shutil.copytree(source, target)
    tokenizer = Tokenizer.load(target / "tokenizer.json")
    path = str(target / "model.safetensors")
    weights = load_file(path)
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata()
    for key in weights:
        if key.endswith("c_proj.weight"):
            weights[key].zero_()
    if "transformer.ln_f.weight" in weights:  # a model with norm gains
        weights["transformer.ln_f.weight"].fill_(1.0)
    wte, head = weights["transformer.wte.weight"], weights["lm_head.weight"]
    head.zero_()
    ids = [token_id(tokenizer, t) for t in chain]
    slots: dict[int, int] = {}
    for here, after in pairwise(ids):
        slot = slots.setdefault(here, len(slots))
        wte[here] = torch.nn.functional.one_hot(torch.tensor(slot), wte.shape[1]).float()
        head[after].zero_()
        head[after, slot] = 1.0
    save_file(weights, path, metadata=metadata)


@pytest.fixture
def store(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    return home


def generate(*args: str) -> str:
    return json.loads(run("generate", *args, *GREEDY, "--json").stdout)["text"]


def test_generation_stops_at_end_of_text_and_stop_strings(store: Path) -> None:
    models = store / "models"
    chain_model(models / "tiny", models / "eot", ["x", "a", "b", EOT, "c", "d"])
    assert generate("x", "-m", "eot", "-n", "10") == "ab"
    assert generate("x", "-m", "eot", "-n", "10", "--ignore-eos").startswith("ab")
    assert "cd" in generate("x", "-m", "eot", "-n", "10", "--ignore-eos")
    chain_model(models / "tiny", models / "abc", ["x", "a", "b", "c", "d", "e", "f"])
    assert generate("x", "-m", "abc", "-n", "6") == "abcdef"
    assert generate("x", "-m", "abc", "-n", "10", "--stop", "cd") == "ab"
    out = run("generate", "x", "-m", "abc", "-n", "10", "--stop", "de", *GREEDY).stdout
    assert out == "xabc\n", out  # streamed: the prompt, the text up to the stop string


def chat_turn(model: str, *args: str) -> dict:
    out = run("chat", "-m", model, "--json", *GREEDY, *args, input="hello there\n").stdout
    return json.loads(out)


def test_chat_reply_stops_at_end_token(store: Path) -> None:
    run(
        "finetune", "tiny", str(EXAMPLES / "chat.jsonl"), "--name", "talk", "--max-steps", "1",
        "--batch-size", "2", "--quiet",
    )  # fmt: skip
    models = store / "models"
    chain_model(models / "talk", models / "ender", ["\n", "o", "k", "<|end|>", "z", "q"])
    turn = chat_turn("ender", "-n", "20")
    assert turn["reply"] == "ok" and turn["finish"] == "stop", turn
    turn = chat_turn("ender", "-n", "2")
    assert turn["reply"] == "ok" and turn["finish"] == "length", turn


def test_plain_chat_reply_stops_at_the_next_user_turn(store: Path) -> None:
    models = store / "models"
    cycle = [":", " ", "o", "k", "\n", "U", "s", "e", "r", ":"]
    chain_model(models / "tiny", models / "plain", cycle)
    turn = chat_turn("plain", "-n", "30")
    assert turn["reply"] == "ok" and turn["finish"] == "stop", turn


def reference(
    model_dir: Path, prompt: str, steps: int, repetition: float, presence: float, frequency: float
) -> str:
    """Greedy decoding, the README's way: the repetition penalty on every token of the prompt
    and the text so far (CTRL: divide positive logits, multiply negative ones), presence and
    frequency penalties on the generated tokens only. No cache: the whole text each step."""
    loaded = load_model(model_dir)
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    ids = tokenizer.encode(prompt)
    generated: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids + generated]))[0][0, -1].double()
            for token in set(ids + generated):
                value = logits[token]
                logits[token] = value / repetition if value > 0 else value * repetition
            for token, count in Counter(generated).items():
                logits[token] -= presence + frequency * count
            generated.append(int(logits.argmax()))
    return tokenizer.decode(generated)


@pytest.mark.parametrize(
    ("repetition", "presence", "frequency"),
    [(1.8, 0.0, 0.0), (1.0, 1.5, 0.0), (1.0, 0.0, 0.6), (1.3, 0.5, 0.4)],
)
def test_greedy_penalties_follow_the_readme_rule(
    trained_home: Path, repetition: float, presence: float, frequency: float
) -> None:
    prompt = "the cat and the"  # with the text, within the context of 32
    flags = [
        "--repetition-penalty", str(repetition),
        "--presence-penalty", str(presence),
        "--frequency-penalty", str(frequency),
    ]  # fmt: skip
    text = generate(prompt, "-m", "tiny", "-n", "16", *flags)
    plain = generate(prompt, "-m", "tiny", "-n", "16")
    expected = reference(trained_home / "models/tiny", prompt, 16, repetition, presence, frequency)
    assert text == expected and text != plain


def test_min_p_one_keeps_only_the_likeliest_token(trained_home: Path) -> None:
    prompt = "Once upon a"
    greedy = generate(prompt, "-m", "tiny", "-n", "30")
    sampled = ["--temperature", "1.5", "--seed", "3", "--dtype", "float32", "--json"]
    text = json.loads(run("generate", prompt, "-m", "tiny", "-n", "30", *sampled).stdout)["text"]
    assert text != greedy  # sampling at this temperature wanders...
    kept = json.loads(
        run("generate", prompt, "-m", "tiny", "-n", "30", *sampled, "--min-p", "1").stdout
    )["text"]
    assert kept == greedy  # ...unless min-p 1 keeps only the likeliest token
