"""What a new user meets first: messages through a pipe, the next step a run suggests, and help
that reads as sentences at any terminal width."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, run

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_messages_through_a_pipe_are_one_line(trained_home: Path) -> None:
    env = os.environ | {"COLUMNS": "40", "PYTHONPATH": SRC + os.pathsep + os.environ.get(
        "PYTHONPATH", "")}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "gptcli", "generate", "The fox", "-n", "5", "--stats",
         "--ignore-eos"],
        capture_output=True, text=True, env=env, timeout=120, check=True,
    )  # fmt: skip
    lines = result.stderr.splitlines()
    stats = [line for line in lines if line.startswith("prompt 7 tokens")]
    assert len(stats) == 1, result.stderr
    assert "generated 5 tokens, decode" in stats[0] and stats[0].endswith(" tok/s")
    assert len(stats[0]) > 40  # longer than COLUMNS, and still one line


def classify_data(path: Path) -> Path:
    records = [{"text": f"the cat sat {'yes' if i % 2 else 'no'}", "label": "pos" if i % 2
                else "neg"} for i in range(16)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_a_finetune_suggests_the_command_for_its_task(base_home: Path, tmp_path: Path) -> None:
    one_step = ["--max-steps", "1", "--batch-size", "2", "--eval-every", "1"]
    chat = run("finetune", "tiny", str(EXAMPLES / "chat.jsonl"), "--name", "talk", *one_step)
    assert chat.stderr.splitlines()[-1] == "try: gpt chat -m talk"
    data = classify_data(tmp_path / "labels.jsonl")
    labels = run("finetune", "tiny", str(data), "--name", "yesno", *one_step)
    hint = labels.stderr.splitlines()[-1]
    assert hint.startswith('try: gpt classify "') and " -m yesno" in hint
    text = run("finetune", "tiny", str(EXAMPLES / "stories"), "--name", "more", *one_step)
    assert text.stderr.splitlines()[-1] == 'try: gpt generate "Once upon a time" -m more'


# -- help -----------------------------------------------------------------------------------
def commands() -> list[list[str]]:
    import typer

    from gptcli.cli import app

    found = []

    def walk(command, path: list[str]) -> None:  # type: ignore[no-untyped-def]
        found.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def description(path: list[str], columns: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The lines of a command's help above its first panel, as a terminal this wide shows it."""
    monkeypatch.setenv("COLUMNS", str(columns))
    text = run(*path, "--help").stdout
    lines = [line.rstrip() for line in text.splitlines()]
    return lines[: next(i for i, line in enumerate(lines) if line.startswith("╭"))]


@pytest.mark.parametrize("columns", [80, 120])
def test_help_breaks_lines_only_where_the_terminal_ends(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line of a help text ends early only at the end of a paragraph or before an example:
    else the next word would have fitted, and the reader sees a sentence cut in two."""
    checked = 0
    for path in commands():
        lines = description(path, columns, monkeypatch)
        for line, after in itertools.pairwise(lines):
            following = after.strip()
            if not line.strip() or not following or following.startswith("Example"):
                continue
            if after.startswith("   "):  # an indented example line
                continue
            checked += 1
            next_word = following.split()[0]
            assert len(line) + 1 + len(next_word) > columns - 2, (path, line, after)
    assert checked > 20


def test_every_command_row_is_one_sentence_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    for path in commands():
        if not path or (len(path) == 1 and path[0] in ("models", "tokenize")):
            lines = run(*path, "--help").stdout.splitlines()
            start = next(i for i, line in enumerate(lines) if "─ Commands " in line)
            end = next(i for i in range(start, len(lines)) if lines[i].startswith("╰"))
            assert end - start > 2
            for row in lines[start + 1 : end]:
                assert row[2] != " ", row  # a command's name, not the rest of the row above
