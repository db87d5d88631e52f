"""Where `gpt chat` starts (`-c`, `--cid`, `--load`) and how its turns reach the log.

Glue between the REPL and pipe loops of cli/chat.py and gptcli.chatlog; it holds no state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from gptcli.errors import GptError

if TYPE_CHECKING:
    from gptcli.chatlog import ChatLog, LoggedConversation
    from gptcli.chatrecorder import ChatRecorder
    from gptcli.conversation import ChatSession, ChatSettings, ReplyStream


@dataclass
class Start:
    model: str | None
    system: str | None
    history: list[dict[str, str]] = field(default_factory=list)
    resumed: LoggedConversation | None = None  # continued from the log


def given(ctx: typer.Context, name: str) -> bool:
    """Whether a flag was given on the command line (or its environment variable)."""
    source = ctx.get_parameter_source(name)  # typer's own copy of click's ParameterSource
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def choose_start(
    ctx: typer.Context,
    values: dict[str, Any],
    model: str | None,
    system: str | None,
    cont: bool,
    cid: str | None,
    load: str | None,
) -> Start:
    """Where a chat starts: the latest or a chosen logged conversation, a saved one, or none.

    A continued conversation brings its model, system prompt and settings (written into
    `values`) unless given on the command line now.
    """
    from gptcli.chat import read_conversation
    from gptcli.chatlog import open_log

    if sum([cont, cid is not None, load is not None]) > 1:
        raise typer.BadParameter("-c, --cid and --load each choose the start: give one")
    if cont or cid is not None:
        resumed = find_conversation(open_log(), cid)
        for key, value in resumed.settings.items():  # the flags given now win
            if key in values and not given(ctx, key):
                values[key] = value
        if not given(ctx, "model"):
            model = resumed.kept[-1].model if resumed.kept else resumed.model
        stored_system, history = resumed.messages()
        return Start(model, stored_system if system is None else system, history, resumed)
    if load is not None:
        file_system, history = split_system(read_conversation(load))
        return Start(model, file_system if system is None else system, history)
    return Start(model, system)


def find_conversation(log: ChatLog, cid: str | None) -> LoggedConversation:
    """The conversation to continue: `cid` (an id or its start), else the latest chat."""
    if cid is not None:
        conversation = log.conversation(log.resolve(cid))
        if conversation.kind != "chat":
            raise GptError(f"conversation {conversation.id} is a `gpt {conversation.kind}` log")
        return conversation
    latest = log.latest(1, kind="chat")
    if not latest:
        raise GptError("no conversation to continue: the log has none yet")
    return latest[0]


def split_system(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return None, messages


def settings_dict(settings: ChatSettings) -> dict[str, Any]:
    """The settings a turn is logged with (and a continued chat starts from)."""
    import dataclasses

    return dataclasses.asdict(settings.sampling) | {
        "max_tokens": settings.max_tokens,
        "seed": settings.seed,
    }


def log_turn(recorder: ChatRecorder, session: ChatSession, stream: ReplyStream) -> None:
    """Logs the turn that just ended (the last user message and `stream`'s reply)."""
    conversation = session.conversation
    stats = stream.stats
    recorder.record(
        conversation.turns[-2]["content"],
        stream.text,
        conversation.system,
        settings_dict(session.settings),
        {
            "prompt_tokens": stats.prompt_tokens,
            "generated_tokens": stats.generated_tokens,
            "prefill_seconds": round(stats.prefill_seconds, 6),
            "decode_seconds": round(stats.decode_seconds, 6),
        },
        stream.finish,
    )
