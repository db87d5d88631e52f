"""Native CPU kernels: `decode.c`, built on first use with the machine's C compiler and loaded
with ctypes.

The library is compiled for this CPU (`-march=native`) into its own per-user cache directory
or `$GPTCLI_KERNELS`, never into the model store, and loaded only when it passes the
ownership checks (`files.py`) and speaks this side's ABI (`abi.py`). It links OpenMP by name
(`libgomp.so.1`), which resolves to the runtime torch has already loaded: one pool of threads
for both. Where there is no compiler, the build fails, the compiler has no OpenMP, the ABI
differs or `GPTCLI_NATIVE=0` is set, `library()` is None, `unavailable()` says why, and
callers use torch's kernels instead; but for `GPTCLI_NATIVE=0` (a choice, said nowhere), one
line on stderr says so, once per process. `pip install` stays plain: nothing is compiled until
a decode needs it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys
from pathlib import Path

from gptcli.kernels import abi, files
from gptcli.kernels.files import kernels_dir, library_path

__all__ = ["compiler", "describe", "kernels_dir", "library", "library_path", "loaded_from"]

_why_not: list[str] = []  # the reason the library is unavailable, once known
_where: list[Path] = []  # the path the loaded library was checked and loaded at
_told: list[str] = []  # the fallback line, once said


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def fall_back(why: str) -> None:
    """Records why the library is unavailable and says it on stderr, once per process."""
    _why_not.append(why)
    if not _told:
        _told.append(why)
        sys.stderr.write(
            f"warning: decoding with torch's kernels, slower than the native step: {why} "
            "(GPTCLI_NATIVE=0 chooses torch's kernels without this line)\n"
        )
        sys.stderr.flush()


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded decode library, or None (see `unavailable`)."""
    if os.environ.get("GPTCLI_NATIVE", "1") == "0":
        _why_not.append("GPTCLI_NATIVE=0")
        return None
    cc = compiler()
    if cc is None:
        fall_back("no C compiler (cc, gcc or $CC) on PATH")
        return None
    import torch  # noqa: F401  (its OpenMP runtime first, so that ours resolves to it)

    try:
        lib, where = files.load(cc, kernels_dir())
        abi.check(lib)
    except (files.Unavailable, abi.AbiMismatch) as exc:
        fall_back(str(exc))
        return None
    lib.gptcli_forward.restype = ctypes.c_int
    _where.append(where)
    return lib


def unavailable() -> str | None:
    """Why `library()` is None, or None when it is available."""
    return None if library() is not None else _why_not[-1]


def loaded_from() -> Path | None:
    """The path the loaded library was checked at (a private build's is gone once loaded)."""
    return _where[-1] if library() is not None else None


def describe() -> str:
    """What decodes one row on the CPU here, for `gpt models show`, without building anything."""
    if os.environ.get("GPTCLI_NATIVE", "1") == "0":
        return "torch's kernels (GPTCLI_NATIVE=0)"
    cc = compiler()
    if cc is None:
        return "torch's kernels (no C compiler to build the native step)"
    built = library_path(cc, kernels_dir()).is_file()
    return "native step (built)" if built else f"native step (built with {cc} on first use)"
