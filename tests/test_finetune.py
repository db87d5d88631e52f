"""`gpt finetune`: text, chat and classify tasks, LoRA, and the base left untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, run, snapshot
from safetensors.torch import load_file

FAST = ["--batch-size", "8", "--eval-every", "10", "--quiet", "--json"]


def model_files(home: Path, name: str) -> dict:
    return snapshot(home / "models" / name)


def test_text_finetune_keeps_base_and_learns(base_home: Path, tmp_path: Path) -> None:
    before = model_files(base_home, "tiny")
    text = tmp_path / "more.txt"
    text.write_text("The owl said hoo. The owl said hoo again. " * 300)
    out = json.loads(
        run("finetune", "tiny", str(text), "--name", "owl", "--max-steps", "30", *FAST).stdout
    )
    assert out["task"] == "text" and out["steps"] == 30
    history = json.loads((base_home / "models/owl/train.json").read_text())["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5
    assert model_files(base_home, "tiny") == before
    info = json.loads((base_home / "models/owl/train.json").read_text())
    assert info["kind"] == "finetune" and info["base"]["name"] == "tiny"
    assert run("models", "default").stdout.strip() == "owl"


def test_chat_finetune_adds_template_and_chats(base_home: Path) -> None:
    out = json.loads(
        run(
            "finetune",
            "tiny",
            str(EXAMPLES / "chat.jsonl"),
            "--name",
            "talk",
            "--max-steps",
            "20",
            *FAST,
        ).stdout
    )
    assert out["task"] == "chat"
    model_dir = base_home / "models" / "talk"
    assert json.loads((model_dir / "chat_template.json").read_text())["type"] == "special"
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    added = {t["content"] for t in tokenizer["added_tokens"]}
    assert {"<|user|>", "<|assistant|>", "<|end|>", "<|system|>"} <= added
    config = json.loads((model_dir / "config.json").read_text())
    base_config = json.loads((base_home / "models/tiny/config.json").read_text())
    assert config["vocab_size"] == base_config["vocab_size"] + 4
    weights = load_file(str(model_dir / "model.safetensors"))
    base = load_file(str(base_home / "models/tiny/model.safetensors"))
    old = base_config["vocab_size"]
    assert weights["transformer.wte.weight"].shape[0] == old + 4  # their start: test_chat_tuning
    assert base["transformer.wte.weight"].shape[0] == old
    result = run("chat", "-m", "talk", "-n", "5", "--seed", "1", "--json", input="Hello there\n")
    reply = json.loads(result.stdout)  # a 20-step model may well answer in blank lines
    assert reply["user"] == "Hello there" and reply["generated_tokens"] >= 1
    assert reply["finish"] in ("stop", "length")


def test_masked_batch_has_zero_loss_not_nan() -> None:
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    model = GPT(
        ModelConfig(family="modern", vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16)
    )
    x = torch.randint(0, 50, (2, 8))
    _, loss = model(x, torch.full((2, 8), -100))
    assert loss is not None and loss.item() == 0.0


def test_classify_finetune_eval_and_classify(base_home: Path) -> None:
    train = EXAMPLES / "sentiment.jsonl"
    test = EXAMPLES / "sentiment-test.jsonl"
    out = json.loads(
        run(
            "finetune",
            "tiny",
            str(train),
            "--name",
            "mood",
            "--max-steps",
            "40",
            "--lr",
            "3e-3",
            "--muon-lr",
            "0.02",
            *FAST,
        ).stdout
    )
    assert out["task"] == "classify"
    config = json.loads((base_home / "models/mood/config.json").read_text())
    assert config["labels"] == ["negative", "positive"]
    scored = json.loads(
        run("eval", "mood", "--task", "classify", "--data", str(test), "--json").stdout
    )
    confusion = scored["confusion"]
    assert scored["examples"] == 40 and sum(map(sum, confusion)) == 40
    assert scored["accuracy"] == pytest.approx((confusion[0][0] + confusion[1][1]) / 40)
    assert set(scored["per_label"]) == {"negative", "positive"}
    table = run("eval", "mood", "--task", "classify", "--data", str(test)).stdout
    assert "accuracy" in table and "precision" in table
    one = json.loads(run("classify", "What a lovely sunny day", "-m", "mood", "--json").stdout)
    assert one["label"] in ("negative", "positive")
    assert abs(sum(one["probabilities"].values()) - 1.0) < 1e-5
    lines = run("classify", "-m", "mood", input="a happy day\na sad day\n").stdout.splitlines()
    assert len(lines) == 2 and all(
        line.split("\t")[0] in ("negative", "positive") for line in lines
    )
    # a plain language model is not a classifier
    result = run("classify", "hello", "-m", "tiny", code=1)
    assert "not a classifier" in result.stderr


def test_lora_merges_and_freezes_the_rest(base_home: Path, tmp_path: Path) -> None:
    text = tmp_path / "more.txt"
    text.write_text("A kite flew over the hill. " * 300)
    run(
        "finetune",
        "tiny",
        str(text),
        "--name",
        "kite",
        "--lora",
        "4",
        "--max-steps",
        "15",
        "--lr",
        "1e-2",
        *FAST,
    )
    tuned = load_file(str(base_home / "models/kite/model.safetensors"))
    base = load_file(str(base_home / "models/tiny/model.safetensors"))
    assert set(tuned) == set(base)  # adapters merged: same tensors as any model
    assert torch.equal(tuned["transformer.wte.weight"], base["transformer.wte.weight"])
    changed = [k for k in base if not torch.equal(tuned[k], base[k])]
    assert changed and all(
        k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) for k in changed
    )
    run("generate", "A kite", "-m", "kite", "-n", "5")


def test_finetune_bad_inputs(base_home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": "a"}\n{"text": "broken"\n')
    before = snapshot(base_home)
    for args, message in [
        (["tiny", str(bad), "--name", "x", "--task", "classify"], "bad.jsonl:2"),
        (["tiny", str(EXAMPLES / "chat.jsonl"), "--name", "tiny"], "must differ"),
        (["nope", str(EXAMPLES / "chat.jsonl"), "--name", "x"], "unknown model"),
        (["tiny", str(EXAMPLES / "chat.jsonl"), "--name", "x", "--task", "poem"], "unknown task"),
        (["tiny", str(EXAMPLES / "chat.jsonl"), "--name", "x", "--lora", "0"], "--lora"),
    ]:
        result = run("finetune", *args, code=1)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert snapshot(base_home) == before
