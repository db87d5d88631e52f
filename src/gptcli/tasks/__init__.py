"""Fine-tuning tasks, one module each behind the interface in `tasks.base`.

A new task is one new module with NAME, recognises() and prepare(), listed in TASKS.
"""

from __future__ import annotations

from pathlib import Path

from gptcli.data import read_jsonl
from gptcli.errors import GptError
from gptcli.tasks import chat, classify, text
from gptcli.tasks.base import Task

TASKS: dict[str, Task] = {task.NAME: task for task in (text, chat, classify)}


def detect_task(files: list[Path]) -> str:
    """text for .txt data; for JSONL, chat if lines hold messages/prompt, classify if labels."""
    first = None
    if any(f.suffix == ".jsonl" for f in files):
        first = next((record for _, record in read_jsonl(files[0])), None)
    for name, task in TASKS.items():
        if task.recognises(files, first):
            return name
    raise GptError(f"{files[0]}: cannot tell the task from its lines: pass --task chat|classify")


def task_named(name: str) -> Task:
    if name not in TASKS:
        raise GptError(f"unknown task {name!r} (choose from {', '.join(TASKS)})")
    return TASKS[name]
