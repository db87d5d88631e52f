"""The conversation log: every `gpt chat` turn (and each `gpt generate --log`) in one SQLite file.

Owns the database: its place, schema, full-text search and the on/off switch (what a chat
writes through is chatrecorder.py). Knows messages as plain dicts and settings and statistics as
plain values; nothing about models, torch, terminals or HTTP, so `gpt logs` stays light.

The file lives in the user's data directory (not the model store, which is a cache), or in
`$GPTCLI_LOGS`. It is created with mode 0600, and every turn is written in its own
transaction: a crash mid-reply loses at most that reply. Search uses FTS5 with the trigram
tokenizer, so unsegmented text (Chinese, Japanese) is found too; words shorter than three
characters, which trigrams cannot match, and databases without FTS5 fall back to LIKE.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gptcli.errors import GptError

DB_NAME = "logs.db"
OFF_FILE = "logs-off"  # present: `gpt chat` does not log unless asked
BUSY_SECONDS = 10.0  # how long a write waits for another process's transaction

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,            -- 'chat' or 'generate'
    model TEXT NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    datetime_utc TEXT NOT NULL,
    model TEXT NOT NULL,
    system TEXT,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    settings TEXT NOT NULL,        -- JSON: sampling, max_tokens, seed
    prompt_tokens INTEGER,
    generated_tokens INTEGER,
    prefill_seconds REAL,
    decode_seconds REAL,
    finish TEXT,
    replaced INTEGER NOT NULL DEFAULT 0   -- 1: redone with /regen, not part of the history
);
CREATE INDEX IF NOT EXISTS responses_conversation ON responses(conversation_id, id);
"""
FTS_SCHEMA = [
    "CREATE VIRTUAL TABLE IF NOT EXISTS responses_fts USING fts5(prompt, response,"
    " content='responses', content_rowid='id', tokenize='trigram')",
    "CREATE TRIGGER IF NOT EXISTS responses_ai AFTER INSERT ON responses BEGIN"
    " INSERT INTO responses_fts(rowid, prompt, response)"
    " VALUES (new.id, new.prompt, new.response); END",
    "CREATE TRIGGER IF NOT EXISTS responses_ad AFTER DELETE ON responses BEGIN"
    " INSERT INTO responses_fts(responses_fts, rowid, prompt, response)"
    " VALUES ('delete', old.id, old.prompt, old.response); END",
]


def logs_dir() -> Path:
    env = os.environ.get("GPTCLI_LOGS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("gptcli"))


def db_path() -> Path:
    return logs_dir() / DB_NAME


def logging_on() -> bool:
    """The default for `gpt chat`: on, unless GPTCLI_NO_LOG is set or `gpt logs off` was run."""
    if os.environ.get("GPTCLI_NO_LOG", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    return not (logs_dir() / OFF_FILE).exists()


def set_logging(on: bool) -> None:
    """`gpt logs on|off`."""
    flag = logs_dir() / OFF_FILE
    try:
        if on:
            flag.unlink(missing_ok=True)
        else:
            flag.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            flag.touch()
    except OSError as exc:
        raise GptError(f"cannot change {flag}: {exc.strerror or exc}") from None


def new_id() -> str:
    """A conversation id that sorts by time: milliseconds in hex, then 6 random hex digits."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(3)}"


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")


@dataclass
class Turn:
    """One logged prompt and its response (a chat turn, or a generate call)."""

    id: int
    conversation_id: str
    datetime_utc: str
    model: str
    system: str | None
    prompt: str
    response: str
    settings: dict[str, Any]
    prompt_tokens: int | None = None
    generated_tokens: int | None = None
    prefill_seconds: float | None = None
    decode_seconds: float | None = None
    finish: str | None = None
    replaced: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoggedConversation:
    id: str
    kind: str
    model: str
    created: str
    turns: list[Turn] = field(default_factory=list)

    @property
    def kept(self) -> list[Turn]:
        """The turns that make up the history (without replies redone by /regen)."""
        return [t for t in self.turns if not t.replaced]

    def messages(self) -> tuple[str | None, list[dict[str, str]]]:
        """(system prompt, user/assistant messages) to continue this conversation with."""
        kept = self.kept
        system = kept[-1].system if kept else None
        messages: list[dict[str, str]] = []
        for turn in kept:
            if turn.prompt:
                messages.append({"role": "user", "content": turn.prompt})
            messages.append({"role": "assistant", "content": turn.response})  # even if empty
        return system, messages

    @property
    def settings(self) -> dict[str, Any]:
        kept = self.kept
        return kept[-1].settings if kept else {}

    def to_dict(self) -> dict[str, Any]:
        head = {"id": self.id, "kind": self.kind, "model": self.model, "created": self.created}
        return head | {"turns": [t.to_dict() for t in self.turns]}


def quote_fts(word: str) -> str:
    """One word as an FTS5 string: `-`, `"`, AND, OR, NEAR and `*` lose their meaning."""
    return '"' + word.replace('"', '""') + '"'


def like_pattern(word: str) -> str:
    escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class ChatLog:
    """The log database. Every method raises sqlite3.Error when the file is unusable."""

    def __init__(self, path: Path | None = None, create: bool = True) -> None:
        self.path = path or db_path()
        if not self.path.exists():
            if not create:
                self.db = sqlite3.connect(":memory:")  # nothing logged yet: an empty log
                self._setup()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        self.db = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None)
        self._setup()

    def _setup(self) -> None:
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        with contextlib.suppress(sqlite3.OperationalError):  # e.g. read-only: keep its mode
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode = WAL")
        names = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master")}
        if {"conversations", "responses", "responses_fts"} <= names:
            self.fts = True  # set up already: reading takes no write lock
            return
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            self.fts = self._setup_fts()

    def _setup_fts(self) -> bool:
        exists = self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'responses_fts'"
        ).fetchone()
        if exists:
            return True
        try:
            self.db.execute("SAVEPOINT fts")
            for statement in FTS_SCHEMA:
                self.db.execute(statement)
            self.db.execute("INSERT INTO responses_fts(responses_fts) VALUES ('rebuild')")
            self.db.execute("RELEASE fts")
            return True
        except sqlite3.OperationalError:  # no FTS5 or no trigram tokenizer: LIKE only
            self.db.execute("ROLLBACK TO fts")
            self.db.execute("RELEASE fts")
            return False

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT: writers queue up (busy timeout) instead of failing."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()

    # -- writing ----------------------------------------------------------------------------
    def add_turns(
        self,
        conversation_id: str,
        kind: str,
        model: str,
        turns: list[dict[str, Any]],
        replace_last: bool = False,
    ) -> None:
        """Writes turns (Turn fields as a dict) in one transaction, creating the conversation
        when new; with `replace_last`, the conversation's last kept turn is marked redone."""
        with self.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO conversations (id, kind, model, created) VALUES (?,?,?,?)",
                (conversation_id, kind, model, now_utc()),
            )
            if replace_last:
                db.execute(
                    "UPDATE responses SET replaced = 1 WHERE id = (SELECT max(id) FROM responses"
                    " WHERE conversation_id = ? AND replaced = 0)",
                    (conversation_id,),
                )
            for turn in turns:
                db.execute(
                    "INSERT INTO responses (conversation_id, datetime_utc, model, system, prompt,"
                    " response, settings, prompt_tokens, generated_tokens, prefill_seconds,"
                    " decode_seconds, finish) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        conversation_id,
                        turn.get("datetime_utc") or now_utc(),
                        turn.get("model", model),
                        turn.get("system"),
                        turn.get("prompt", ""),
                        turn.get("response", ""),
                        json.dumps(turn.get("settings", {})),
                        turn.get("prompt_tokens"),
                        turn.get("generated_tokens"),
                        turn.get("prefill_seconds"),
                        turn.get("decode_seconds"),
                        turn.get("finish"),
                    ),
                )

    def remove(self, conversation_id: str) -> int:
        """Deletes a conversation and its turns; returns how many turns went."""
        with self.transaction() as db:
            count = db.execute(
                "SELECT count(*) FROM responses WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()[0]
            db.execute("DELETE FROM responses WHERE conversation_id = ?", (conversation_id,))
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        return count

    # -- reading ----------------------------------------------------------------------------
    def resolve(self, cid: str) -> str:
        """The full id of a conversation given its id or a unique start of it."""
        rows = self.db.execute(
            "SELECT id FROM conversations WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 2",
            (cid, like_pattern(cid)[1:]),
        ).fetchall()
        exact = [r["id"] for r in rows if r["id"] == cid]
        if exact:
            return exact[0]
        if not rows or not cid:
            raise GptError(f"no conversation {cid!r} in the log (gpt logs lists them)")
        if len(rows) > 1:
            raise GptError(f"{cid!r} starts more than one conversation id: give more of it")
        return rows[0]["id"]

    def conversation(self, conversation_id: str) -> LoggedConversation:
        row = self.db.execute(
            "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        if row is None:
            raise GptError(f"no conversation {conversation_id!r} in the log (gpt logs lists them)")
        turns = self.db.execute(
            "SELECT * FROM responses WHERE conversation_id = ? ORDER BY id", (conversation_id,)
        ).fetchall()
        return LoggedConversation(
            row["id"], row["kind"], row["model"], row["created"], [to_turn(t) for t in turns]
        )

    def latest(self, count: int, kind: str | None = None) -> list[LoggedConversation]:
        """The `count` conversations with the newest turns (0: all), oldest first."""
        where = "WHERE c.kind = ?" if kind else ""
        limit = "LIMIT ?" if count > 0 else ""
        params: list[Any] = [kind] if kind else []
        params += [count] if count > 0 else []
        rows = self.db.execute(
            "SELECT c.id, max(r.id) AS last FROM conversations c JOIN responses r"
            f" ON r.conversation_id = c.id {where} GROUP BY c.id ORDER BY last DESC {limit}",
            params,
        ).fetchall()
        return [self.conversation(r["id"]) for r in reversed(rows)]

    def search(self, words: list[str], count: int) -> list[Turn]:
        """Turns whose prompt or response holds every word, newest last (`count` 0: all)."""
        words = [w for w in words if w.strip()]
        if not words:
            raise GptError("search needs at least one word")
        long = [w for w in words if len(w) >= 3] if self.fts else []
        short = [w for w in words if w not in long]
        conditions, params = [], []
        if long:
            conditions.append(
                "r.id IN (SELECT rowid FROM responses_fts WHERE responses_fts MATCH ?)"
            )
            params.append(" ".join(quote_fts(w) for w in long))
        for word in short:
            conditions.append("(r.prompt LIKE ? ESCAPE '\\' OR r.response LIKE ? ESCAPE '\\')")
            params += [like_pattern(word)] * 2
        limit = "LIMIT ?" if count > 0 else ""
        params += [count] if count > 0 else []
        rows = self.db.execute(
            f"SELECT r.* FROM responses r WHERE {' AND '.join(conditions)}"
            f" ORDER BY r.id DESC {limit}",
            params,
        ).fetchall()
        return [to_turn(r) for r in reversed(rows)]


def to_turn(row: sqlite3.Row) -> Turn:
    values = dict(row)
    values["settings"] = json.loads(values["settings"] or "{}")
    values["replaced"] = bool(values["replaced"])
    return Turn(**values)


def open_log(create: bool = False) -> ChatLog:
    """The log for `gpt logs`: a damaged or locked file is one GptError line."""
    path = db_path()
    try:
        return ChatLog(path, create=create)
    except (sqlite3.Error, OSError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise GptError(f"cannot read the log {path}: {reason}") from None
