"""`gpt eval --harness`: lm-evaluation-harness in-process on our model (local task YAMLs,
offline), number for number with `gpt eval --task choice`; the adapter's rolling log-likelihood
and generation against our own computations; and `lm_eval --model hf` on the transformers
directory `gpt models export` writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run
from harnesstask import TASK, offline_env, write_task
from hubfake import make_hf_dir

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    from gptcli.checkpoint import load_model, write_model_dir

    home = tmp_path_factory.mktemp("harness-store")
    source = make_hf_dir(tmp_path_factory.mktemp("harness-hf") / "bpe", corpus)
    loaded = load_model(source)
    write_model_dir(home / "models" / "bpe", loaded.model, loaded.tokenizer)
    return home


def gpt(*args: str, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | offline_env() | {"GPTCLI_HOME": str(home), "HF_HOME": str(cwd / "hf")}
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_harness_in_process_matches_gpt_eval(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jsonl, tasks = write_task(tmp_path)
    monkeypatch.setenv("GPTCLI_HOME", str(store))
    ours = json.loads(run("eval", "bpe", "--task", "choice", "--data", str(jsonl), "--json").stdout)
    done = gpt(
        "eval",
        "bpe",
        "--harness",
        TASK,
        "--include-path",
        str(tasks),
        "--json",
        home=store,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["model"] == "bpe"
    metrics = result["results"][TASK]
    assert metrics["acc,none"] == pytest.approx(ours["accuracy"], abs=1e-9)
    assert metrics["acc_norm,none"] == pytest.approx(ours["accuracy_norm"], abs=1e-9)
    assert result["n-samples"][TASK]["effective"] == 12
    # --limit, and lm-eval's own table without --json
    done = gpt(
        "eval",
        "bpe",
        "--harness",
        TASK,
        "--include-path",
        str(tasks),
        "--limit",
        "5",
        "--num-fewshot",
        "1",
        home=store,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "acc_norm" in done.stdout and "|Tasks" in done.stdout.replace(" ", "")


def test_harness_refusals_are_one_line(store: Path, tmp_path: Path) -> None:
    _, tasks = write_task(tmp_path)
    missing = gpt("eval", "bpe", "--harness", "no_such_task", home=store, cwd=tmp_path)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "error: no lm-evaluation-harness task named 'no_such_task' (see `lm-eval ls tasks`; "
        "a local task YAML needs --include-path DIR)"
    ]
    uncached = tasks / "uncached.yaml"
    yaml = (tasks / f"{TASK}.yaml").read_text().replace(f"task: {TASK}", "task: uncached")
    start = yaml.index("dataset_path")
    end = yaml.index("test_split")
    uncached.write_text(yaml[:start] + "dataset_path: acme/not-in-the-cache\n" + yaml[end:])
    done = gpt(
        "eval",
        "bpe",
        "--harness",
        "uncached",
        "--include-path",
        str(tasks),
        home=store,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the data of uncached could not be")
    assert "offline" in lines[0]
    both = gpt("eval", "bpe", "--harness", TASK, "--data", "x.txt", home=store, cwd=tmp_path)
    assert both.returncode == 1 and "no --data" in both.stderr


def test_missing_lm_eval_is_one_line_hint(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTCLI_HOME", str(store))
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    result = run("eval", "bpe", "--harness", "hellaswag", code=1)
    assert result.stderr.strip() == (
        'error: gpt eval --harness needs lm-evaluation-harness: pip install "gptcli[harness]"'
    )


class Request:
    def __init__(self, *args: object) -> None:
        self.args = args


def test_adapter_rolling_and_generation_are_ours(store: Path) -> None:
    import torch

    from gptcli.harness import make_model
    from gptcli.inference.api import Model
    from gptcli.inference.loader import load

    loaded = load(str(store / "models" / "bpe"), "cpu", "float32")
    lm = make_model(loaded)
    tok, model = loaded.tokenizer, loaded.model
    text = "Once upon a time there was a little fox who liked to run. " * 6  # past the context
    ids = tok.encode(text)
    assert len(ids) > 64
    # rolling: every token once, the first after end-of-text, each window after the last
    expected, seq, done = 0.0, [tok.eot_id, *ids], 0
    with torch.no_grad():
        while done < len(ids):
            end = min(len(ids), done + 64)
            window = seq[max(0, end - 64) : end + 1]
            logits, _ = model(torch.tensor([window[:-1]]))
            logprobs = torch.log_softmax(logits[0].float(), -1)
            n = end - done
            targets = torch.tensor(window[-n:])
            expected += logprobs[-n:].gather(1, targets[:, None]).sum().item()
            done = end
    (got,) = lm.loglikelihood_rolling([Request(text)])
    assert math.isclose(got, expected, rel_tol=1e-6)
    # generation: greedy, cut at the first stop string, as gptcli.load().generate gives it
    free = Model(loaded).generate("Once upon a time", 20, temperature=0, seed=1234)
    stop = free[5:7]
    (out,) = lm.generate_until([Request("Once upon a time", {"until": [stop], "max_gen_toks": 20})])
    assert out == free[: free.index(stop)]
    # loglikelihood: the continuation's log-probability, and whether greedy decoding gives it
    context = tok.encode("The fox")
    with torch.no_grad():
        logits, _ = model(torch.tensor([context]))
    logprobs = torch.log_softmax(logits[0, -1].float(), -1)
    ranked = logprobs.argsort(descending=True).tolist()
    # tokens that encode back to themselves after the context: the likeliest and the least
    fits = [t for t in ranked if tok.encode("The fox" + tok.decode([t])) == [*context, t]]
    best, worst = fits[0], fits[-1]
    (ll, is_greedy), (ll2, not_greedy) = lm.loglikelihood(
        [Request("The fox", tok.decode([best])), Request("The fox", tok.decode([worst]))]
    )
    assert is_greedy == (best == ranked[0]) and not not_greedy
    assert ll == pytest.approx(logprobs[best].item(), abs=1e-5)
    assert ll2 == pytest.approx(logprobs[worst].item(), abs=1e-5)


def test_lm_eval_hf_on_the_exported_directory(store: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate", reason="lm_eval --model hf needs lm-eval[hf]")
    jsonl, tasks = write_task(tmp_path)
    exported = tmp_path / "bpe-hf"
    done = gpt("models", "export", "bpe", str(exported), home=store, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ours = gpt(
        "eval", "bpe", "--task", "choice", "--data", str(jsonl), "--json", home=store, cwd=tmp_path
    )
    assert ours.returncode == 0, ours.stderr
    expected = json.loads(ours.stdout)
    out = tmp_path / "results"
    env = os.environ | offline_env() | {"HF_HOME": str(tmp_path / "hf")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "run",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={exported},dtype=float32",
            "--device",
            "cpu",
            "--tasks",
            TASK,
            "--include_path",
            str(tasks),
            "--output_path",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(sorted(out.rglob("results_*.json"))[-1].read_text())["results"][TASK]
    assert results["acc,none"] == pytest.approx(expected["accuracy"], abs=1e-9)
    assert results["acc_norm,none"] == pytest.approx(expected["accuracy_norm"], abs=1e-9)
