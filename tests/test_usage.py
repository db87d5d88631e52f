"""How the CLI presents itself: one-line usage errors in a pipe and on a terminal, flags shown
as flags in help, and usage lines that read the same way everywhere."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run


def gpt_in_pipe(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTCLI_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def gpt_on_terminal(home: Path, *args: str) -> tuple[int, str]:
    """Runs gpt with stdout and stderr on a pseudo-terminal; returns exit code and output."""
    main, child = pty.openpty()
    env = {**os.environ, "GPTCLI_HOME": str(home), "COLUMNS": "80", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=child,
        stderr=child,
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        if not ready:
            proc.kill()
            break
        try:
            data = os.read(main, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(timeout=60), b"".join(chunks).decode().replace("\r\n", "\n")


USAGE_ERRORS = [
    (["generate", "--wibble"], "error: no such option: --wibble (see gpt generate --help)"),
    (["wibble"], "error: no such command 'wibble' (see gpt --help)"),
    (["models", "list", "--json", "true"], "error: got unexpected extra argument(s) (true)"),
    (["models", "rm"], "error: missing argument 'NAME' (see gpt models rm --help)"),
    (["train"], "error: missing argument 'FILE_OR_DIR...' (or inputs in --config)"),
    (["generate", "-n", "many"], "error: invalid value for '--max-new-tokens' / '-n'"),
]


@pytest.mark.parametrize(("args", "start"), USAGE_ERRORS)
def test_usage_errors_are_one_line_in_a_pipe(home: Path, args: list[str], start: str) -> None:
    result = gpt_in_pipe(home, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), result.stderr


def test_usage_errors_are_one_line_on_a_terminal(home: Path) -> None:
    code, output = gpt_on_terminal(home, "generate", "--wibble")
    assert code == 2
    plain = re.sub(r"\x1b\[[0-9;]*m", "", output)  # colour, should there be any
    assert plain == "error: no such option: --wibble (see gpt generate --help)\n", output


def test_no_arguments_still_prints_the_help(home: Path) -> None:
    result = gpt_in_pipe(home)
    assert result.returncode == 2
    assert "Usage: gpt [OPTIONS] COMMAND" in result.stdout + result.stderr
    assert "error:" not in result.stderr


# every command's usage line: NAME required, [NAME] optional, NAME... repeated
USAGE_LINES = {
    ("train",): "gpt train [OPTIONS] [FILE_OR_DIR...]",
    ("finetune",): "gpt finetune [OPTIONS] [BASE] [FILE_OR_DIR...]",
    ("generate",): "gpt generate [OPTIONS] [PROMPT]",
    ("chat",): "gpt chat [OPTIONS]",
    ("eval",): "gpt eval [OPTIONS] [MODEL...]",
    ("classify",): "gpt classify [OPTIONS] [TEXT]",
    ("serve",): "gpt serve [OPTIONS]",
    ("tokenize",): "gpt tokenize [OPTIONS] COMMAND [ARGS]...",
    ("tokenize", "train"): "gpt tokenize train [OPTIONS] FILE_OR_DIR...",
    ("tokenize", "corpus"): "gpt tokenize corpus [OPTIONS] FILE_OR_DIR...",
    ("tokenize", "encode"): "gpt tokenize encode [OPTIONS] [TEXT]",
    ("tokenize", "decode"): "gpt tokenize decode [OPTIONS] [IDS...]",
    ("models",): "gpt models [OPTIONS] COMMAND [ARGS]...",
    ("models", "list"): "gpt models list [OPTIONS]",
    ("models", "show"): "gpt models show [OPTIONS] [NAME...]",
    ("models", "rm"): "gpt models rm [OPTIONS] NAME",
    ("models", "prune"): "gpt models prune [OPTIONS] NAME",
    ("models", "default"): "gpt models default [OPTIONS] [NAME]",
    ("models", "import"): "gpt models import [OPTIONS] DIR|ORG/NAME",
    ("models", "pull"): "gpt models pull [OPTIONS] ORG/NAME[@REVISION]",
    ("models", "export"): "gpt models export [OPTIONS] NAME DIR|FILE.GGUF",
    ("logs",): "gpt logs [OPTIONS] COMMAND [ARGS]...",
    ("logs", "search"): "gpt logs search [OPTIONS] WORDS...",
    ("logs", "path"): "gpt logs path [OPTIONS]",
    ("logs", "rm"): "gpt logs rm [OPTIONS]",
    ("logs", "on"): "gpt logs on [OPTIONS]",
    ("logs", "off"): "gpt logs off [OPTIONS]",
}


def test_every_command_has_a_usage_line_and_lists_it(home: Path) -> None:
    listed = set()
    for group in ((), ("models",), ("tokenize",), ("logs",)):
        names = re.findall(r"^│ (\w+) ", run(*group, "--help").stdout, re.M)
        listed |= {(*group, name) for name in names}
    assert listed == set(USAGE_LINES)


@pytest.mark.parametrize("command", sorted(USAGE_LINES))
def test_help_shows_usage_and_flags_as_flags(
    home: Path, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = run(*command, "--help").stdout
    assert re.search(rf"Usage: {re.escape(USAGE_LINES[command])} *\n", text), text
    assert "<bool>" not in text


def test_a_flag_is_listed_without_a_value(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = run("models", "list", "--help").stdout
    line = next(line for line in text.splitlines() if line.startswith("│ --json"))
    assert re.match(r"^│ --json +JSON on stdout\. +│$", line), line
    help_lines = run("generate", "--help").stdout.splitlines()
    option = next(line for line in help_lines if line.startswith("│ --max-new-tokens"))
    assert "<int>" in option  # options that take a value still say what kind
