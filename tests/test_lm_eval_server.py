"""Unmodified lm-evaluation-harness (`lm_eval --model local-completions`) against a real
`gpt serve` on 127.0.0.1: a local multiple-choice task scores the same accuracy and acc_norm as
`gpt eval --task choice` on the same items, tokenized by the server (`tokenizer_backend=remote`)
and offline (no dataset, tokenizer or model from the Hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run
from harnesstask import TASK, offline_env, write_task
from hubfake import make_hf_dir

pytest.importorskip("lm_eval")
pytest.importorskip("uvicorn")
from test_serve import Served


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    from gptcli.checkpoint import load_model, write_model_dir

    home = tmp_path_factory.mktemp("lm-eval-store")
    source = make_hf_dir(tmp_path_factory.mktemp("lm-eval-hf") / "bpe", corpus)
    loaded = load_model(source)
    write_model_dir(home / "models" / "bpe", loaded.model, loaded.tokenizer)
    return home


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Served]:
    served = Served(store, "-m", "bpe", "--dtype", "float32")
    yield served
    assert served.stop() == 0


def lm_eval_results(args: list[str], cwd: Path) -> tuple[dict, dict[str, list[float]]]:
    """lm_eval's metrics for the task, and the log-likelihood it got for each item's choices
    (by context)."""
    out = cwd / "results"
    env = os.environ | offline_env() | {"HF_HOME": str(cwd / "hf")}
    done = subprocess.run(
        [sys.executable, "-m", "lm_eval", "run", *args, "--output_path", str(out), "--log_samples"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(out.rglob("results_*.json"))
    assert files, done.stderr[-3000:]
    samples = sorted(out.rglob(f"samples_{TASK}_*.jsonl"))
    lls = {}
    for line in samples[-1].read_text().splitlines():
        sample = json.loads(line)
        lls[sample["doc"]["context"]] = [float(resp[0][0]) for resp in sample["resps"]]
    return json.loads(files[-1].read_text())["results"][TASK], lls


def test_lm_eval_against_gpt_serve_matches_gpt_eval(
    server: Served, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonl, tasks = write_task(tmp_path)
    monkeypatch.setenv("GPTCLI_HOME", str(store))
    ours = json.loads(run("eval", "bpe", "--task", "choice", "--data", str(jsonl), "--json").stdout)
    model_args = ",".join(
        [
            "model=bpe",
            f"base_url={server.url}/v1/completions",
            "tokenizer_backend=remote",
            "tokenized_requests=True",
            "max_length=64",
            "num_concurrent=1",
            "max_retries=1",
        ]
    )
    theirs, their_lls = lm_eval_results(
        [
            "--model",
            "local-completions",
            "--model_args",
            model_args,
            "--tasks",
            TASK,
            "--include_path",
            str(tasks),
            "--batch_size",
            "4",
        ],
        tmp_path,
    )
    assert ours["examples"] == 12
    assert theirs["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    assert theirs["acc_norm,none"] == pytest.approx(ours["accuracy_norm"], abs=1e-9)
    # choice by choice, the log-likelihoods are gpt eval's to 1e-4
    from gptcli.checkpoint import load_model
    from gptcli.evaluate import choice_loglikelihoods, read_choice_file

    loaded = load_model(store / "models" / "bpe")
    items = read_choice_file(jsonl)
    expected = choice_loglikelihoods(loaded.model, loaded.tokenizer, items)
    for item, lls in zip(items, expected, strict=True):
        assert their_lls[item.context] == pytest.approx(lls, abs=1e-4)
