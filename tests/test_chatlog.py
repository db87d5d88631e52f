"""The conversation log: `gpt chat` logging, `-c`/`--cid`/`--load`, `gpt logs`, `/save` and
`/load`, a damaged or locked database, two chats at once, and the REPL in a pseudo-terminal."""

from __future__ import annotations

import builtins
import json
import os
import select
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run

from gptcli.chat import ChatTemplate, add_chat_tokens, save_template
from gptcli.tokenizer import Tokenizer

TEXT = (
    "Once upon a time a fox said hello to an owl. Tell me a story, be brief!\n"
    "从前有一只狐狸，它讲了一个故事。你好\n"
)
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def chat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with `chatty`: a random tiny model with a chat template and a long context."""
    import torch

    from gptcli.checkpoint import write_model_dir
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    home = tmp_path_factory.mktemp("chatlog-store")
    tok = Tokenizer.train_char([TEXT])
    add_chat_tokens(tok)
    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, block_size=512)
    write_model_dir(home / "models" / "chatty", GPT(config), tok)
    save_template(home / "models" / "chatty", ChatTemplate())
    return home


@pytest.fixture
def logs(chat_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """GPTCLI_HOME at the chat store, GPTCLI_LOGS at a new directory; returns the database."""
    monkeypatch.setenv("GPTCLI_HOME", str(chat_store))
    monkeypatch.setenv("GPTCLI_LOGS", str(tmp_path / "logs"))
    monkeypatch.delenv("GPTCLI_NO_LOG", raising=False)
    return tmp_path / "logs" / "logs.db"


def rows(db: Path, sql: str, *params: object) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, params).fetchall()


def prompt_tokens(messages: list[dict[str, str]]) -> int:
    """What the chat template makes of `messages` for `chatty` (the prompt of the next reply)."""
    tok = Tokenizer.train_char([TEXT])
    add_chat_tokens(tok)
    ids, _ = ChatTemplate().render_ids(tok, messages, add_generation_prompt=True)
    return len(ids)


def chat_json(*args: str, input: str, code: int = 0):  # type: ignore[no-untyped-def]
    result = run("chat", "-m", "chatty", "--json", *args, input=input, code=code)
    return result, [json.loads(line) for line in result.stdout.splitlines()]


def test_chat_logs_each_turn_privately(logs: Path) -> None:
    _, turns = chat_json("-n", "4", "--temperature", "0", "--system", "Be brief.",
                         input="Hello fox\nTell me a story\n")  # fmt: skip
    assert stat.S_IMODE(logs.stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.parent.stat().st_mode) == 0o700
    logged = rows(
        logs,
        "SELECT c.kind, c.model, r.system, r.prompt, r.response, r.settings, r.prompt_tokens,"
        " r.generated_tokens, r.finish, r.decode_seconds FROM responses r JOIN conversations c"
        " ON c.id = r.conversation_id ORDER BY r.id",
    )
    assert [(r[0], r[1], r[2], r[3]) for r in logged] == [
        ("chat", "chatty", "Be brief.", "Hello fox"),
        ("chat", "chatty", "Be brief.", "Tell me a story"),
    ]
    assert [r[4] for r in logged] == [t["reply"] for t in turns]
    assert [r[6] for r in logged] == [t["prompt_tokens"] for t in turns]
    assert [r[7] for r in logged] == [t["generated_tokens"] for t in turns]
    settings = json.loads(logged[0][5])
    assert settings["temperature"] == 0 and settings["max_tokens"] == 4
    assert all(r[8] in ("stop", "length") and r[9] >= 0 for r in logged)
    assert len(rows(logs, "SELECT id FROM conversations")) == 1


def test_no_log_env_and_off_switch(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chat_json("-n", "2", "--no-log", input="one\n")
    assert not logs.exists()
    monkeypatch.setenv("GPTCLI_NO_LOG", "1")
    chat_json("-n", "2", input="two\n")
    monkeypatch.delenv("GPTCLI_NO_LOG")
    assert not logs.exists()
    run("logs", "off")
    chat_json("-n", "2", input="three\n")
    assert not logs.exists()
    chat_json("-n", "2", "--log", input="four\n")  # asked for: logged even when off
    run("logs", "on")
    chat_json("-n", "2", input="five\n")
    assert [r[0] for r in rows(logs, "SELECT prompt FROM responses ORDER BY id")] == [
        "four",
        "five",
    ]


def test_continue_keeps_history_model_system_and_settings(logs: Path) -> None:
    _, first = chat_json("-n", "5", "--temperature", "0", "--system", "Be brief.",
                         input="Hello fox\nTell me a story\n")  # fmt: skip
    # no -m: the model comes from the log too
    result = run("chat", "-c", "--json", "-n", "3", input="And then?\n")
    turn = json.loads(result.stdout)
    history = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello fox"},
        {"role": "assistant", "content": first[0]["reply"]},
        {"role": "user", "content": "Tell me a story"},
        {"role": "assistant", "content": first[1]["reply"]},
        {"role": "user", "content": "And then?"},
    ]
    assert turn["model"] == "chatty"
    assert turn["prompt_tokens"] == prompt_tokens(history)
    logged = rows(logs, "SELECT conversation_id, prompt, settings FROM responses ORDER BY id")
    assert len({r[0] for r in logged}) == 1 and [r[1] for r in logged][-1] == "And then?"
    settings = json.loads(logged[-1][2])
    assert settings["temperature"] == 0 and settings["max_tokens"] == 3  # kept, overridden
    # --cid with the start of an id; a new chat in between does not matter
    cid = logged[0][0]
    chat_json("-n", "2", input="another chat\n")
    again = json.loads(run("chat", "--cid", cid[:14], "--json", "-n", "2", input="Go on\n").stdout)
    assert again["prompt_tokens"] > turn["prompt_tokens"]
    assert rows(logs, "SELECT count(*) FROM responses WHERE conversation_id = ?", cid) == [(4,)]
    # -c takes the conversation with the newest turn, not the newest created
    latest = json.loads(run("logs", "-n", "1", "--json").stdout)
    assert latest[0]["id"] == cid


def test_continue_errors_change_nothing(logs: Path) -> None:
    result = run("chat", "-c", input="x\n", code=1)
    assert result.stderr == "error: no conversation to continue: the log has none yet\n"
    chat_json("-n", "2", input="Hello\n")
    result = run("chat", "--cid", "nope", input="x\n", code=1)
    assert result.stderr.startswith("error: no conversation 'nope' in the log")
    assert result.stderr.count("\n") == 1
    assert rows(logs, "SELECT prompt FROM responses") == [("Hello",)]
    result = run("chat", "-c", "--load", "x.jsonl", input="x\n", code=2)
    assert result.stderr.count("\n") == 1


def test_load_a_saved_conversation(logs: Path, tmp_path: Path) -> None:
    from gptcli.conversation import Conversation

    saved = tmp_path / "saved.jsonl"
    for n in (1, 2):
        conversation = Conversation(system=f"System {n}.")
        conversation.add_user(f"question {n}")
        conversation.add_assistant(f"answer {n}")
        conversation.save(saved)
    _, [turn] = chat_json("--load", f"{saved}:1", "-n", "2", input="more\n")
    expected = [
        {"role": "system", "content": "System 1."},
        {"role": "user", "content": "question 1"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "more"},
    ]
    assert turn["prompt_tokens"] == prompt_tokens(expected)
    _, [last] = chat_json("--load", str(saved), "-n", "2", input="more\n")  # the last one
    assert last["prompt_tokens"] == prompt_tokens(
        [{**m, "content": m["content"].replace("1", "2")} for m in expected]
    )
    # the loaded turns are logged ahead of the new one, so -c continues all of it
    logged = rows(logs, "SELECT prompt, response, finish, system FROM responses ORDER BY id")
    assert logged[:2] == [
        ("question 1", "answer 1", "loaded", "System 1."),
        ("more", turn["reply"], turn["finish"], "System 1."),
    ]
    for bad, message in (
        (f"{saved}:3", "holds 2 conversation(s): there is no :3"),
        (str(tmp_path / "missing.jsonl"), "cannot read"),
    ):
        result = run("chat", "-m", "chatty", "--load", bad, input="x\n", code=1)
        assert message in result.stderr and result.stderr.count("\n") == 1
    (tmp_path / "notes.jsonl").write_text('{"text": "not a chat"}\n')
    result = run("chat", "-m", "chatty", "--load", str(tmp_path / "notes.jsonl"), code=1)
    assert "notes.jsonl:1 is not a conversation" in result.stderr


def test_search_english_and_chinese(logs: Path) -> None:
    # one-character replies (-n 1, a char model): only the prompts can hold the words
    chat_json("-n", "1", input="Tell me about the fox\n讲一个狐狸的故事\nok\n")
    found = json.loads(run("logs", "search", "FOX", "--json").stdout)
    assert [t["prompt"] for t in found] == ["Tell me about the fox"]
    for words in (["狐狸的故事"], ["狐狸"], ["一个", "故事"]):  # trigrams, and LIKE for two
        found = json.loads(run("logs", "search", *words, "--json").stdout)
        assert [t["prompt"] for t in found] == ["讲一个狐狸的故事"], words
    # the user's words are quoted: FTS5 syntax is only text
    for words in (["fox-"], ['"fox'], ["fox", "AND", "OR"], ["NEAR(fox"], ["*"]):
        result = run("logs", "search", *words, "--jsonl")
        assert result.stdout == "", words
    markdown = run("logs", "search", "the fox").stdout
    assert "### Prompt\n\nTell me about the fox" in markdown and "conversation " in markdown
    assert "no turn in the log holds nothing-here" in run("logs", "search", "nothing-here").stderr


def test_search_without_fts5_uses_like(logs: Path) -> None:
    from gptcli.chatlog import ChatLog

    log = ChatLog(logs)
    log.add_turns("c1", "chat", "m", [{"prompt": "讲一个狐狸的故事", "response": "好"}])
    log.fts = False  # what a SQLite built without FTS5 gets
    assert [t.prompt for t in log.search(["狐狸的故事", "一个"], 0)] == ["讲一个狐狸的故事"]
    assert log.search(["fox"], 0) == []


def test_logs_list_show_rm_and_path(logs: Path) -> None:
    assert "the log is empty" in run("logs").stderr
    for text in ("first\n", "second\n", "third\n", "fourth\n"):
        chat_json("-n", "2", input=text)
    listed = json.loads(run("logs", "--json").stdout)
    assert [c["turns"][0]["prompt"] for c in listed] == ["second", "third", "fourth"]
    every = [json.loads(line) for line in run("logs", "-n", "0", "--jsonl").stdout.splitlines()]
    assert [c["turns"][0]["prompt"] for c in every] == ["first", "second", "third", "fourth"]
    markdown = run("logs", "-n", "2").stdout
    assert markdown.startswith(f"# Conversation {every[2]['id']}\n\nModel: **chatty**")
    assert markdown.index("third") < markdown.index("fourth")  # newest last
    one = run("logs", "--cid", every[0]["id"]).stdout
    assert "### Prompt\n\nfirst\n" in one and "second" not in one
    assert run("logs", "path").stdout == f"{logs}\n"
    removed = run("logs", "rm", "--cid", every[0]["id"])
    assert f"removed conversation {every[0]['id']} (1 turns)" in removed.stderr
    assert rows(logs, "SELECT count(*) FROM conversations") == [(3,)]
    assert json.loads(run("logs", "search", "first", "--json").stdout) == []
    result = run("logs", "rm", "--cid", every[0]["id"], code=1)
    assert result.stderr.startswith("error: no conversation")


def test_generate_logs_only_when_asked(logs: Path) -> None:
    run("generate", "Once", "-m", "chatty", "-n", "3")
    assert not logs.exists()
    out = json.loads(run("generate", "Once", "-m", "chatty", "-n", "3", "--seed", "5",
                         "--num-samples", "2", "--log", "--json").stdout)  # fmt: skip
    logged = rows(
        logs,
        "SELECT c.kind, r.prompt, r.response, r.generated_tokens, r.settings FROM responses r"
        " JOIN conversations c ON c.id = r.conversation_id ORDER BY r.id",
    )
    assert [(r[0], r[1], r[2], r[3]) for r in logged] == [
        ("generate", "Once", s["text"], s["generated_tokens"]) for s in out["samples"]
    ]
    assert json.loads(logged[0][4])["seed"] == 5
    assert "no conversation to continue" in run("chat", "-c", input="x\n", code=1).stderr


@pytest.mark.parametrize("damage", ["garbage", "locked"])
def test_a_damaged_or_locked_log_never_stops_a_chat(
    logs: Path, damage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gptcli.chatlog

    logs.parent.mkdir(parents=True)
    holder = None
    if damage == "garbage":
        logs.write_bytes(b"this is not a database at all" * 100)
    else:
        chat_json("-n", "2", input="before\n")
        monkeypatch.setattr(gptcli.chatlog, "BUSY_SECONDS", 0.2)
        holder = sqlite3.connect(logs, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    try:
        result, turns = chat_json("-n", "3", input="Hello\nAgain\n")
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    assert [t["user"] for t in turns] == ["Hello", "Again"]  # both answered
    warnings = result.stderr.splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: the chat log")
    assert "this chat is not logged" in warnings[0]
    if damage == "locked":
        assert rows(logs, "SELECT prompt FROM responses") == [("before",)]
    else:
        result = run("logs", code=1)
        assert result.stderr.startswith("error: cannot read the log")


def gpt_process(*args: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env |= {"NO_COLOR": "1", "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "gptcli", *args], env=env, **kwargs)


def test_two_chats_logging_at_once_keep_every_turn(logs: Path) -> None:
    turns = "".join(f"message {i}\n" for i in range(8)).encode()
    args = ("chat", "-m", "chatty", "-n", "2", "--threads", "1")
    procs = [
        gpt_process(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [p.communicate(turns, timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(b"warning" not in err for _, err in outputs)
    counts = rows(logs, "SELECT conversation_id, count(*) FROM responses GROUP BY 1")
    assert sorted(n for _, n in counts) == [8, 8]
    prompts = rows(logs, "SELECT prompt FROM responses WHERE conversation_id = ? ORDER BY id",
                   counts[0][0])  # fmt: skip
    assert [p for (p,) in prompts] == [f"message {i}" for i in range(8)]


class Terminal:
    """`gpt ARGS` on a pseudo-terminal: what a person at a terminal sees and types."""

    def __init__(self, *args: str) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = gpt_process(*args, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str, seconds: float = 120) -> str:
        deadline = time.monotonic() + seconds
        while text not in self.seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"no {text!r} on the terminal; it shows:\n{self.seen}")
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the process is gone
                chunk = b""
            if not chunk:
                raise AssertionError(f"the process ended before {text!r}:\n{self.seen}")
            self.seen += chunk.decode("utf-8", "replace")
        before, _, self.seen = self.seen.partition(text)
        return before

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            os.close(self.master)


def test_repl_on_a_terminal_continues_saves_and_loads(logs: Path, tmp_path: Path) -> None:
    saved = tmp_path / "saved.jsonl"
    term = Terminal("chat", "-m", "chatty", "-n", "4", "--temperature", "0")
    term.expect(">>> ")
    term.type("Hello fox")
    term.expect(">>> ")
    term.type(f"/save {saved}")
    assert "appended the conversation (2 messages)" in term.expect(">>> ")
    term.type("/exit")
    assert term.close() == 0
    [(cid, first_reply)] = rows(logs, "SELECT conversation_id, response FROM responses")

    term = Terminal("chat", "-c")
    assert f"continuing conversation {cid} (2 messages)" in term.expect(">>> ")
    term.type("/show")
    shown = term.expect(">>> ")
    assert "chatty" in shown and "(2 messages)" in shown
    term.type("Again")
    term.expect(">>> ")
    term.type(f"/load {saved}")
    assert "loaded 2 messages" in term.expect(">>> ")
    term.type(f"/load {tmp_path / 'nothing.jsonl'}")
    assert "cannot read" in term.expect(">>> ")  # a message; the chat goes on
    term.type("Third")
    term.expect(">>> ")
    os.write(term.master, b"\x04")  # Ctrl+D leaves
    assert term.close() == 0
    logged = rows(logs, "SELECT conversation_id, prompt, response FROM responses ORDER BY id")
    assert [(c == cid, p) for c, p, _ in logged] == [
        (True, "Hello fox"),
        (True, "Again"),
        (False, "Hello fox"),  # the loaded conversation, a new one in the log
        (False, "Third"),
    ]
    assert logged[2][2] == first_reply
    saved_messages = json.loads(saved.read_text())["messages"]
    assert saved_messages == [
        {"role": "user", "content": "Hello fox"},
        {"role": "assistant", "content": first_reply},
    ]


def test_regen_and_clear_in_the_log(logs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gptcli.chat import load_template
    from gptcli.chatrecorder import ChatRecorder
    from gptcli.checkpoint import load_model
    from gptcli.cli.chat import Repl
    from gptcli.conversation import ChatSession, ChatSettings

    typed = iter(["/set max_tokens 3", "Hi", "/regen", "/clear", "Bye"])

    def fake_input(prompt: str = "") -> str:
        item = next(typed, None)
        if item is None:
            raise EOFError
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    loaded = load_model(Path(os.environ["GPTCLI_HOME"]) / "models" / "chatty")
    template = load_template(loaded.path, loaded.tokenizer)
    session = ChatSession(loaded.model, loaded.tokenizer, template, ChatSettings(seed=1))
    Repl(session, loaded.name, loaded.path, ChatRecorder(loaded.name)).loop()
    logged = rows(logs, "SELECT conversation_id, prompt, replaced FROM responses ORDER BY id")
    assert [(p, r) for _, p, r in logged] == [("Hi", 1), ("Hi", 0), ("Bye", 0)]
    assert logged[0][0] == logged[1][0] != logged[2][0]
    markdown = run("logs", "--cid", logged[0][0]).stdout
    assert markdown.count("redone with /regen") == 1


def test_a_continued_conversation_is_cut_to_the_context(
    logs: Path, trained: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcli.cli.chat import CONTEXT_NOTICE

    monkeypatch.setenv("GPTCLI_HOME", str(trained["home"]))  # `tiny`: a context of 32 tokens
    turns = "Once upon a time there was a hen\nShe lived by the lane\n"
    run("chat", "-m", "tiny", "-n", "12", "--seed", "3", input=turns)
    result = run("chat", "-c", "--json", input="And then\n")
    assert result.stderr.count(CONTEXT_NOTICE) == 1  # the oldest turns are left out
    assert json.loads(result.stdout)["model"] == "tiny"
    prompts = rows(logs, "SELECT prompt FROM responses ORDER BY id")
    assert [p for (p,) in prompts] == [*turns.splitlines(), "And then"]  # the log keeps all
