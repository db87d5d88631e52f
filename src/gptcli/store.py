"""The model store: where models and tokenizers live, name resolution, atomic writes.

Layout (see DESIGN.md):
    $GPTCLI_HOME/models/NAME/{model.safetensors, config.json, tokenizer.json, train.json}
    $GPTCLI_HOME/tokenizers/NAME/tokenizer.json
    $GPTCLI_HOME/data/<key>.bin            cached token ids
    $GPTCLI_HOME/default                   name of the default model
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gptcli.errors import GptError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def store_home() -> Path:
    env = os.environ.get("GPTCLI_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs  # only without GPTCLI_HOME: shell completion reads the store too

    return Path(platformdirs.user_cache_dir("gptcli"))


def check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise GptError(
            f"invalid name {name!r}: use letters, digits, '.', '_' and '-' (at most 100 characters)"
        )
    return name


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling to write; on success it is fsynced and replaces `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GptError(f"{path}: file is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GptError(f"{path}: not valid JSON ({exc})") from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), read without torch."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 0 < size <= 100_000_000:
                raise ValueError("bad header size")
            header = json.loads(f.read(size))
    except FileNotFoundError:
        raise GptError(f"{path}: weights file is missing") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise GptError(f"{path}: not a valid safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise GptError(f"{path}: not a valid safetensors file")
    return header


def count_parameters(path: Path) -> int:
    total = 0
    for key, entry in safetensors_header(path).items():
        if key != "__metadata__":
            count = 1
            for dim in entry.get("shape", []):
                count *= dim
            total += count
    return total


def human_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota, as an OSError or as safetensors reports it (its own error type)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc)


def disk_full_message(where: Path, needed: int, what: str) -> str:
    """`the disk is full: ...`, saying where, what it needs and what is free."""
    try:
        free = f", {human_bytes(shutil.disk_usage(where).free)} free"
    except OSError:
        free = ""
    return f"the disk is full: {what} needs about {human_bytes(needed)} in {where}{free}"


def swap_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_swap(target: Path) -> None:
    """Puts back a model directory whose replacement was cut short between two renames."""
    old = swap_path(target)
    if not target.exists() and old.is_dir():
        with contextlib.suppress(OSError):
            os.replace(old, target)


def fault_point(name: str) -> None:
    """For crash tests: GPTCLI_FAULT=NAME:N kills this process (SIGKILL) at the Nth pass here;
    NAME:N:TERM or NAME:N:INT sends it that signal instead."""
    spec = os.environ.get("GPTCLI_FAULT")
    if not spec or spec.split(":")[0] != name:
        return
    count = _fault_counts[name] = _fault_counts.get(name, 0) + 1
    parts = spec.split(":")
    if count == int(parts[1]):
        os.kill(os.getpid(), getattr(signal, "SIG" + (parts[2] if len(parts) > 2 else "KILL")))


_fault_counts: dict[str, int] = {}


def record_is_live(record: dict[str, Any]) -> bool:
    """Whether a lock record names a live process (one of another host: assumed so).

    A dead holder's record stays in the file until the next holder overwrites it.
    """
    pid = int(record["pid"])
    if record.get("host") not in (None, socket.gethostname()):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class ModelLock:
    """`models/.NAME.lock`: one writer per model name, held as an OS lock for the writer's life.

    The exclusion is `flock` on the lock file itself, which the kernel drops when the holder
    dies, so a killed writer's lock is free at once and any process that flocks the file is
    respected. The JSON record inside only names the holder in the error. The lock sits beside
    the model directory because checkpoints replace the directory whole.
    """

    record_wait = 2.0  # seconds a newcomer waits for a new holder to write its record

    def __init__(self, store_models: Path, name: str, command: str) -> None:
        self.path = store_models / f".{name}.lock"
        self.name = name
        self.command = command
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def acquire(self) -> ModelLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise GptError(self.busy_message()) from None
            except BaseException:
                os.close(fd)
                raise
            # a releasing holder unlinks the file after we opened it: ours is then an orphan
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self.fd = fd
        return self

    def busy_message(self) -> str:
        holder = self.holder()
        if holder is None:
            who = "another process"
        else:
            who = (
                f"process {holder.get('pid')} ({holder.get('command', '?')}, "
                f"since {holder.get('since', '?')})"
            )
        return f"model {self.name!r} is being written by {who}; wait for it or stop it"

    def holder(self) -> dict[str, Any] | None:
        """The holder's record; it writes it just after taking the lock, so wait a little."""
        deadline = time.monotonic() + self.record_wait
        while True:
            try:
                record = json.loads(self.path.read_text(encoding="utf-8"))
                if isinstance(record, dict) and record_is_live(record):
                    return record
            except (OSError, ValueError, TypeError):
                pass
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: see the check in acquire
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> ModelLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelStore:
    """Paths and bookkeeping of the per-user store; knows nothing about torch."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = home or store_home()

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tokenizers_dir(self) -> Path:
        return self.home / "tokenizers"

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def model_dir(self, name: str) -> Path:
        path = self.models_dir / check_name(name)
        recover_swap(path)
        return path

    def exists(self, name: str) -> bool:
        return (self.model_dir(name) / "config.json").is_file()

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        for old in self.models_dir.glob(".*.old"):
            recover_swap(old.with_name(old.name[1 : -len(".old")]))
        return sorted(
            p.name
            for p in self.models_dir.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "config.json").is_file()
        )

    def unfinished_names(self) -> list[str]:
        """Runs with metrics (train.json) but no saved model yet: in progress, or stopped
        before their first checkpoint."""
        if not self.models_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.models_dir.iterdir()
            if p.is_dir()
            and not p.name.startswith(".")
            and not (p / "config.json").is_file()
            and (p / "train.json").is_file()
        )

    # -- default model --------------------------------------------------------------------
    def default_name(self) -> str | None:
        path = self.home / "default"
        if path.is_file():
            name = path.read_text(encoding="utf-8").strip()
            if name and NAME_RE.match(name) and self.exists(name):
                return name
        return None

    def set_default(self, name: str) -> None:
        if not self.exists(name):
            raise GptError(f"no model named {name!r} in the store (see `gpt models list`)")
        write_text_atomic(self.home / "default", name + "\n")

    # -- resolution -----------------------------------------------------------------------
    def resolve(self, ref: str | None) -> Path:
        """A store name, a model directory, or None for the default -> the model's directory."""
        if ref is None:
            name = self.default_name()
            if name is None:
                if self.names():
                    raise GptError(
                        "no default model: pick one with -m NAME or `gpt models default`"
                    )
                raise GptError("no model trained yet: run `gpt train FILE` first")
            return self.model_dir(name)
        if NAME_RE.match(ref) and self.exists(ref):
            return self.model_dir(ref)
        path = Path(ref).expanduser()
        if path.is_dir():
            if (path / "config.json").is_file():
                return path
            raise GptError(f"{path}: not a model directory (no config.json)")
        raise GptError(f"unknown model {ref!r} (see `gpt models list`)")

    def remove(self, name: str) -> None:
        path = self.model_dir(name)
        if not path.is_dir():
            raise GptError(f"no model named {name!r} in the store")
        trash = path.with_name(f".{name}.removing")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        if (self.home / "default").is_file() and self.default_name() is None:
            (self.home / "default").unlink(missing_ok=True)

    def drop_train_state(self, name: str) -> int:
        """Deletes a stored model's optimizer state (under its lock); returns the bytes freed.

        train.json notes it, so that --resume can say why it cannot continue.
        """
        directory = self.model_dir(name)
        if not (directory / "config.json").is_file():
            raise GptError(f"no model named {name!r} in the store (see `gpt models list`)")
        with ModelLock(self.models_dir, name, "gpt models prune"):
            state = directory / "train_state.safetensors"
            if not state.is_file():
                return 0
            size = state.stat().st_size
            info_path = directory / "train.json"
            if info_path.is_file():
                write_json_atomic(info_path, read_json(info_path) | {"train_state": "dropped"})
            state.unlink()
            fsync_dir(directory)
            return size

    def tokenizer_path(self, ref: str) -> Path:
        """A stored tokenizer name or a tokenizer.json path -> its file."""
        path = Path(ref).expanduser()
        if path.is_file():
            return path
        if path.is_dir() and (path / "tokenizer.json").is_file():
            return path / "tokenizer.json"
        if NAME_RE.match(ref):
            for candidate in (self.tokenizers_dir / ref, self.models_dir / ref):
                if (candidate / "tokenizer.json").is_file():
                    return candidate / "tokenizer.json"
        raise GptError(f"unknown tokenizer {ref!r}: not a stored tokenizer or a tokenizer.json")

    def commit_dir(self, staging: Path, target: Path, force: bool) -> None:
        """Moves a fully written staging directory into place, replacing `target` if `force`."""
        fsync_dir(staging)
        if target.exists():
            if not force:
                raise GptError(f"{target.name!r} already exists (use --force to overwrite)")
            old = swap_path(target)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            fault_point("swap")  # a crash here leaves only `old`: recover_swap restores it
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
        fsync_dir(target.parent)

    def staging_dir(self, parent: Path, name: str) -> Path:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=parent))

    @contextlib.contextmanager
    def staged(self, target: Path, force: bool) -> Iterator[Path]:
        """Stage -> commit -> clean up: yields an empty sibling directory of `target` to fill;
        when the block ends without an error it replaces `target` (see `commit_dir`). The
        staging directory never outlives the block."""
        staging = self.staging_dir(target.parent, target.name)
        try:
            yield staging
            self.commit_dir(staging, target, force=force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
