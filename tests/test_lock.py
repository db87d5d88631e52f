"""The writer's lock under contention: real processes racing for one model name.

Each contender is a small Python process (no torch) that takes the lock through the store's own
`ModelLock`, as `gpt train` does; the CLI-level checks are in test_safety.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gptcli

SRC = str(Path(gptcli.__file__).resolve().parents[1])

# Waits for "go" on stdin, then tries the lock once. The winner says so and holds the lock
# until stdin closes; a loser prints the error and exits 1.
CONTENDER = """
import sys
from pathlib import Path
from gptcli.errors import GptError
from gptcli.store import ModelLock
lock = ModelLock(Path(sys.argv[1]), "m", "race")
print("ready", flush=True)
sys.stdin.readline()
try:
    lock.acquire()
except GptError as exc:
    print("lost", exc, flush=True)
    sys.exit(1)
print("won", flush=True)
sys.stdin.read()
lock.release()
"""

# Takes and drops the lock ROUNDS times; while holding it, owns a marker file that a second
# holder could not create (O_EXCL), so two holders at once show up as "overlap".
HAMMER = """
import os, sys
from pathlib import Path
from gptcli.errors import GptError
from gptcli.store import ModelLock
models, rounds = Path(sys.argv[1]), int(sys.argv[2])
wins = 0
for _ in range(rounds):
    lock = ModelLock(models, "m", "hammer")
    lock.record_wait = 0.0
    try:
        lock.acquire()
    except GptError:
        continue
    try:
        fd = os.open(models / "owner", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        print("overlap", flush=True)
        sys.exit(2)
    os.close(fd)
    wins += 1
    os.unlink(models / "owner")
    lock.release()
print("wins", wins, flush=True)
"""


def start(script: str, *args: str) -> subprocess.Popen:
    """A contender: python without site-packages (fast to start), importing only the store."""
    return subprocess.Popen(
        [sys.executable, "-S", "-c", script, *args],
        env={"PYTHONPATH": SRC, "PATH": os.environ.get("PATH", "")},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def ready(proc: subprocess.Popen) -> subprocess.Popen:
    line = proc.stdout.readline()
    assert line == "ready\n", (line, proc.stderr.read())
    return proc


def go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


BUSY = re.compile(
    r"^lost model 'm' is being written by process (\d+) \(race, since [0-9: -]+\); "
    r"wait for it or stop it$"
)


@pytest.mark.parametrize("contenders", [2, 3, 4])
def test_one_of_many_wins_and_a_killed_holder_is_replaced_at_once(
    tmp_path: Path, contenders: int
) -> None:
    models = tmp_path / "models"
    tries = 7  # x 3 contender counts: 21 races
    for attempt in range(tries):
        *procs, successor = [start(CONTENDER, str(models)) for _ in range(contenders + 1)]
        for proc in (*procs, successor):  # the successor waits for the winner's death
            ready(proc)
        for proc in procs:  # all at once: each is already imported and waiting
            go(proc)
        first = {proc: proc.stdout.readline().rstrip("\n") for proc in procs}
        winners = [proc for proc, line in first.items() if line == "won"]
        assert len(winners) == 1, (attempt, list(first.values()))
        winner = winners[0]
        for proc, line in first.items():
            if proc is winner:
                continue
            match = BUSY.match(line)
            assert match, (attempt, line)
            assert int(match.group(1)) == winner.pid, (attempt, line, winner.pid)
            assert proc.wait(timeout=10) == 1
        record = json.loads((models / ".m.lock").read_text())
        assert record["pid"] == winner.pid and record["command"] == "race"

        winner.send_signal(signal.SIGKILL)
        winner.wait(timeout=10)
        began = time.monotonic()
        go(successor)
        assert successor.stdout.readline() == "won\n", successor.stderr.read()
        assert time.monotonic() - began < 5  # no stale-lock timeout: the kernel freed it
        successor.stdin.close()  # a clean release removes the lock file
        assert successor.wait(timeout=10) == 0
        assert not (models / ".m.lock").exists()
        for proc in procs:
            proc.stdout.close()
            proc.stderr.close()
            if proc.stdin:
                proc.stdin.close()
        successor.stdout.close()
        successor.stderr.close()


def test_never_two_holders_while_locks_are_taken_and_dropped(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    procs = [start(HAMMER, str(models), "500") for _ in range(3)]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, errors) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0 and out.startswith("wins "), (out, errors)
    assert all(int(out.split()[1]) > 0 for out, _ in outputs)
    assert not list(models.iterdir())  # no lock file or marker left behind


def test_a_holder_that_has_not_written_its_record_is_respected(tmp_path: Path) -> None:
    import fcntl

    from gptcli.errors import GptError
    from gptcli.store import ModelLock

    models = tmp_path / "models"
    models.mkdir()
    with open(models / ".m.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # a holder that has only just taken the lock
        lock = ModelLock(models, "m", "gpt train")
        lock.record_wait = 0.1
        with pytest.raises(GptError, match="being written by another process"):
            lock.acquire()
    with ModelLock(models, "m", "gpt train") as lock:  # released: free again
        assert lock.held
