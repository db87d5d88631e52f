"""The REPL's language, as pure functions: `/commands`, `/set KEY VALUE`, multi-line input,
and tab completion. cli/chat.py reads lines and runs what these return.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gptcli.errors import GptError

if TYPE_CHECKING:  # the class only: this module must not import torch (`gpt --help`)
    from gptcli.conversation import ChatSettings

SETTINGS = {
    "temperature": "sampling temperature; 0 = greedy",
    "top_k": "sample from the k most likely tokens (none = off)",
    "top_p": "nucleus sampling mass in (0, 1] (none = off)",
    "min_p": "drop tokens below this fraction of the top one (none = off)",
    "repetition_penalty": "above 1 discourages repeats",
    "presence_penalty": "subtracted once from each token already in the reply, in [-2, 2]",
    "frequency_penalty": "subtracted per occurrence in the reply, in [-2, 2]",
    "max_tokens": "most tokens per reply",
    "seed": "random seed (none = random)",
    "stats": "tokens/s after each reply, on stderr (on/off)",
}
SETTING_ALIASES = {"max_new_tokens": "max_tokens", "n": "max_tokens", "temp": "temperature"}


def describe_settings(settings: ChatSettings) -> list[tuple[str, str]]:
    """(key, value) for each setting, as /show and /set print them."""
    s = settings.sampling
    values: dict[str, Any] = {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "repetition_penalty": s.repetition_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "max_tokens": settings.max_tokens,
        "seed": settings.seed,
        "stats": "on" if settings.stats else "off",
    }
    return [(k, "none" if v is None else str(v)) for k, v in values.items()]


def _number(key: str, value: str, kind: type, optional: bool) -> Any:
    if optional and value.lower() in ("none", "off"):
        return None
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        extra = " or none" if optional else ""
        raise GptError(f"{key} needs {what}{extra}, got {value!r}") from None


def apply_setting(settings: ChatSettings, key: str, value: str) -> ChatSettings:
    """`/set KEY VALUE` as a pure function: the new settings, or GptError saying what is wrong."""
    name = key.lower().replace("-", "_")
    name = SETTING_ALIASES.get(name, name)
    value = value.strip()
    if name not in SETTINGS:
        close = difflib.get_close_matches(name, SETTINGS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise GptError(f"unknown setting {key!r}: {hint}settings are {', '.join(SETTINGS)}")
    if not value:
        raise GptError(f"usage: /set {name} VALUE ({SETTINGS[name]})")
    if name == "stats":
        flags = {"on": True, "true": True, "yes": True, "1": True}
        flags |= {"off": False, "false": False, "no": False, "0": False}
        if value.lower() not in flags:
            raise GptError(f"stats is on or off, got {value!r}")
        return dataclasses.replace(settings, stats=flags[value.lower()])
    if name == "max_tokens":
        return dataclasses.replace(settings, max_tokens=_number(name, value, int, False))
    if name == "seed":
        return dataclasses.replace(settings, seed=_number(name, value, int, True))
    kind = int if name == "top_k" else float
    number = _number(name, value, kind, name in ("top_k", "top_p", "min_p"))
    try:
        sampling = dataclasses.replace(settings.sampling, **{name: number})
    except GptError as exc:  # its messages name the command-line flag
        raise GptError(str(exc).removeprefix("--")) from None
    return dataclasses.replace(settings, sampling=sampling)


COMMANDS = {
    "help": ("/help", "show this help"),
    "exit": ("/exit", "leave (or Ctrl+D)"),
    "clear": ("/clear", "forget the conversation (the system prompt stays)"),
    "system": ("/system [TEXT|off]", "set, show (no TEXT) or remove the system prompt"),
    "set": ("/set [KEY VALUE]", "change a setting, e.g. /set temperature 0.7; alone: list them"),
    "show": ("/show", "model, mode, settings and how much of the context is used"),
    "regen": ("/regen", "redo the last reply"),
    "save": (
        "/save FILE",
        "append the conversation to FILE as one JSONL line (fine-tuning format)",
    ),
    "load": ("/load FILE[:N]", "continue the last (or N-th) conversation saved in FILE"),
}
COMMAND_ALIASES = {"quit": "exit", "bye": "exit", "?": "help", "reset": "clear"}


@dataclass(frozen=True)
class Command:
    name: str  # a key of COMMANDS
    arg: str = ""


def parse_input(text: str) -> Command | str:
    """A REPL command (`/set temperature 0.5`), or the message to send.

    A message may start with a slash when written twice: `//etc` sends `/etc`. An unknown
    command raises GptError with a hint.
    """
    stripped = text.strip()
    if stripped.startswith("//"):
        return stripped[1:]
    if not stripped.startswith("/"):
        return stripped
    word, *rest = stripped[1:].split(maxsplit=1)
    name = COMMAND_ALIASES.get(word.lower(), word.lower())
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, [*COMMANDS, *COMMAND_ALIASES], n=1)
        hint = f"did you mean /{close[0]}? " if close else ""
        raise GptError(f"unknown command /{word}: {hint}/help lists the commands")
    return Command(name, rest[0].strip() if rest else "")


def help_text() -> str:
    lines = [f"  {usage:<20} {what}" for usage, what in COMMANDS.values()]
    lines.append('  """ ... """          a multi-line message (or end a line with \\ to go on)')
    lines.append("  //text               send a message that starts with /")
    lines.append("  Ctrl+C               stop a reply, or clear the line")
    return "\n".join(lines)


def complete(buffer: str) -> list[str]:
    """Tab completions for what has been typed so far (commands and setting names)."""
    if not buffer.startswith("/"):
        return []
    if " " not in buffer:
        return [f"/{name} " for name in COMMANDS if f"/{name}".startswith(buffer)]
    command, _, rest = buffer.partition(" ")
    if command == "/set" and " " not in rest:
        return [f"/set {key} " for key in SETTINGS if key.startswith(rest)]
    return []


class InputAssembler:
    """Joins typed lines into one message.

    A line ending in a backslash goes on to the next line; a line starting with three double
    quotes opens a block that runs until a line ending in three double quotes.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.in_block = False

    @property
    def pending(self) -> bool:
        return bool(self.lines) or self.in_block

    def reset(self) -> None:
        self.lines, self.in_block = [], False

    def feed(self, line: str) -> str | None:
        """The whole message once complete, else None (more lines needed)."""
        if self.in_block:
            if line.rstrip().endswith('"""'):
                last = line.rstrip()[:-3]
                if last.strip():  # a closing line of its own adds nothing
                    self.lines.append(last)
                return self._done()
            self.lines.append(line)
            return None
        if not self.lines and line.lstrip().startswith('"""'):
            rest = line.lstrip()[3:]
            if rest.rstrip().endswith('"""'):
                self.lines.append(rest.rstrip()[:-3])
                return self._done()
            self.in_block = True
            if rest.strip():
                self.lines.append(rest)
            return None
        if line.endswith("\\"):
            self.lines.append(line[:-1])
            return None
        self.lines.append(line)
        return self._done()

    def _done(self) -> str:
        text = "\n".join(self.lines)
        self.reset()
        return text
