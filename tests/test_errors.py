"""Bad input gets one line `error: ...`, exit code 1, and changes nothing in the store."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY, run, snapshot


def expect_error(home: Path, *args: str, match: str, input: str | bytes | None = None) -> None:
    before = snapshot(home) if home.exists() else {}
    result = run(*args, input=input, code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert (snapshot(home) if home.exists() else {}) == before


def test_train_bad_inputs(trained_home: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café crème brûlée".encode("latin-1") * 10)
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    corpus = tmp_path / "ok.txt"
    corpus.write_text("some words to train on. " * 50)
    h = trained_home
    expect_error(h, "train", str(tmp_path / "missing.txt"), match="no such file")
    expect_error(h, "train", str(empty), match="empty")
    expect_error(h, "train", str(latin1), match="not UTF-8")
    expect_error(h, "train", str(binary), match="binary")
    expect_error(h, "train", str(tmp_path / "nothing-here"), match="no such file")
    expect_error(h, "train", str(corpus), "--name", "tiny", *TINY, match="already exists")
    expect_error(h, "train", str(corpus), "--max-time", "soon", match="duration")
    expect_error(h, "train", str(corpus), "--max-steps", "0", match="--max-steps")
    expect_error(h, "train", str(corpus), "--lr", "-1", match="--lr")
    expect_error(h, "train", str(corpus), "--preset", "huge", match="unknown preset")
    expect_error(h, "train", str(corpus), "--name", "../escape", match="invalid name")
    expect_error(h, "train", str(corpus), "--tokenizer", "nope", match="unknown tokenizer")
    expect_error(h, "train", str(corpus), "--val-fraction", "1.5", match="--val-fraction")
    expect_error(h, "train", str(corpus), "--device", "tpu", match="unknown device")


def test_generate_bad_inputs(trained_home: Path) -> None:
    h = trained_home
    expect_error(h, "generate", "hi", "--temperature", "-0.5", match="--temperature")
    expect_error(h, "generate", "hi", "--top-p", "0", match="--top-p")
    expect_error(h, "generate", "hi", "--top-p", "1.5", match="--top-p")
    expect_error(h, "generate", "hi", "--top-k", "0", match="--top-k")
    expect_error(h, "generate", "hi", "-n", "-3", match="--max-new-tokens")
    expect_error(h, "generate", "hi", "-m", "no-such-model", match="unknown model")
    expect_error(h, "generate", "-", match="not UTF-8", input=b"\xff\xfe\xfa")
    expect_error(h, "eval", "no-such-model", match="unknown model")
    expect_error(h, "eval", "--data", "/no/such/file.txt", match="no such file")
    expect_error(h, "tokenize", "decode", "1", "x", "-m", "tiny", match="whole numbers")
    expect_error(h, "tokenize", "decode", "999999", "-m", "tiny", match="out of range")
    expect_error(h, "models", "rm", "no-such-model", match="no model named")
    expect_error(h, "models", "default", "no-such-model", match="no model named")


def test_no_model_yet(home: Path) -> None:
    expect_error(home, "generate", "Once upon a time", match="run `gpt train")
    expect_error(home, "eval", match="run `gpt train")


def test_corrupted_weights_are_reported(home: Path, corpus: Path) -> None:
    run("train", str(corpus), "--name", "victim", "--tokenizer", "char", "--max-steps", "2", *TINY)
    weights = home / "models" / "victim" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    expect_error(home, "generate", "x", "-m", "victim", match="model.safetensors")
    (home / "models" / "victim" / "config.json").write_text('{"n_layer": -2}')
    expect_error(home, "generate", "x", "-m", "victim", match="config")


def test_usage_errors_exit_2(home: Path) -> None:
    result = run("generate", "--no-such-flag", code=2)
    assert "Traceback" not in result.output
    run("train", code=2)  # missing FILE argument


@pytest.mark.parametrize("flag", ["--temperature", "--top-p"])
def test_non_numeric_flag_is_a_usage_error(home: Path, flag: str) -> None:
    run("generate", "hi", flag, "warm", code=2)
