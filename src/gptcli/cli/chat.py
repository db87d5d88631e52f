"""`gpt chat`: a REPL on a terminal; a clean pipe (one user turn per line) otherwise.

Templates live in gptcli.chat, conversation state and reply streaming in gptcli.conversation,
the REPL's command language in cli/repl.py; this module reads input, runs the commands and
prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.chatstart import choose_start, log_turn, split_system
from gptcli.cli.console import err, info, out, print_json
from gptcli.cli.options import ModelOption
from gptcli.cli.repl import (
    SETTINGS,
    Command,
    InputAssembler,
    apply_setting,
    complete,
    describe_settings,
    help_text,
    parse_input,
)
from gptcli.cli.sampling import (
    SAMPLING_FLAGS,
    DeviceOption,
    DtypeOption,
    FrequencyPenaltyOption,
    MinPOption,
    PresencePenaltyOption,
    RepetitionPenaltyOption,
    SeedOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    sampling_settings,
)
from gptcli.errors import GptError
from gptcli.hardware import sleeping_omp_threads

if TYPE_CHECKING:
    from gptcli.chatrecorder import ChatRecorder
    from gptcli.conversation import ChatSession

HELP = """Chat with a model: a REPL with line editing, history and streamed replies.

Models fine-tuned for chat use their chat template, others a plain 'User: / Assistant:' one. \
Type /help in the chat for its commands.

When stdin is not a terminal, each line is a user turn and only the replies are printed.

Each turn is logged (gpt logs shows them) unless --no-log, GPTCLI_NO_LOG=1 or `gpt logs off`; \
-c continues the latest conversation, --cid a chosen one, --load one saved with /save.

Example: gpt chat -m tiny --system "You tell short stories."
"""

CONTEXT_NOTICE = "(the context is full: the oldest turns are left out from now on)"


def chat(
    ctx: typer.Context,
    model: ModelOption = None,
    system: Annotated[str | None, typer.Option(help="System prompt for the conversation.")] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Most tokens per reply.")
    ] = 256,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    min_p: MinPOption = 0.05,
    repetition_penalty: RepetitionPenaltyOption = 1.0,
    presence_penalty: PresencePenaltyOption = 0.0,
    frequency_penalty: FrequencyPenaltyOption = 0.0,
    seed: SeedOption = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    stats: Annotated[
        bool, typer.Option("--stats", help="Prompt and generation tokens/s on stderr.")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="Read turns from stdin; one JSON object per turn.")
    ] = False,
    cont: Annotated[
        bool,
        typer.Option(
            "--continue", "-c", help="Continue the latest conversation (its model and settings)."
        ),
    ] = False,
    cid: Annotated[
        str | None, typer.Option("--cid", help="Continue this conversation of the log.")
    ] = None,
    load_from: Annotated[
        str | None,
        typer.Option(
            "--load",
            help="Start from the last conversation in a /save file (FILE:N: the N-th).",
            metavar="FILE[:N]",
        ),
    ] = None,
    log: Annotated[
        bool | None,
        typer.Option(
            "--log/--no-log",
            help="Log this chat (default: on, unless GPTCLI_NO_LOG=1 or `gpt logs off`).",
            show_default=False,
        ),
    ] = None,
) -> None:
    sleeping_omp_threads()
    from gptcli.chat import load_template
    from gptcli.chatlog import logging_on
    from gptcli.chatrecorder import ChatRecorder
    from gptcli.conversation import ChatSession, ChatSettings
    from gptcli.inference.loader import load

    flags = locals()
    values: dict[str, Any] = {name: flags[name] for name in SAMPLING_FLAGS}
    values |= {"max_tokens": max_tokens, "seed": seed}
    start = choose_start(ctx, values, model, system, cont, cid, load_from)
    max_tokens, seed = values.pop("max_tokens"), values.pop("seed")
    sampling = sampling_settings(values)
    settings = ChatSettings(sampling=sampling, max_tokens=max_tokens, seed=seed, stats=stats)
    model, system, resumed = start.model, start.system, start.resumed
    loaded = load(model, device, dtype, threads)
    template = load_template(loaded.path, loaded.tokenizer)
    session = ChatSession(loaded.model, loaded.tokenizer, template, settings, system)
    session.conversation.turns = list(start.history)
    recorder = ChatRecorder(
        loaded.name,
        enabled=logging_on() if log is None else log,
        conversation_id=resumed.id if resumed else None,
        history=None if resumed else start.history,
        system=session.conversation.system,
    )
    if sys.stdin.isatty() and not json_out:
        repl = Repl(session, loaded.name, loaded.path, recorder)
        repl.run(f"continuing conversation {resumed.id}" if resumed else None)
    else:
        run_piped(session, loaded.name, json_out, recorder)


def run_piped(
    session: ChatSession, name: str, json_out: bool, recorder: ChatRecorder | None = None
) -> None:
    """Each non-empty stdin line is a user turn; stdout gets only the replies."""
    notified = False
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise GptError(f"stdin line {number} is not UTF-8 text") from None
        if not text:
            continue
        session.conversation.add_user(text)
        stream, dropped = session.reply()
        if dropped and not notified:
            info(CONTEXT_NOTICE)
            notified = True
        for piece in stream:
            if not json_out:
                sys.stdout.write(piece)
                sys.stdout.flush()
        session.conversation.add_assistant(stream.text)
        if recorder is not None:
            log_turn(recorder, session, stream)
        if json_out:
            turn = {"model": name, "user": text, "reply": stream.text, "finish": stream.finish}
            print_json(turn | stream.stats.to_dict())
        else:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if session.settings.stats:
            info(stream.stats.summary())


class Repl:
    """The interactive loop: read a message or a command, stream the reply, repeat."""

    def __init__(
        self, session: ChatSession, name: str, path: Path, recorder: ChatRecorder | None = None
    ) -> None:
        self.session = session
        self.recorder = recorder
        self.name = name
        self.path = path
        self.notified = False  # the context-full notice is shown once per conversation
        color = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        # \001 and \002 tell readline the escapes take no room, so line editing lines up.
        bold, reset = ("\001\033[1;36m\002", "\001\033[0m\002") if color else ("", "")
        self.prompt = f"{bold}>>> {reset}"
        self.continuation = f"{bold}... {reset}"

    def run(self, greeting: str | None = None) -> None:
        history = setup_readline()
        say(f"Chatting with {self.name} · {self.session.template.describe()}", "bold")
        if greeting:
            say(f"{greeting} ({len(self.session.conversation.turns)} messages)")
        say("/help for commands · Ctrl+C stops a reply · Ctrl+D leaves")
        try:
            self.loop()
        finally:
            save_history(history)

    def loop(self) -> None:
        assembler = InputAssembler()
        while True:
            try:
                line = input(self.continuation if assembler.pending else self.prompt)
            except KeyboardInterrupt:  # clears the line (or an unfinished multi-line message)
                assembler.reset()
                sys.stdout.write("\n")
                continue
            except EOFError:
                sys.stdout.write("\n")
                return
            text = assembler.feed(line)
            if text is None:
                continue
            try:
                parsed = parse_input(text)
                if isinstance(parsed, Command):
                    if parsed.name == "exit":
                        return
                    self.run_command(parsed)
                elif parsed:
                    self.session.conversation.add_user(parsed)
                    self.respond()
            except GptError as exc:
                err.print(f"error: {exc}", style="red", markup=False)

    def respond(self) -> None:
        """Streams the reply to the last user turn; Ctrl+C drops it and keeps the rest."""
        stream, dropped = self.session.reply()
        if dropped and not self.notified:
            say(CONTEXT_NOTICE)
            self.notified = True
        try:
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write("\n")
            say("[interrupted: the reply is dropped; /regen tries again]")
            sys.stdout.write("\n")
            return
        sys.stdout.write("\n")
        sys.stdout.flush()
        self.session.conversation.add_assistant(stream.text)
        if self.recorder is not None:
            log_turn(self.recorder, self.session, stream)
        if self.session.settings.stats:
            info(stream.stats.summary())
        sys.stdout.write("\n")  # a blank line before the next prompt

    def run_command(self, command: Command) -> None:
        conversation = self.session.conversation
        arg = command.arg
        if command.name == "help":
            out.print(help_text(), markup=False)
        elif command.name == "clear":
            conversation.clear()
            self.notified = False
            if self.recorder is not None:
                self.recorder.restart()
            say("conversation cleared")
        elif command.name == "system":
            if not arg:
                shown = conversation.system or "none (/system TEXT sets one)"
                say(f"system prompt: {shown}")
            elif arg.lower() == "off":
                conversation.system = None
                say("system prompt removed")
            else:
                conversation.system = arg
                say("system prompt set")
        elif command.name == "set":
            if not arg:
                self.show_settings()
                return
            key, _, value = arg.partition(" ")
            self.session.update(apply_setting(self.session.settings, key, value))
            say(f"{key} is now {value.strip()}")
        elif command.name == "show":
            self.show()
        elif command.name == "regen":
            if not conversation.undo_reply():
                raise GptError("nothing to redo yet: send a message first")
            if self.recorder is not None:
                self.recorder.redo = True  # the logged reply is marked redone
            self.respond()
        elif command.name == "save":
            if not arg:
                raise GptError("usage: /save FILE")
            path = Path(arg).expanduser()
            count = conversation.save(path)
            say(f"appended the conversation ({count} messages) to {path}")
        elif command.name == "load":
            self.load(arg)

    def load(self, spec: str) -> None:
        """`/load FILE[:N]`: the saved conversation replaces this one (a new one in the log)."""
        from gptcli.chat import read_conversation

        if not spec:
            raise GptError("usage: /load FILE[:N]")
        system, turns = split_system(read_conversation(spec))
        conversation = self.session.conversation
        conversation.system, conversation.turns = system, list(turns)
        self.notified = False
        if self.recorder is not None:
            self.recorder.restart(turns, system)
        say(f"loaded {len(turns)} messages" + (" and a system prompt" if system else ""))

    def show_settings(self, indent: str = "  ") -> None:
        for key, value in describe_settings(self.session.settings):
            out.print(f"{indent}{key:<19} {value:<8} {SETTINGS[key]}", markup=False)

    def show(self) -> None:
        session = self.session
        used, dropped = session.context_used()
        turns = len(session.conversation.turns)
        context = f"{used} of {session.context} tokens ({turns} messages"
        context += f", the oldest {dropped} left out)" if dropped else ")"
        rows = [
            ("model", f"{self.name} ({self.path})"),
            ("mode", session.template.describe()),
            ("system", session.conversation.system or "none"),
            ("context", context),
        ]
        for key, value in rows:
            out.print(f"  {key:<8} {value}", markup=False)
        out.print("  settings", markup=False)
        self.show_settings(indent="    ")


def say(message: str, style: str = "dim") -> None:
    """A line of the REPL's own (not the model's)."""
    out.print(message, style=style, markup=False, highlight=False)


def setup_readline() -> Path | None:
    """Line editing, history kept in the store, and tab completion of commands."""
    try:
        import readline
    except ImportError:  # no readline on this platform: plain input() still works
        return None
    from gptcli.store import store_home

    path = store_home() / "chat_history"
    with contextlib.suppress(OSError):  # no history yet
        readline.read_history_file(path)
    readline.set_history_length(1000)

    def completer(text: str, state: int) -> str | None:
        matches = complete(readline.get_line_buffer())
        return matches[state] if state < len(matches) else None

    readline.set_completer(completer)
    readline.set_completer_delims("")  # complete the whole line, not its last word
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return path


def save_history(path: Path | None) -> None:
    if path is None:
        return
    import readline

    with contextlib.suppress(OSError):  # history is a convenience: never fail a chat over it
        path.parent.mkdir(parents=True, exist_ok=True)
        readline.write_history_file(path)
