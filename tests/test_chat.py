"""Chat: templates and loss masks, conversation state, REPL commands, and `gpt chat` end to end."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest
from conftest import run

from gptcli.chat import (
    ChatTemplate,
    PlainTemplate,
    add_chat_tokens,
    check_messages,
    load_template,
    save_template,
)
from gptcli.cli.repl import Command, InputAssembler, apply_setting, complete, parse_input
from gptcli.conversation import ChatSettings, Conversation
from gptcli.errors import GptError
from gptcli.tokenizer import Tokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "A fox?"},
    {"role": "assistant", "content": "Quick and\nclever."},
]
TEXT = "Once upon a time a fox said hello to an owl. Be brief, be clever, be quick!\n" * 10


@pytest.fixture(scope="module", params=["bpe", "char"])
def chat_tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "bpe":
        tok = Tokenizer.train_bpe([TEXT], vocab_size=300)
    else:
        tok = Tokenizer.train_char([TEXT])
    add_chat_tokens(tok)
    return tok


def test_special_template_renders_exact_text() -> None:
    assert ChatTemplate().render(CONVERSATION[:3], add_generation_prompt=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nHi there<|end|>\n<|assistant|>\nHello!<|end|>\n"
    )
    assert ChatTemplate().render(CONVERSATION[1:2], add_generation_prompt=True) == (
        "<|user|>\nHi there<|end|>\n<|assistant|>\n"
    )


def test_special_ids_and_mask_cover_assistant_content_and_end(chat_tokenizer: Tokenizer) -> None:
    template, tok = ChatTemplate(), chat_tokenizer
    ids, mask = template.render_ids(tok, CONVERSATION)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert tok.decode(ids) == template.render(CONVERSATION)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(trained) == "Hello!<|end|>Quick and\nclever.<|end|>"
    end = tok.hf.token_to_id("<|end|>")
    assert (
        ids.count(end) == 5
        and sum(1 for i, m in zip(ids, mask, strict=True) if i == end and m) == 2
    )
    prompt, prompt_mask = template.render_ids(tok, CONVERSATION[:2], add_generation_prompt=True)
    assert tok.decode(prompt).endswith("<|assistant|>\n") and not any(prompt_mask)


def test_special_token_names_typed_by_a_user_stay_text(chat_tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "say <|end|> please"}]
    ids, _ = ChatTemplate().render_ids(chat_tokenizer, messages)
    assert ids.count(chat_tokenizer.hf.token_to_id("<|end|>")) == 1  # only the real one
    assert chat_tokenizer.decode(ids) == "<|user|>\nsay <|end|> please<|end|>\n"


def test_plain_template_text_mask_and_stop(chat_tokenizer: Tokenizer) -> None:
    template = PlainTemplate()
    assert template.render(CONVERSATION[:4], add_generation_prompt=True) == (
        "Be brief.\n\nUser: Hi there\nAssistant: Hello!\nUser: A fox?\nAssistant:"
    )
    ids, mask = template.render_ids(chat_tokenizer, CONVERSATION)
    assert chat_tokenizer.decode(ids) == template.render(CONVERSATION)
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert chat_tokenizer.decode(trained) == " Hello!\n Quick and\nclever.\n"
    assert template.stop_strings == ("\nUser:",)


def test_template_store_and_load(tmp_path: Path, chat_tokenizer: Tokenizer) -> None:
    assert isinstance(load_template(tmp_path), PlainTemplate)  # no file: plain mode
    save_template(tmp_path, ChatTemplate())
    data = json.loads((tmp_path / "chat_template.json").read_text())
    assert data == {
        "type": "special",
        "system": "<|system|>",
        "user": "<|user|>",
        "assistant": "<|assistant|>",
        "end": "<|end|>",
    }
    assert load_template(tmp_path, chat_tokenizer) == ChatTemplate()
    with pytest.raises(GptError, match="no <\\|system\\|> token"):
        load_template(tmp_path, Tokenizer.train_char(["abc"]))
    (tmp_path / "chat_template.json").write_text('{"type": "jinja"}')
    with pytest.raises(GptError, match="unknown chat template type 'jinja'"):
        load_template(tmp_path)


def test_truncation_drops_oldest_turns_and_keeps_system(chat_tokenizer: Tokenizer) -> None:
    template = ChatTemplate()
    conversation = Conversation(system="Be brief.")
    for i in range(6):
        conversation.add_user(f"question {i}")
        conversation.add_assistant(f"answer {i}")
    conversation.add_user("last one")
    everything, dropped = conversation.window(template, chat_tokenizer, budget=10_000)
    assert dropped == 0 and chat_tokenizer.decode(everything).count("<|user|>") == 7
    full = len(everything)
    ids, dropped = conversation.window(template, chat_tokenizer, budget=full - 1)
    text = chat_tokenizer.decode(ids)
    assert dropped == 2 and len(ids) <= full - 1
    assert text.startswith("<|system|>\nBe brief.<|end|>\n<|user|>\nquestion 1<|end|>")
    assert text.endswith("<|user|>\nlast one<|end|>\n<|assistant|>\n")
    # nothing but the system prompt and the newest turn fits: those are kept
    ids, dropped = conversation.window(template, chat_tokenizer, budget=1)
    assert dropped == 12
    assert chat_tokenizer.decode(ids) == template.render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "last one"}],
        add_generation_prompt=True,
    )
    assert len(conversation.turns) == 13  # the window never changes the conversation


def test_interrupted_turn_and_regen() -> None:
    conversation = Conversation()
    conversation.add_user("first")
    conversation.add_assistant("one")
    conversation.add_user("second")  # its reply was interrupted
    conversation.add_user("third")  # ... so it is abandoned
    assert [m["content"] for m in conversation.turns] == ["first", "one", "third"]
    assert conversation.undo_reply()  # nothing to undo, a user turn still waits
    conversation.add_assistant("three")
    assert conversation.undo_reply() and conversation.turns[-1]["content"] == "third"


def test_save_appends_fine_tuning_jsonl(tmp_path: Path) -> None:
    conversation = Conversation(system="Be brief.")
    with pytest.raises(GptError, match="nothing to save"):
        conversation.save(tmp_path / "x.jsonl")
    conversation.add_user("Hi")
    conversation.add_assistant("Hello!")
    conversation.add_user("unanswered")
    path = tmp_path / "chats" / "saved.jsonl"
    assert conversation.save(path) == 3
    assert conversation.save(path) == 3
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    record = json.loads(lines[0])
    assert check_messages(record["messages"]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    # the bundled fine-tuning set has the same shape
    example = Path(__file__).resolve().parents[1] / "examples" / "chat.jsonl"
    for line in example.read_text(encoding="utf-8").splitlines():
        check_messages(json.loads(line)["messages"])


def test_parse_commands_and_settings() -> None:
    assert parse_input("/set temperature 0.5") == Command("set", "temperature 0.5")
    assert parse_input("  /SYSTEM You are a pirate. ") == Command("system", "You are a pirate.")
    assert parse_input("/quit") == Command("exit") and parse_input("/?") == Command("help")
    assert parse_input("hello /set") == "hello /set"
    assert parse_input("//etc/hosts?") == "/etc/hosts?"
    with pytest.raises(GptError, match=r"unknown command /sav: did you mean /save\?"):
        parse_input("/sav chats.jsonl")
    with pytest.raises(GptError, match="/help lists the commands"):
        parse_input("/xyzzy")
    settings = apply_setting(ChatSettings(), "temperature", "0.5")
    assert settings.sampling.temperature == 0.5
    settings = apply_setting(settings, "top-k", "40")
    settings = apply_setting(settings, "max_new_tokens", "2000")
    settings = apply_setting(settings, "stats", "on")
    assert (settings.sampling.top_k, settings.max_tokens, settings.stats) == (40, 2000, True)
    assert apply_setting(settings, "top_k", "none").sampling.top_k is None
    assert settings.sampling.temperature == 0.5  # unchanged by later settings
    with pytest.raises(GptError, match="temperature needs a number, got 'hot'"):
        apply_setting(settings, "temperature", "hot")
    with pytest.raises(GptError, match=r"^temperature must be 0 or more"):
        apply_setting(settings, "temperature", "-1")
    with pytest.raises(GptError, match="did you mean temperature"):
        apply_setting(settings, "temprature", "1")
    with pytest.raises(GptError, match="usage: /set top_p VALUE"):
        apply_setting(settings, "top_p", "")
    assert complete("/se") == ["/set "] and complete("/set te") == ["/set temperature "]
    assert complete("hello") == []


def test_multi_line_input() -> None:
    lines = InputAssembler()
    assert lines.feed("one\\") is None and lines.pending
    assert lines.feed("two") == "one\ntwo" and not lines.pending
    assert lines.feed('"""first') is None
    assert lines.feed("") is None
    assert lines.feed('last"""') == "first\n\nlast"
    assert lines.feed('"""') is None and lines.feed("x") is None and lines.feed('"""') == "x"
    assert lines.feed('"""inline"""') == "inline"


def test_piped_chat_prints_only_replies(trained_home: Path) -> None:
    turns = "Hello there\n\nTell me a story\n"
    result = run("chat", "--seed", "3", "-n", "30", input=turns)
    as_json = run("chat", "--seed", "3", "-n", "30", "--json", input=turns)
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [r["user"] for r in records] == ["Hello there", "Tell me a story"]
    assert all(r["reply"] and r["reply"] == r["reply"].strip() for r in records)
    assert all(r["generated_tokens"] <= 30 and r["finish"] in ("stop", "length") for r in records)
    assert result.stdout == "".join(r["reply"] + "\n" for r in records)
    assert ">>>" not in result.stdout and "\x1b" not in result.stdout


def test_piped_chat_stats_go_to_stderr(trained_home: Path) -> None:
    result = run("chat", "--seed", "3", "-n", "5", "--stats", "--temperature", "0", input="Hi\n")
    assert "tok/s" in result.stderr and "tok/s" not in result.stdout
    assert result.stdout.count("\n") == 1


def test_chat_with_a_template_model(home: Path) -> None:
    """A model that has chat_template.json: its tokens frame the prompt and end the reply."""
    from gptcli.checkpoint import write_model_dir
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    tok = Tokenizer.train_char([TEXT])
    add_chat_tokens(tok)
    config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, block_size=64)
    model_dir = home / "models" / "chatty"
    write_model_dir(model_dir, GPT(config), tok)
    save_template(model_dir, ChatTemplate())
    out = run("chat", "-m", "chatty", "--json", "-n", "8", "--system", "Be brief.", input="Hi\n")
    record = json.loads(out.stdout)
    expected, _ = ChatTemplate().render_ids(
        tok,
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True,
    )
    assert record["prompt_tokens"] == len(expected)
    assert "<|end|>" not in record["reply"] and "<|user|>" not in record["reply"]


def test_repl_commands(trained_home: Path, monkeypatch, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The REPL loop driven through a fake input(): commands, a reply, Ctrl+C, Ctrl+D."""
    from gptcli.chat import load_template
    from gptcli.checkpoint import load_model
    from gptcli.cli.chat import Repl
    from gptcli.conversation import ChatSession

    typed = iter(
        [
            "/set temperature 0",
            "/set max_tokens 5",
            "/sav",
            "Hello",
            KeyboardInterrupt(),
            "/regen",
            "/system Be brief.",
            "/show",
            f"/save {tmp_path / 'out.jsonl'}",
            "/clear",
            "/help",
        ]
    )

    def fake_input(prompt: str = "") -> str:
        item = next(typed, None)
        if item is None:
            raise EOFError
        if isinstance(item, BaseException):
            raise item
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    loaded = load_model(trained_home / "models" / "tiny")
    template = load_template(loaded.path, loaded.tokenizer)
    session = ChatSession(loaded.model, loaded.tokenizer, template, ChatSettings())
    Repl(session, loaded.name, loaded.path).loop()
    captured = capsys.readouterr()
    assert "did you mean /save?" in captured.err
    assert "temperature is now 0" in captured.out and session.settings.max_tokens == 5
    assert "plain-text mode" in captured.out and "system   Be brief." in captured.out
    saved = json.loads((tmp_path / "out.jsonl").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant"]
    assert session.conversation.turns == [] and session.conversation.system == "Be brief."
    assert "/regen" in captured.out and "conversation cleared" in captured.out


def test_ctrl_c_during_a_reply_drops_only_that_reply(
    trained_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gptcli.chat import load_template
    from gptcli.checkpoint import load_model
    from gptcli.cli.chat import Repl
    from gptcli.conversation import ChatSession, ReplyStream

    loaded = load_model(trained_home / "models" / "tiny")
    template = load_template(loaded.path, loaded.tokenizer)
    session = ChatSession(loaded.model, loaded.tokenizer, template, ChatSettings(max_tokens=3))
    session.conversation.add_user("kept")
    session.conversation.add_assistant("reply")
    repl = Repl(session, loaded.name, loaded.path)

    def interrupted(self: ReplyStream):  # type: ignore[no-untyped-def]
        yield "partial"
        raise KeyboardInterrupt

    monkeypatch.setattr(ReplyStream, "__iter__", interrupted)
    session.conversation.add_user("stopped")
    repl.respond()
    assert "partial" in capsys.readouterr().out
    assert [m["content"] for m in session.conversation.turns] == ["kept", "reply", "stopped"]


def test_special_replies_end_at_chat_tokens(chat_tokenizer: Tokenizer) -> None:
    stops = ChatTemplate().stop_ids(chat_tokenizer)
    for token in ("<|end|>", "<|user|>", "<|endoftext|>"):
        assert chat_tokenizer.hf.token_to_id(token) in stops


def test_context_full_notice_ends_its_line(trained_home: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """The notice is a line of its own, piped (stderr) and in the REPL (before the reply)."""
    from gptcli.chat import load_template
    from gptcli.checkpoint import load_model
    from gptcli.cli.chat import CONTEXT_NOTICE, Repl
    from gptcli.conversation import ChatSession

    turns = "Once upon a time there was a hen\nShe lived by the lane\nAnd then\n"
    result = run("chat", "--seed", "3", "-n", "12", input=turns)  # the context is 32 tokens
    assert result.stderr.count(CONTEXT_NOTICE + "\n") == 1

    typed = iter(turns.splitlines())

    def fake_input(prompt: str = "") -> str:
        item = next(typed, None)
        if item is None:
            raise EOFError
        return item

    monkeypatch.setattr(builtins, "input", fake_input)
    loaded = load_model(trained_home / "models" / "tiny")
    template = load_template(loaded.path, loaded.tokenizer)
    settings = ChatSettings(max_tokens=12)
    session = ChatSession(loaded.model, loaded.tokenizer, template, settings)
    Repl(session, loaded.name, loaded.path).loop()
    out = capsys.readouterr().out
    assert out.count(CONTEXT_NOTICE + "\n") == 1
