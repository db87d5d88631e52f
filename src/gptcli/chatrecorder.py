"""What a chat writes its turns through: `ChatRecorder` (one conversation of the log at a
time) and `log_generation` for `gpt generate --log`.

A damaged, locked or unwritable log never stops a chat: the recorder prints one warning line
and stops logging. Knows the log (chatlog.py) and messages as dicts; nothing about models,
terminals or HTTP.
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
from typing import Any

from gptcli.chatlog import ChatLog, db_path, new_id


def warn(message: str) -> None:
    sys.stderr.write(f"warning: {message}\n")
    sys.stderr.flush()


class ChatRecorder:
    """What a chat writes through: one conversation id, turns as they finish, and a log that
    turns itself off with one warning when the database is damaged or stays locked.

    The conversation row is written with the first turn, so a chat that says nothing leaves
    nothing; `history` (a loaded conversation) is written then too, ahead of it.
    """

    def __init__(
        self,
        model: str,
        enabled: bool = True,
        conversation_id: str | None = None,
        history: list[dict[str, str]] | None = None,
        system: str | None = None,
        kind: str = "chat",
    ) -> None:
        self.model, self.kind = model, kind
        self.log: ChatLog | None = None
        self.enabled = enabled
        self.restart(history, system)
        if conversation_id is not None:
            self.conversation_id = conversation_id
        if enabled:
            self._safely(self._open)

    def _open(self) -> None:
        self.log = ChatLog()

    def restart(
        self, history: list[dict[str, str]] | None = None, system: str | None = None
    ) -> None:
        """A new conversation from the next turn on (/clear, /load)."""
        self.conversation_id = new_id()
        self.pending = history_turns(history or [], system)
        self.redo = False

    def record(
        self,
        prompt: str,
        response: str,
        system: str | None,
        settings: dict[str, Any],
        stats: dict[str, Any] | None = None,
        finish: str | None = None,
    ) -> None:
        """Logs one finished turn (after /regen, in place of the last one)."""
        turn = {"prompt": prompt, "response": response, "system": system, "settings": settings}
        redo, self.redo = self.redo, False
        self.write([turn | {"finish": finish} | (stats or {})], redo)

    def write(self, turns: list[dict[str, Any]], redo: bool = False) -> None:
        """Logs turns (with any loaded history ahead of them) in one transaction."""
        if self.log is None:
            return
        log, turns = self.log, [*self.pending, *turns]

        def add() -> None:
            log.add_turns(self.conversation_id, self.kind, self.model, turns, redo)
            self.pending = []

        self._safely(add)

    def _safely(self, action: Any) -> None:
        try:
            action()
        except (sqlite3.Error, OSError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            warn(f"the chat log {db_path()} cannot be used ({reason}): this chat is not logged")
            if self.log is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.log.close()
            self.log = None


def log_generation(
    model: str, prompt: str, texts: list[str], settings: dict[str, Any], stats: dict[str, Any]
) -> None:
    """`gpt generate --log`: the prompt and each sample, as one conversation of kind generate.

    `stats` holds the batch's prompt_tokens, prefill and decode seconds and a list
    `sample_tokens` (tokens generated per sample).
    """
    counts = stats.get("sample_tokens") or [None] * len(texts)
    common = {k: v for k, v in stats.items() if k != "sample_tokens"}
    turns = [
        {"prompt": prompt, "response": text, "settings": settings, "generated_tokens": n} | common
        for text, n in zip(texts, counts, strict=True)
    ]
    ChatRecorder(model, kind="generate").write(turns)


def history_turns(messages: list[dict[str, str]], system: str | None) -> list[dict[str, Any]]:
    """Loaded messages as turns to log: each user message with the reply that follows it
    (a user message with no reply is left out, as a chat abandons it)."""
    turns: list[dict[str, Any]] = []
    prompt: str | None = None
    for message in messages:
        if message["role"] == "user":
            prompt = message["content"]
        elif message["role"] == "assistant":
            turn = {"prompt": prompt or "", "response": message["content"], "system": system}
            turns.append(turn | {"finish": "loaded"})
            prompt = None
    return turns
