"""Shared fixtures: an isolated store, a small corpus, one tiny trained model, a CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Before torch loads (here and in every subprocess a test starts): OpenMP threads that spin
# while they wait lose their core on a shared machine and slow every step many times over.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One build of the native decode step for the whole session (and its subprocesses), outside
# the stores the tests make and outside the user's own store.
os.environ.setdefault("GPTCLI_KERNELS", tempfile.mkdtemp(prefix="gptcli-kernels-"))
# `gpt chat` logs by default: never into the user's own log (tests that read it set their own).
os.environ["GPTCLI_LOGS"] = tempfile.mkdtemp(prefix="gptcli-logs-")
os.environ.pop("GPTCLI_NO_LOG", None)

import pytest
from typer.testing import CliRunner

from gptcli.cli import app

# Data sets too large to ship, shared with the benchmarks: $GPTCLI_SHARED_DATA, or a `shared/data`
# folder beside the checkout. Tests that read them carry `@pytest.mark.shared_data("FILE")` and
# skip, saying why, when the file is absent (a clone on its own); `pytest -m shared_data` runs
# just those.
SHARED_DATA = Path(
    os.environ.get("GPTCLI_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

TINY = [
    "--preset",
    "tiny",
    "--block-size",
    "32",
    "--batch-size",
    "8",
    "--eval-every",
    "20",
    "--quiet",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "shared_data(name, ...): reads these files from SHARED_DATA; skips without them"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("shared_data"):
        for name in mark.args:
            if not (SHARED_DATA / name).is_file():
                pytest.skip(f"{name} is not in {SHARED_DATA} (set GPTCLI_SHARED_DATA)")


def run(*args: str, input: str | bytes | None = None, code: int | None = 0):  # type: ignore[no-untyped-def]
    """Runs `gpt ARGS` in-process; checks the exit code unless `code` is None."""
    result = CliRunner().invoke(app, list(args), input=input)
    if code is not None and result.exit_code != code:
        raise AssertionError(
            f"gpt {' '.join(args)} exited {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\n{result.exception!r}"
        )
    return result


def snapshot(home: Path) -> dict[str, float]:
    """Every file in the store with its size and mtime, to prove nothing changed."""
    return {
        str(p.relative_to(home)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in home.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "store"
    monkeypatch.setenv("GPTCLI_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 30 KB of simple, repetitive prose a tiny model learns quickly."""
    stories = sorted((EXAMPLES / "stories").glob("*.txt"))
    text = "".join(p.read_text(encoding="utf-8") for p in stories[:5])
    path = tmp_path_factory.mktemp("corpus") / "stories.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> dict:
    """One tiny char model, trained once for the whole session in its own store."""
    store = tmp_path_factory.mktemp("trained-store")
    old = os.environ.get("GPTCLI_HOME")
    os.environ["GPTCLI_HOME"] = str(store)
    try:
        result = run(
            "train",
            str(corpus),
            "--name",
            "tiny",
            "--tokenizer",
            "char",
            "--max-steps",
            "60",
            "--json",
            *TINY,
        )
    finally:
        if old is None:
            os.environ.pop("GPTCLI_HOME", None)
        else:
            os.environ["GPTCLI_HOME"] = old
    return {"home": store, "summary": json.loads(result.stdout)}


@pytest.fixture
def trained_home(trained: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GPTCLI_HOME pointing at the session's trained store (tests must not change it)."""
    monkeypatch.setenv("GPTCLI_HOME", str(trained["home"]))
    return trained["home"]


@pytest.fixture
def base_home(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the session's store with the tiny trained model, free to change."""
    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    return home
