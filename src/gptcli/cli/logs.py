"""`gpt logs`, `gpt logs search|path|rm|on|off`: read and manage the conversation log.

The log itself (gptcli.chatlog) is SQLite; this module only chooses and prints. Output follows
llm's habits: newest last, Markdown by default, `--json` (one array) or `--jsonl` (one object
a line) for programs.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.console import info, out
from gptcli.cli.usage import Command, Group
from gptcli.errors import GptError

if TYPE_CHECKING:
    from gptcli.chatlog import LoggedConversation, Turn

app = typer.Typer(
    help="The conversation log: the latest conversations, one conversation (--cid), search, "
    "remove, and turning logging on and off.\n\n`gpt chat` logs every turn unless --no-log, "
    "GPTCLI_NO_LOG=1 or `gpt logs off`; `gpt generate` logs with --log.\n\n"
    "Examples: gpt logs -n 5 · gpt logs search fox · gpt chat -c",
    cls=Group,
    invoke_without_command=True,
)

CountOption = Annotated[int, typer.Option("-n", "--count", help="How many to show; 0 = all.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")]
JsonlOption = Annotated[bool, typer.Option("--jsonl", help="One JSON object a line.")]


@app.callback()
def logs(
    ctx: typer.Context,
    count: CountOption = 3,
    cid: Annotated[
        str | None, typer.Option("--cid", help="Show this conversation (an id or its start).")
    ] = None,
    json_out: JsonOption = False,
    jsonl: JsonlOption = False,
) -> None:
    """The latest conversations, newest last (or one, with --cid)."""
    if ctx.invoked_subcommand is not None:
        return
    from gptcli.chatlog import open_log

    log = open_log()
    if cid is not None:
        conversations = [log.conversation(log.resolve(cid))]
    else:
        conversations = log.latest(max(count, 0))
    if json_out or jsonl:
        emit([c.to_dict() for c in conversations], jsonl)
        return
    if not conversations:
        info("the log is empty: `gpt chat` logs each turn (or `gpt generate --log`)")
        return
    out.print("\n\n".join(conversation_markdown(c) for c in conversations), markup=False)


@app.command(
    "search", cls=Command, help="Turns whose prompt or reply holds every word, newest last."
)
def search(
    words: Annotated[list[str], typer.Argument(help="Words to find (any language).")],
    count: Annotated[
        int, typer.Option("-n", "--count", help="How many turns to show; 0 = all.")
    ] = 10,
    json_out: JsonOption = False,
    jsonl: JsonlOption = False,
) -> None:
    from gptcli.chatlog import open_log

    terms = [w for text in words for w in text.split()]
    turns = open_log().search(terms, max(count, 0))
    if json_out or jsonl:
        emit([t.to_dict() for t in turns], jsonl)
        return
    if not turns:
        info(f"no turn in the log holds {' '.join(terms)}")
        return
    out.print("\n\n".join(turn_markdown(t, with_conversation=True) for t in turns), markup=False)


@app.command("path", cls=Command, help="Where the log is (GPTCLI_LOGS moves it).")
def path_cmd() -> None:
    from gptcli.chatlog import db_path

    sys.stdout.write(f"{db_path()}\n")


@app.command("rm", cls=Command, help="Remove a conversation from the log.")
def rm(
    cid: Annotated[str, typer.Option("--cid", help="The conversation (an id or its start).")],
) -> None:
    import sqlite3

    from gptcli.chatlog import db_path, open_log

    log = open_log()
    full = log.resolve(cid)
    try:
        count = log.remove(full)
    except sqlite3.Error as exc:
        raise GptError(f"cannot change the log {db_path()}: {exc}") from None
    info(f"removed conversation {full} ({count} turns)")


@app.command("on", cls=Command, help="Log `gpt chat` from now on (the default).")
def on() -> None:
    from gptcli.chatlog import set_logging

    set_logging(True)
    info("gpt chat logs its turns (gpt chat --no-log leaves one chat out)")


@app.command(
    "off", cls=Command, help="Stop logging `gpt chat` (`gpt chat --log` still logs one chat)."
)
def off() -> None:
    from gptcli.chatlog import set_logging

    set_logging(False)
    info("gpt chat no longer logs (gpt logs on turns it back on)")


def emit(records: list[dict[str, Any]], jsonl: bool) -> None:
    if jsonl:
        for record in records:
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(records, ensure_ascii=False, indent=2) + "\n")
    sys.stdout.flush()


def when(stamp: str) -> str:
    return stamp[:19].replace("T", " ") + " UTC"


def conversation_markdown(conversation: LoggedConversation) -> str:
    kind = "" if conversation.kind == "chat" else f" ({conversation.kind})"
    lines = [
        f"# Conversation {conversation.id}{kind}",
        "",
        f"Model: **{conversation.model}** · started {when(conversation.created)}",
    ]
    system = None
    for turn in conversation.turns:
        if turn.system != system and turn.system:
            lines += ["", "## System", "", turn.system]
        system = turn.system
        lines += ["", turn_markdown(turn)]
    return "\n".join(lines)


def turn_markdown(turn: Turn, with_conversation: bool = False) -> str:
    head = f"## {when(turn.datetime_utc)} · {turn.model}"
    if with_conversation:
        head += f" · conversation {turn.conversation_id}"
    if turn.replaced:
        head += " · redone with /regen"
    lines = [head, ""]
    if turn.prompt:
        lines += ["### Prompt", "", turn.prompt, ""]
    lines += ["### Response", "", turn.response]
    facts = []
    if turn.prompt_tokens is not None:
        facts.append(f"{turn.prompt_tokens} prompt tokens")
    if turn.generated_tokens is not None:
        facts.append(f"{turn.generated_tokens} generated")
    if turn.finish and turn.finish not in ("stop",):
        facts.append(f"finish: {turn.finish}")
    if facts:
        lines += ["", f"_{', '.join(facts)}_"]
    return "\n".join(lines)
