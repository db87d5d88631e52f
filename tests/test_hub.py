"""`gpt models pull` and `gpt models import ORG/NAME`: a Hub cache built by hand (offline), and a
stand-in Hub on 127.0.0.1 (HF_ENDPOINT) serving a tiny GPT-2, one of whose files breaks off
part way through its first download. Commands that reach the stand-in run as their own `gpt`
process, so huggingface_hub reads the environment the test gives it; the offline paths never
import huggingface_hub and run in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run
from hubfake import COMMIT, FakeHub, cache_repo, make_hf_dir, serve_hub

from gptcli.checkpoint import load_model

pytest.importorskip("huggingface_hub")

REPO = "acme/tiny-gpt2"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    return make_hf_dir(tmp_path_factory.mktemp("hub-src") / "tiny-gpt2", corpus)


def gpt(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args],
        env=clean | {"HF_HUB_DISABLE_PROGRESS_BARS": "1"} | env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def same_logits(home: Path, name: str, source: Path) -> bool:
    ids = torch.tensor([[1, 5, 9, 40, 2]])
    ours = load_model(home / "models" / name).model.eval()
    theirs = load_model(source).model.eval()
    with torch.no_grad():
        return torch.equal(ours(ids)[0], theirs(ids)[0])


def test_pull_and_import_from_an_offline_cache(
    source: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hf" / "hub"
    cache_repo(cache, REPO, source)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    summary = json.loads(run("models", "pull", REPO, "--json").stdout)
    assert summary["name"] == "tiny-gpt2"  # the repo's last part
    assert summary["source"] == f"hf:{REPO}@{COMMIT}"
    assert same_logits(home, "tiny-gpt2", source)
    # import ORG/NAME reads the same cache (HF_HOME/hub this time), offline
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    run("models", "import", REPO, "--name", "again")
    assert same_logits(home, "again", source)


def test_a_directory_of_the_repo_path_wins(
    source: Path, corpus: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    cache_repo(cache, REPO, source)
    local = make_hf_dir(tmp_path / "cwd" / "acme" / "tiny-gpt2", corpus, seed=1)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path / "cwd")
    summary = json.loads(run("models", "import", REPO, "--json").stdout)
    assert summary["source"] == str(local.resolve())
    assert same_logits(home, "tiny-gpt2", local)
    assert not same_logits(home, "tiny-gpt2", source)


def test_offline_and_not_cached_is_one_line(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    done = run("models", "pull", "acme/absent", code=1)
    assert done.stderr.count("\n") == 1
    assert "acme/absent is not in the Hugging Face cache" in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr
    done = run("models", "import", "acme/absent", code=1)
    assert done.stderr.count("\n") == 1
    assert "gpt models pull acme/absent" in done.stderr
    assert not (home / "models").exists() or not any((home / "models").iterdir())


@pytest.fixture(scope="module")
def big_source(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """Over huggingface_hub's 10 MiB download chunk, so a retry resumes after the first."""
    directory = tmp_path_factory.mktemp("hub-big") / "tiny-gpt2"
    return make_hf_dir(directory, corpus, n_embd=256, n_layer=4)


def test_pull_from_a_stand_in_hub_survives_a_dropped_connection(
    big_source: Path, home: Path, tmp_path: Path
) -> None:
    source = big_source
    hub = FakeHub()
    hub.add(REPO, source)
    hub.repos[REPO]["pytorch_model.bin"] = b"not to be fetched"
    hub.repos[REPO]["flax_model.msgpack"] = b"not to be fetched"
    hub.drop.add("model.safetensors")
    hf_home = tmp_path / "hf"
    with serve_hub(hub):
        env = {
            "GPTCLI_HOME": str(home),
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(hf_home),
            "HF_TOKEN": "hf_test_token",
        }
        done = gpt("models", "pull", REPO, "--name", "fetched", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["source"] == f"hf:{REPO}@{COMMIT}"
    assert same_logits(home, "fetched", source)
    fetched = {p for _, p, _ in hub.requests if "/resolve/" in p}
    names = {p.rsplit("/", 1)[-1] for p in fetched}
    assert names == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("model.safetensors")]
    assert ranges == ["", f"bytes={10 * 1024 * 1024}-"]  # broken off, resumed after 10 MiB
    assert "Bearer hf_test_token" in hub.tokens  # HF_TOKEN
    shown = gpt("models", "show", "fetched", "--json", env=env)
    assert f"hf:{REPO}@{COMMIT}" in shown.stdout
    # the cache now has it: offline, the same pull needs no server
    env = {"GPTCLI_HOME": str(home), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = gpt("models", "pull", REPO, "--name", "offline", env=env)
    assert done.returncode == 0, done.stderr
    assert same_logits(home, "offline", source)


def test_pull_refuses_pickle_other_architectures_and_missing_repos(
    source: Path, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read once, at its import
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    hub = FakeHub()
    hub.add("acme/pickled", source, skip=("model.safetensors",))
    hub.repos["acme/pickled"]["pytorch_model.bin"] = b"\x80\x04pickle"
    hub.add("acme/llama", source)
    config = json.loads(hub.repos["acme/llama"]["config.json"]) | {"model_type": "llama"}
    hub.repos["acme/llama"]["config.json"] = json.dumps(config).encode()
    with serve_hub(hub):
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        pickled = run("models", "pull", "acme/pickled", code=None)
        llama = run("models", "pull", "acme/llama", code=None)
        missing = run("models", "pull", "acme/nothing", code=None)
    for done in (pickled, llama, missing):
        assert done.exit_code == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "only pickle weights (pytorch_model.bin)" in pickled.stderr
    assert "arbitrary code" in pickled.stderr
    assert "llama" in llama.stderr
    assert "acme/nothing" in missing.stderr
    files = {p.rsplit("/", 1)[-1] for _, p, _ in hub.requests if "/resolve/" in p}
    assert "pytorch_model.bin" not in files
    assert not any("llama/resolve" in p and p.endswith(".safetensors") for _, p, _ in hub.requests)
    assert not (home / "models").exists() or not any((home / "models").iterdir())


def test_pull_names_bad_repo_references(home: Path) -> None:
    for bad in ("gpt2", "a/b/c", "../x", "org/name@"):
        done = run("models", "pull", bad, code=1)
        assert "expected ORG/NAME[@REVISION]" in done.stderr, bad


def test_pull_without_huggingface_hub_is_one_line_hint(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    done = run("models", "pull", REPO, code=1)
    assert done.stderr.strip() == (
        'error: downloading models needs huggingface_hub: pip install "gptcli[hub]"'
    )
