"""Where the native decode library is built, and how it is loaded without running a file that
someone else could have written.

The library lives in `$GPTCLI_KERNELS` if set, else in a per-user cache directory of its own
(`platformdirs.user_cache_dir("gptcli-kernels")`), never in the model store: the store is
data (safetensors and JSON) that may be shared or copied, and nothing in it is executed.

A library is loaded only if the directory and the file, as opened, are owned by this user and
writable by no one else: the checks run on the open descriptors (`fstat`), and on Linux the
library is loaded through `/proc/self/fd/N`, the very file checked, so it cannot be swapped
between the check and the load. Elsewhere (macOS) the checked file's bytes are copied into a
fresh private directory and loaded from there. A file that fails the checks in a directory
that passes them is built again in its place; a directory that fails them (or lies inside a
set `GPTCLI_HOME`) is left alone, and the library is built in a fresh private directory for
this process instead.

Names carry two keys, `decode-<machine>-<source>.so`: the machine key (compiler, flags, CPU)
and a hash of the source, so a build removes only older builds of its own machine key, and
nodes with different CPUs sharing a directory keep theirs. What the library contains is
`abi.py`'s business; this module knows files, not torch.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from gptcli.hardware import cpu_flags

SOURCE = Path(__file__).with_name("decode.c")
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared"]


def build_flags() -> list[str]:
    """FLAGS, and how this CPU's bfloat16 products are best summed (decode.c's BF16_DOT and
    BF16_SPLIT): AMD's Zen 4 issues its bfloat16 dot product as fast as a float32
    multiply-add, Intel's Sapphire Rapids at a quarter of that rate."""
    return FLAGS + (["-DGPTCLI_BF16_DOT"] if cpu_flags()[0] == "AuthenticAMD" else [])


PROC_FD = Path("/proc/self/fd")

# Descriptors of loaded libraries stay open: the name a library was loaded by
# (/proc/self/fd/N) must not be reused for another file while it is loaded.
_held: list[int] = []


class Unavailable(Exception):
    """The library cannot be had here (one line: why)."""


class Unsafe(Exception):
    """A directory or file failed the ownership checks (one line: which and why)."""


def kernels_dir() -> Path:
    """$GPTCLI_KERNELS if set (the test suite shares one build this way), else the user's
    cache directory for gptcli's kernels, a sibling of the default store, never inside it."""
    given = os.environ.get("GPTCLI_KERNELS")
    if given:
        return Path(given).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("gptcli-kernels"))


def machine_key(cc: str) -> str:
    """What a build depends on besides its source: the compiler (its resolved path, size and
    time, so an upgrade in place counts), the flags and the CPU."""
    found = shutil.which(cc)
    parts = [cc, " ".join(build_flags())]
    if found:
        real = Path(found).resolve()
        info = real.stat()
        parts += [str(real), str(info.st_size), str(info.st_mtime_ns)]
    vendor, flags = cpu_flags()
    parts += [vendor, " ".join(sorted(flags))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def library_name(cc: str) -> str:
    source = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return f"decode-{machine_key(cc)}-{source}.so"


def library_path(cc: str, directory: Path) -> Path:
    """Where the library built by `cc` for this source and CPU lives in `directory`."""
    return directory / library_name(cc)


def compile_into(cc: str, out: Path) -> None:
    """Compiles decode.c to `out`; raises Unavailable with the compiler's last line."""
    try:
        done = subprocess.run(
            [cc, *build_flags(), "-o", str(out), str(SOURCE), "-lm"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Unavailable(f"the native kernel did not build: {exc}") from None
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        if re.search(r"openmp|omp\.h|gomp|libomp", done.stderr, re.IGNORECASE):
            raise Unavailable(f"the C compiler has no OpenMP ({cc} failed: {last})")
        raise Unavailable(f"the native kernel did not build: {cc} failed: {last}")


def build(cc: str, directory: Path, name: str) -> None:
    """Builds `name` into `directory` (privately, then renamed into place: atomic, so a
    concurrent build of the same name is harmless) and removes older builds of the same
    machine key (a library in use stays mapped where it is loaded)."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        out = Path(tmp) / name
        compile_into(cc, out)
        os.replace(out, directory / name)
    machine = name.split("-")[1]
    for old in directory.glob(f"decode-{machine}-*.so"):
        if old.name != name:
            old.unlink(missing_ok=True)


def private(st: os.stat_result, what: str) -> None:
    """Raises Unsafe unless `st` is owned by this user and writable by no one else."""
    if st.st_uid != os.geteuid():
        raise Unsafe(f"{what} is owned by another user (uid {st.st_uid})")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Unsafe(f"{what} is writable by group or others")


def open_dir(directory: Path) -> int:
    """An open descriptor of `directory`, checked; raises Unsafe or OSError."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISDIR(st.st_mode):
            raise Unsafe(f"{directory} is not a directory")
        private(st, str(directory))
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_library(dir_fd: int, name: str, where: Path) -> int | None:
    """An open descriptor of `name` in the directory `dir_fd`, checked; None when absent.
    Raises Unsafe for a symbolic link, a file that is not regular, or one failing the checks."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise Unsafe(f"{where / name} cannot be opened safely ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"{where / name} is not a regular file")
        private(st, str(where / name))
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_fd(fd: int, name: str) -> ctypes.CDLL:
    """Loads the checked file open on `fd` (and keeps `fd` open while it is loaded)."""
    try:
        if sys.platform.startswith("linux") and PROC_FD.is_dir():
            lib = ctypes.CDLL(str(PROC_FD / str(fd)))
            _held.append(fd)
            return lib
        # No /proc (macOS): the checked bytes, copied into a directory only we can write,
        # loaded from there; the copy goes once loaded (the mapping stays).
        with os.fdopen(fd, "rb") as src:
            data = src.read()
        tmp = Path(tempfile.mkdtemp(prefix="gptcli-kernels-"))
        try:
            copy = tmp / name
            copy.write_bytes(data)
            return ctypes.CDLL(str(copy))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        raise Unavailable(f"the native kernel did not load: {exc}") from None


def inside_store(directory: Path) -> bool:
    home = os.environ.get("GPTCLI_HOME")
    if not home:
        return False
    return directory.resolve().is_relative_to(Path(home).expanduser().resolve())


def load_private(cc: str, name: str, why: str) -> tuple[ctypes.CDLL, Path]:
    """Builds the library in a fresh private directory for this process and loads it."""
    tmp = Path(tempfile.mkdtemp(prefix="gptcli-kernels-"))  # 0700, ours
    try:
        try:
            compile_into(cc, tmp / name)
        except Unavailable as exc:
            raise Unavailable(f"{why}, and the private build failed: {exc}") from None
        dir_fd = open_dir(tmp)
        try:
            fd = open_library(dir_fd, name, tmp)
        finally:
            os.close(dir_fd)
        if fd is None:
            raise Unavailable(f"{why}, and the private build vanished")
        return load_fd(fd, name), tmp / name
    except Unsafe as exc:
        raise Unavailable(f"{why}, and the private build is not safe either: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # loaded: the mapping outlives the file


def load(cc: str, directory: Path) -> tuple[ctypes.CDLL, Path]:
    """The library for this source, compiler and CPU, loaded, and the path it was loaded
    from: from `directory` when it passes the checks (built there first when needed), else
    from a fresh private build. Raises Unavailable."""
    name = library_name(cc)
    try:
        if inside_store(directory):
            raise Unsafe(f"{directory} is inside the model store (GPTCLI_HOME)")
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        dir_fd = open_dir(directory)
    except (Unsafe, OSError) as exc:
        return load_private(
            cc, name, str(exc) if isinstance(exc, Unsafe) else f"{directory}: {exc}"
        )
    try:
        try:
            fd = open_library(dir_fd, name, directory)
        except Unsafe:
            fd = None  # built again in its place: the directory is ours
        if fd is None:
            try:
                build(cc, directory, name)
            except OSError as exc:  # the directory refused the new file
                return load_private(cc, name, f"{directory}: {exc}")
            fd = open_library(dir_fd, name, directory)
        if fd is None:
            return load_private(cc, name, f"{directory / name} vanished after its build")
        return load_fd(fd, name), directory / name
    except Unsafe as exc:
        return load_private(cc, name, str(exc))
    finally:
        os.close(dir_fd)
