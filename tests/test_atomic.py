"""Atomic writes: an exception or a kill -9 in the middle of writing one file leaves the old file
or the new one, never part of one; the data and the rename are fsynced."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gptcli.store import atomic_path, write_text_atomic

OLD = "old contents\n" * 1000
NEW = "new contents\n" * 1000


def test_exception_mid_write_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    write_text_atomic(target, OLD)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write(NEW[:100])
            f.flush()
        raise RuntimeError("disk on fire")
    assert target.read_text() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]
    write_text_atomic(target, NEW)
    assert target.read_text() == NEW
    assert [p.name for p in tmp_path.iterdir()] == ["data.txt"]


def test_kill_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    write_text_atomic(target, OLD)
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from gptcli.store import atomic_path
        with atomic_path(Path({str(target)!r})) as tmp:
            with open(tmp, "w") as f:
                f.write({NEW[:100]!r})
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9, proc.stderr
    assert target.read_text() == OLD
    # what a kill leaves is at most a hidden temporary beside it, never the target's name
    assert all(p.name.startswith(".data.txt.") for p in tmp_path.iterdir() if p != target)


def test_write_fsyncs_the_file_before_the_rename_and_then_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data.txt"
    synced: list[tuple[str, int, bool]] = []  # (path at the time, inode, is a directory)
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        info = os.fstat(fd)
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), info.st_ino, stat.S_ISDIR(info.st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_text_atomic(target, NEW)
    files = [(path, inode) for path, inode, is_dir in synced if not is_dir]
    dirs = [inode for _, inode, is_dir in synced if is_dir]
    # the data was synced under its temporary name, and that file is now the target
    assert any(inode == target.stat().st_ino and path != str(target) for path, inode in files)
    assert tmp_path.stat().st_ino in dirs  # and the rename in its directory
    assert synced[-1][2], "the directory is synced after the rename"
