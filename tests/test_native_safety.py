"""Where the native decode library is built and what gets loaded (gptcli.kernels.files, abi):
never the model store, never a file someone else could have written (a planted library must
not run), only the ABI this side speaks, and one stderr line, once, when decode falls back to
torch. Most cases build a small stand-in for decode.c (the same ABI, no kernels): fast."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run, snapshot

from gptcli import kernels
from gptcli.kernels import abi, files

pytestmark = pytest.mark.skipif(
    kernels.compiler() is None, reason="no C compiler to build the native step"
)
NOBODY = 65534
GREEDY = ("-n", "8", "--temperature", "0", "--dtype", "float32", "--json")


def stand_in(
    path: Path, marker: Path | None = None, sizes: list[int] | None = None, version: int = 0
) -> Path:
    """C source of a library with decode.c's entry points and ABI (or the `sizes` and
    `version` given); with `marker`, its constructor writes that file when it is loaded."""
    sizes = sizes or [ctypes.sizeof(s) for s in abi.STRUCTS]
    listed = ", ".join(str(s) for s in sizes)
    ctor = ""
    if marker is not None:
        ctor = (
            "#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {\n"
            f'    FILE *f = fopen("{marker}", "w");\n    if (f) fputs("ran", f), fclose(f);\n}}\n'
        )
    path.write_text(
        "#include <stdint.h>\n" + ctor + "int gptcli_forward(void) { return 0; }\n"
        "int32_t gptcli_abi(int32_t *version, int64_t *sizes, int32_t capacity) {\n"
        f"    const int64_t mine[] = {{{listed}}};\n"
        f"    *version = {version or abi.VERSION};\n"
        f"    for (int i = 0; i < {len(sizes)} && i < capacity; i++) sizes[i] = mine[i];\n"
        f"    return {len(sizes)};\n}}\n"
    )
    return path


def compile_to(source: Path, out: Path) -> Path:
    cc = kernels.compiler()
    assert cc is not None
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(source)], check=True)
    return out


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The stand-in as the library's source, an empty kernels directory, a fresh process's
    state (nothing loaded, nothing said yet)."""
    monkeypatch.setattr(files, "SOURCE", stand_in(tmp_path / "stand-in.c"))
    monkeypatch.setenv("GPTCLI_KERNELS", str(tmp_path / "kernels"))
    monkeypatch.delenv("GPTCLI_NATIVE", raising=False)
    monkeypatch.setattr(kernels, "_told", [])
    kernels.library.cache_clear()
    yield tmp_path / "kernels"
    kernels.library.cache_clear()


def plant(directory: Path, marker: Path, mode: int = 0o644) -> Path:
    """A working library at the path gptcli would load, which writes `marker` if loaded."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    cc = kernels.compiler()
    assert cc is not None
    target = files.library_path(cc, directory)
    compile_to(stand_in(directory.parent / "planted.c", marker), target)
    target.chmod(mode)
    return target


def test_it_is_built_in_its_own_private_cache_dir_never_in_the_store(
    base_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the real decode.c, built by a real `gpt generate`, in the user's cache (XDG here)
    monkeypatch.delenv("GPTCLI_KERNELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_told", [])
    before = snapshot(base_home)
    kernels.library.cache_clear()
    try:
        done = run("generate", "Once", "-n", "8", "--temperature", "0", "--dtype", "float32")
        assert kernels.loaded_from() is not None
    finally:
        kernels.library.cache_clear()
    assert "warning" not in done.stderr
    assert snapshot(base_home) == before  # nothing written to the store
    where = tmp_path / "cache" / "gptcli-kernels"
    assert kernels.kernels_dir() == where
    assert [p.name.startswith("decode-") for p in where.iterdir()] == [True]
    assert where.stat().st_mode & 0o777 == 0o700
    monkeypatch.delenv("GPTCLI_HOME")  # the default store: a sibling, not a parent
    from gptcli.store import store_home

    assert store_home() == tmp_path / "cache" / "gptcli"


def test_a_kernels_dir_inside_the_store_is_not_used(
    built: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTCLI_KERNELS", str(home / "kernels"))
    home.mkdir()
    assert kernels.library() is not None
    where = kernels.loaded_from()
    assert where is not None and not where.is_relative_to(home)
    assert list(home.iterdir()) == []  # nothing written under the store


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_library_in_a_directory_others_can_write_is_not_loaded(
    built: Path, tmp_path: Path, mode: int
) -> None:
    marker = tmp_path / "ran"
    planted = plant(built, marker)
    data = planted.read_bytes()
    built.chmod(mode)
    assert kernels.library() is not None  # built afresh, privately, and loaded
    assert not marker.exists()
    where = kernels.loaded_from()
    assert where is not None and where.parent != built and where.name == planted.name
    assert not where.parent.exists()  # the private build is gone once loaded
    assert planted.read_bytes() == data  # a directory not ours alone: left as it is


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_library_others_can_write_is_built_again_in_its_place(
    built: Path, tmp_path: Path, mode: int
) -> None:
    marker = tmp_path / "ran"
    planted = plant(built, marker, mode)
    assert kernels.library() is not None
    assert not marker.exists()
    assert kernels.loaded_from() == planted
    assert planted.stat().st_mode & 0o022 == 0
    assert built.stat().st_mode & 0o777 == 0o700


def test_a_symbolic_link_at_its_path_is_not_followed(built: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    elsewhere = compile_to(stand_in(tmp_path / "evil.c", marker), tmp_path / "evil.so")
    built.mkdir(mode=0o700)
    cc = kernels.compiler()
    assert cc is not None
    link = files.library_path(cc, built)
    link.symlink_to(elsewhere)
    assert kernels.library() is not None
    assert not marker.exists()
    assert not link.is_symlink()  # replaced by a build of its own


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file another user's needs root")
@pytest.mark.parametrize("whose", ["file", "directory"])
def test_a_library_of_another_user_is_not_loaded(built: Path, tmp_path: Path, whose: str) -> None:
    marker = tmp_path / "ran"
    planted = plant(built, marker)
    os.chown(planted if whose == "file" else built, NOBODY, NOBODY)
    assert kernels.library() is not None
    assert not marker.exists()
    where = kernels.loaded_from()
    if whose == "file":  # our directory: built again in its place
        assert where == planted and planted.stat().st_uid == os.geteuid()
    else:
        assert where is not None and where.parent != built
        assert planted.stat().st_uid == os.geteuid()  # left alone (it was planted as root)


def test_without_proc_the_checked_bytes_are_loaded_from_a_private_copy(
    built: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "PROC_FD", Path("/nonexistent"))  # as on macOS
    assert kernels.library() is not None
    assert kernels.loaded_from() == files.library_path(kernels.compiler() or "", built)


def test_only_older_builds_of_the_same_machine_are_removed(built: Path) -> None:
    cc = kernels.compiler()
    assert cc is not None
    name = files.library_name(cc)
    machine = name.split("-")[1]
    built.mkdir(mode=0o700)
    older = built / f"decode-{machine}-000000000000.so"
    other_cpu = built / "decode-abcdefabcdef-000000000000.so"
    for path in (older, other_cpu):
        path.write_bytes(b"")
    assert kernels.library() is not None
    assert sorted(p.name for p in built.iterdir()) == sorted([name, other_cpu.name])


@pytest.mark.parametrize(
    ("sizes", "version", "said"),
    [
        ([24, 144, 7, 40], 0, r"Model is 7 bytes, this gptcli's \d+"),
        (None, 99, "speaks ABI 99, this gptcli 1"),
        ([24, 144], 0, "passes 2 structs, this gptcli 4"),
    ],
)
def test_a_library_of_another_abi_is_refused_in_one_line(
    built: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    sizes: list[int] | None,
    version: int,
    said: str,
) -> None:
    monkeypatch.setattr(files, "SOURCE", stand_in(tmp_path / "other.c", None, sizes, version))
    assert kernels.library() is None
    why = kernels.unavailable() or ""
    assert re.search(said, why) and "\n" not in why
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: decoding with torch's kernels")
    assert why in err


def test_a_compiler_without_openmp_is_named(
    built: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clang = tmp_path / "cc"
    clang.write_text(
        "#!/bin/sh\necho \"clang: error: unsupported option '-fopenmp'\" >&2\nexit 1\n"
    )
    clang.chmod(0o755)
    monkeypatch.setenv("CC", str(clang))
    assert kernels.library() is None
    assert "no OpenMP" in (kernels.unavailable() or "")


def test_the_fallback_is_said_once_per_process_and_not_when_chosen(
    built: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    for _ in range(3):
        kernels.library.cache_clear()
        assert kernels.library() is None
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "did not build" in err
    monkeypatch.setattr(kernels, "_told", [])
    monkeypatch.setenv("GPTCLI_NATIVE", "0")
    kernels.library.cache_clear()
    assert kernels.library() is None
    assert capsys.readouterr().err == ""


def test_gpt_generate_says_it_falls_back_in_one_line(base_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CC": "/nonexistent/cc", "GPTCLI_KERNELS": str(tmp_path / "k")}
    env.pop("GPTCLI_NATIVE", None)
    done = subprocess.run(
        [sys.executable, "-m", "gptcli", "generate", "Once", *GREEDY],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["text"]
    lines = [line for line in done.stderr.splitlines() if "torch's kernels" in line]
    assert len(lines) == 1 and "did not build" in lines[0]
