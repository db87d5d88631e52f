"""The Python API: `gptcli.load()` gives the text `gpt generate` prints, streams it in the same
pieces, scores as `gpt eval` does, and raises GptError with the CLI's messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run

import gptcli
from gptcli.errors import GptError


def test_import_gptcli_does_not_import_torch() -> None:
    code = "import sys, gptcli; assert callable(gptcli.load); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_generate_equals_the_cli(trained_home: Path) -> None:
    model = gptcli.load("tiny", dtype="float32")
    assert model.name == "tiny" and model.config.block_size == 32
    assert model.tokenizer.decode(model.tokenizer.encode("Once")) == "Once"
    cli = json.loads(
        run(
            "generate",
            "Once",
            "-m",
            "tiny",
            "-n",
            "40",
            "--seed",
            "3",
            "--dtype",
            "float32",
            "--json",
        ).stdout
    )["text"]
    assert model.generate("Once", max_new_tokens=40, seed=3) == cli
    greedy = model.generate("Once", 40, temperature=0)
    cli_greedy = json.loads(
        run(
            "generate",
            "Once",
            "-m",
            "tiny",
            "-n",
            "40",
            "--temperature",
            "0",
            "--dtype",
            "float32",
            "--json",
        ).stdout
    )["text"]
    assert greedy == cli_greedy


def test_stream_pieces_join_to_generate_and_honour_stop(trained_home: Path) -> None:
    model = gptcli.load(dtype="float32")  # the default model
    pieces = list(model.stream("Once", 60, seed=5))
    assert len(pieces) > 1 and "".join(pieces) == model.generate("Once", 60, seed=5)
    whole = model.generate("Once", 60, seed=5, ignore_eos=True)
    stop = whole[10:12]
    cut = model.generate("Once", 60, seed=5, ignore_eos=True, stop=[stop])
    assert cut == whole[: whole.index(stop)] and stop not in cut


def test_score_equals_gpt_eval(trained_home: Path, tmp_path: Path) -> None:
    text = "Once upon a time there was a little cat who liked to sleep in the sun. " * 3
    data = tmp_path / "text.txt"
    data.write_text(text, encoding="utf-8")
    shown = json.loads(run("eval", "tiny", "--data", str(data), "--json").stdout)
    assert gptcli.load("tiny", dtype="float32").score(text) == pytest.approx(shown["loss"])


def test_errors_are_gpt_errors(trained_home: Path, tmp_path: Path) -> None:
    with pytest.raises(GptError, match="unknown model 'nope'"):
        gptcli.load("nope")
    with pytest.raises(GptError, match="unknown dtype"):
        gptcli.load("tiny", dtype="int4")
    model = gptcli.load("tiny")
    with pytest.raises(GptError, match="temperature"):
        model.generate("Once", 5, temperature=-1)
    with pytest.raises(GptError, match="unknown sampling setting"):
        model.generate("Once", 5, temprature=0.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GptError, match=r"no config\.json"):
        gptcli.load(str(empty))
