"""Native CPU kernels: `decode.c`, built on first use with the machine's C compiler and loaded
with ctypes.

The library is compiled for this CPU (`-march=native`) into `$GPTCLI_HOME/kernels/` (or
`$GPTCLI_KERNELS`), named by
a hash of the source, the flags, the compiler and the CPU, so a change to any of them builds
it again, once. It links OpenMP by name (`libgomp.so.1`), which resolves to the runtime torch
has already loaded: one pool of threads for both. Where there is no compiler, the build fails
or `GPTCLI_NATIVE=0` is set, `library()` is None, `unavailable()` says why, and callers use
torch's kernels instead. `pip install` stays plain: nothing is compiled until a decode needs it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from gptcli.hardware import cpu_flags

SOURCE = Path(__file__).with_name("decode.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared"]

_why_not: list[str] = []  # the reason the library is unavailable, once known


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def kernels_dir() -> Path:
    """$GPTCLI_KERNELS if set (the test suite shares one build this way), else the store's."""
    from gptcli.store import store_home

    given = os.environ.get("GPTCLI_KERNELS")
    return Path(given) if given else store_home() / "kernels"


def library_path(cc: str, directory: Path) -> Path:
    """Where the library built by `cc` for this source and CPU lives in `directory`."""
    source = SOURCE.read_bytes()
    vendor, flags = cpu_flags()
    key = hashlib.sha256(
        b"\0".join([source, " ".join(FLAGS).encode(), cc.encode(), vendor.encode()])
        + " ".join(sorted(flags)).encode()
    ).hexdigest()[:16]
    return directory / f"decode-{key}.so"


def build(cc: str, directory: Path) -> Path:
    """Compiles decode.c into `directory` (reused when already there); raises on failure."""
    target = library_path(cc, directory)
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        out = Path(tmp) / target.name
        done = subprocess.run(
            [cc, *FLAGS, "-o", str(out), str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{cc} failed: {last}")
        os.replace(out, target)  # atomic: a concurrent build of the same key is harmless
    for old in directory.glob("decode-*.so"):  # builds of older sources (a library in use stays
        if old != target:  # mapped where it is loaded)
            old.unlink(missing_ok=True)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded decode library, or None (see `unavailable`)."""
    if os.environ.get("GPTCLI_NATIVE", "1") == "0":
        _why_not.append("GPTCLI_NATIVE=0")
        return None
    cc = compiler()
    if cc is None:
        _why_not.append("no C compiler (cc) on PATH")
        return None
    import torch  # noqa: F401  (its OpenMP runtime first, so that ours resolves to it)

    try:
        lib = ctypes.CDLL(str(build(cc, kernels_dir())))
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        _why_not.append(f"the native kernel did not build: {exc}")
        return None
    lib.gptcli_forward.restype = ctypes.c_int
    return lib


def unavailable() -> str | None:
    """Why `library()` is None, or None when it is available."""
    return None if library() is not None else _why_not[-1]


def describe() -> str:
    """What decodes one row on the CPU here, for `gpt models show`, without building anything."""
    if os.environ.get("GPTCLI_NATIVE", "1") == "0":
        return "torch's kernels (GPTCLI_NATIVE=0)"
    cc = compiler()
    if cc is None:
        return "torch's kernels (no C compiler to build the native step)"
    built = library_path(cc, kernels_dir()).is_file()
    return "native step (built)" if built else f"native step (built with {cc} on first use)"
