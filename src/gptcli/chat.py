"""Chat: templates that turn messages into tokens, conversation state, and streaming a reply.

Shared by `gpt chat` (the REPL lives in cli/chat.py) and `gpt finetune --task chat`.

A message is `{"role": "system" | "user" | "assistant", "content": str}`; a conversation on
disk is one JSONL line `{"messages": [...]}`, the fine-tuning format.

A model chats in one of two modes:
- special: its directory holds `chat_template.json` (`{"type": "special", ...}`) and its
  tokenizer knows `<|system|> <|user|> <|assistant|> <|end|>` as special tokens:

      <|system|>\\nBe brief.<|end|>\\n<|user|>\\nHi<|end|>\\n<|assistant|>\\nHello!<|end|>\\n

- plain: no template file (a pretrained model). Turns are written as text,
  `User: Hi\\nAssistant: Hello!\\n`, and a reply ends at the next `\\nUser:`.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from gptcli.errors import GptError
from gptcli.sample import SamplingSettings
from gptcli.store import read_json, write_json_atomic
from gptcli.tokenizer import Tokenizer

if TYPE_CHECKING:
    import torch

    from gptcli.generate import GenerationStats
    from gptcli.model import GPT

Message = dict[str, str]
ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.json"


def check_messages(messages: Any, where: str = "conversation") -> list[Message]:
    """Validates a list of messages (as read from JSON); raises GptError saying what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise GptError(f"{where}: 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise GptError(f"{where}: message {i} needs a role of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise GptError(f"{where}: message {i} needs a string 'content'")
        if m["role"] == "system" and i:
            raise GptError(f"{where}: only the first message may be a system message")
    return messages


def encode_literal(tokenizer: Tokenizer, text: str) -> list[int]:
    """Encodes text with special-token names spelled out as plain characters.

    A user who types `<|end|>` gets those seven characters, not the end-of-turn token.
    """
    hf = tokenizer.hf
    before = hf.encode_special_tokens
    hf.encode_special_tokens = True
    try:
        return tokenizer.encode(text)
    finally:
        hf.encode_special_tokens = before


class _Builder:
    """Accumulates (ids, loss mask) piece by piece."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.mask: list[int] = []

    def add(self, ids: list[int], trained: bool) -> None:
        self.ids.extend(ids)
        self.mask.extend([int(trained)] * len(ids))


# -- templates ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChatTemplate:
    """Special-token template. Trained tokens: each assistant message's content and its `<|end|>`.

    `render_ids` gives `(ids, loss_mask)` with `loss_mask[i] == 1` when `ids[i]` is a token the
    model should learn to produce; the text of `ids` is exactly `render(messages)`.
    """

    system: str = "<|system|>"
    user: str = "<|user|>"
    assistant: str = "<|assistant|>"
    end: str = "<|end|>"
    kind: ClassVar[str] = "special"
    stop_strings: ClassVar[tuple[str, ...]] = ()

    @property
    def special_tokens(self) -> list[str]:
        return [self.system, self.user, self.assistant, self.end]

    def marker(self, role: str) -> str:
        return {"system": self.system, "user": self.user, "assistant": self.assistant}[role]

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        text = "".join(f"{self.marker(m['role'])}\n{m['content']}{self.end}\n" for m in messages)
        return text + (f"{self.assistant}\n" if add_generation_prompt else "")

    def render_ids(
        self, tokenizer: Tokenizer, messages: list[Message], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        newline = tokenizer.encode("\n")
        end = [self.token_id(tokenizer, self.end)]
        out = _Builder()
        for m in messages:
            trained = m["role"] == "assistant"
            out.add([self.token_id(tokenizer, self.marker(m["role"])), *newline], False)
            out.add(encode_literal(tokenizer, m["content"]), trained)
            out.add(end, trained)
            out.add(newline, False)
        if add_generation_prompt:
            out.add([self.token_id(tokenizer, self.assistant), *newline], False)
        return out.ids, out.mask

    def token_id(self, tokenizer: Tokenizer, token: str) -> int:
        token_id = tokenizer.hf.token_to_id(token)
        if token_id is None:
            raise GptError(f"the tokenizer has no {token} token: it was not fine-tuned for chat")
        return token_id

    def stop_ids(self, tokenizer: Tokenizer) -> frozenset[int]:
        """A reply ends at any chat token (normally `<|end|>`) or at end-of-text."""
        ids = {self.token_id(tokenizer, t) for t in self.special_tokens}
        return frozenset(ids | ({tokenizer.eot_id} if tokenizer.eot_id is not None else set()))

    def describe(self) -> str:
        return f"chat template ({self.user} / {self.assistant} tokens)"

    def jinja(self) -> str:
        """`render` as the Jinja `chat_template` transformers and llama.cpp read."""
        markers = ", ".join(f"{jinja_str(r)}: {jinja_str(self.marker(r))}" for r in ROLES)
        return (
            f"{{%- set markers = {{{markers}}} -%}}"
            "{%- for message in messages -%}"
            f"{{{{ markers[message['role']] + '\\n' + message['content'] + {jinja_str(self.end)}"
            " + '\\n' }}"
            "{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {jinja_str(self.assistant + chr(10))} }}}}"
            "{%- endif -%}"
        )

    def to_dict(self) -> dict[str, str]:
        return {"type": self.kind} | dataclasses.asdict(self)


@dataclass(frozen=True)
class PlainTemplate:
    """Plain-text turns for a model without chat tokens. Trained: ` content\\n` of assistants."""

    user: str = "User:"
    assistant: str = "Assistant:"
    kind: ClassVar[str] = "plain"

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return (f"\n{self.user}",)

    def render(self, messages: list[Message], add_generation_prompt: bool = False) -> str:
        return "".join(text for text, _ in self._pieces(messages, add_generation_prompt))

    def render_ids(
        self, tokenizer: Tokenizer, messages: list[Message], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[int]]:
        out = _Builder()
        for text, trained in self._pieces(messages, add_generation_prompt):
            out.add(encode_literal(tokenizer, text), trained)
        return out.ids, out.mask

    def _pieces(
        self, messages: list[Message], add_generation_prompt: bool
    ) -> Iterator[tuple[str, bool]]:
        for m in messages:
            if m["role"] == "system":
                yield f"{m['content']}\n\n", False
            elif m["role"] == "user":
                yield f"{self.user} {m['content']}\n", False
            else:
                # The prompt ends at "Assistant:" (a trailing space tokenizes badly in BPE).
                yield self.assistant, False
                yield f" {m['content']}\n", True
        if add_generation_prompt:
            yield self.assistant, False

    def stop_ids(self, tokenizer: Tokenizer) -> frozenset[int]:
        return frozenset({tokenizer.eot_id} if tokenizer.eot_id is not None else set())

    def describe(self) -> str:
        return f"plain-text mode (no chat template): '{self.user} ... / {self.assistant} ...'"

    def jinja(self) -> str:
        """`render` as the Jinja `chat_template` transformers and llama.cpp read."""
        user, assistant = jinja_str(self.user + " "), jinja_str(self.assistant + " ")
        return (
            "{%- for message in messages -%}"
            "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
            f"{{%- elif message['role'] == 'user' -%}}{{{{ {user} + message['content'] + '\\n' }}}}"
            f"{{%- else -%}}{{{{ {assistant} + message['content'] + '\\n' }}}}"
            "{%- endif -%}{%- endfor -%}"
            f"{{%- if add_generation_prompt -%}}{{{{ {jinja_str(self.assistant)} }}}}"
            "{%- endif -%}"
        )


Template = ChatTemplate | PlainTemplate


def jinja_str(text: str) -> str:
    """A Jinja string literal for `text`."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


def add_chat_tokens(tokenizer: Tokenizer, template: ChatTemplate | None = None) -> list[int]:
    """Adds the template's tokens to the tokenizer as special tokens; returns their ids.

    The model's embedding must then grow to `tokenizer.vocab_size` (the fine-tuning code's job).
    """
    template = template or ChatTemplate()
    tokenizer.hf.add_special_tokens(template.special_tokens)
    return [template.token_id(tokenizer, t) for t in template.special_tokens]


def save_template(model_dir: Path, template: ChatTemplate) -> None:
    """Marks a model as chat-tuned: writes `chat_template.json` into its directory."""
    write_json_atomic(model_dir / TEMPLATE_FILE, template.to_dict())


def load_template(model_dir: Path, tokenizer: Tokenizer | None = None) -> Template:
    """The model's chat template, or PlainTemplate when it has none.

    With a tokenizer, also checks that it knows the template's tokens.
    """
    path = model_dir / TEMPLATE_FILE
    if not path.is_file():
        return PlainTemplate()
    data = read_json(path)
    if not isinstance(data, dict) or data.get("type") != "special":
        kind = data.get("type") if isinstance(data, dict) else None
        raise GptError(f"{path}: unknown chat template type {kind!r} (expected 'special')")
    names = {f.name for f in dataclasses.fields(ChatTemplate)}
    values = {k: v for k, v in data.items() if k in names}
    if not all(isinstance(v, str) and v for v in values.values()):
        raise GptError(f"{path}: chat template tokens must be non-empty strings")
    template = ChatTemplate(**values)
    if tokenizer is not None:
        for token in template.special_tokens:
            template.token_id(tokenizer, token)
    return template


# -- conversation ---------------------------------------------------------------------------
@dataclass
class Conversation:
    """The system prompt and the user/assistant turns so far (the REPL's whole memory)."""

    system: str | None = None
    turns: list[Message] = field(default_factory=list)

    def messages(self) -> list[Message]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    @property
    def awaiting_reply(self) -> bool:
        return bool(self.turns) and self.turns[-1]["role"] == "user"

    def add_user(self, text: str) -> None:
        if self.awaiting_reply:  # a turn whose reply was interrupted is abandoned
            self.turns.pop()
        self.turns.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def undo_reply(self) -> bool:
        """Forgets the last reply (for /regen); true when a user turn now awaits one."""
        if self.turns and self.turns[-1]["role"] == "assistant":
            self.turns.pop()
        return self.awaiting_reply

    def clear(self) -> None:
        self.turns.clear()

    def window(
        self, template: Template, tokenizer: Tokenizer, budget: int
    ) -> tuple[list[int], int]:
        """Prompt ids for the next reply, and how many turns were left out to fit `budget`.

        The oldest turns go first; the system prompt and the newest user turn always stay. If
        even those do not fit, generation keeps only the prompt's tail.
        """
        head = self.messages()[: 1 if self.system else 0]
        starts = [i for i, m in enumerate(self.turns) if m["role"] == "user"] or [0]
        for start in starts:
            ids, _ = template.render_ids(tokenizer, head + self.turns[start:], True)
            if len(ids) <= budget:
                return ids, start
        return ids, starts[-1]

    def to_jsonl(self) -> str:
        """One line in the fine-tuning format (a turn still waiting for its reply is left out)."""
        messages = self.messages()
        if self.awaiting_reply:
            messages = messages[:-1]
        return json.dumps({"messages": messages}, ensure_ascii=False)

    def save(self, path: Path) -> int:
        """Appends the conversation to a JSONL file; returns the number of messages written."""
        line = self.to_jsonl()
        messages = json.loads(line)["messages"]
        if not any(m["role"] == "assistant" for m in messages):
            raise GptError("nothing to save yet: the conversation has no reply")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError as exc:
            raise GptError(f"cannot write {path}: {exc.strerror or exc}") from None
        return len(messages)


# -- settings and REPL commands (pure) ------------------------------------------------------
@dataclass(frozen=True)
class ChatSettings:
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    max_tokens: int = 256
    seed: int | None = None
    stats: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise GptError(f"max_tokens must be at least 1, got {self.max_tokens}")


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


# -- replies --------------------------------------------------------------------------------
class ReplyStream:
    """One reply, streamed: iterate for text pieces; afterwards `text`, `stats` and `finish`.

    Leading and trailing whitespace are dropped, so a reply prints and stores cleanly.
    `finish` is "stop" (the model ended its turn) or "length" (max_tokens reached).
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        template: Template,
        prompt_ids: list[int],
        settings: ChatSettings,
        generator: torch.Generator,
    ) -> None:
        from gptcli.generate import GenerationStats

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.prompt_ids, self.settings, self.generator = prompt_ids, settings, generator
        self.stats: GenerationStats = GenerationStats()
        self.text = ""
        self.finish = "stop"
        self._held = ""  # whitespace not shown until something follows it

    def __iter__(self) -> Iterator[str]:
        from gptcli.generate import TextStream, generate_tokens

        stream = TextStream(self.tokenizer, self.template.stop_strings)
        tokens = generate_tokens(
            self.model,
            self.prompt_ids,
            self.settings.max_tokens,
            self.settings.sampling,
            self.generator,
            self.template.stop_ids(self.tokenizer),
            self.stats,
        )
        for token in tokens:
            piece = self._trim(stream.push(token))
            if piece:
                yield piece
            if stream.stopped:
                break
        piece = self._trim(stream.flush())  # trailing whitespace stays held: dropped
        if piece:
            yield piece
        if self.stats.generated_tokens >= self.settings.max_tokens and not stream.stopped:
            self.finish = "length"

    def _trim(self, piece: str) -> str:
        if not self.text:
            piece = piece.lstrip()
        body = (self._held + piece).rstrip()
        self._held = (self._held + piece)[len(body) :]
        self.text += body
        return body


class ChatSession:
    """A loaded model, its template, the conversation and the settings: everything a chat holds."""

    def __init__(
        self,
        model: GPT,
        tokenizer: Tokenizer,
        template: Template,
        settings: ChatSettings,
        system: str | None = None,
    ) -> None:
        import torch

        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.conversation = Conversation(system=system or None)
        self.generator = torch.Generator(device=next(model.parameters()).device)
        self.settings = settings
        self.reseed()

    @property
    def context(self) -> int:
        return self.model.config.block_size

    @property
    def prompt_budget(self) -> int:
        """Prompt tokens that fit while leaving room for a reply."""
        return self.context - min(self.settings.max_tokens, self.context // 2)

    def reseed(self) -> None:
        seed = self.settings.seed if self.settings.seed is not None else random.randrange(2**62)
        self.generator.manual_seed(seed)

    def set(self, key: str, value: str) -> None:
        old_seed = self.settings.seed
        self.settings = apply_setting(self.settings, key, value)
        if self.settings.seed != old_seed:
            self.reseed()

    def reply(self) -> tuple[ReplyStream, int]:
        """A stream for the reply to the last user turn, and how many old turns were left out."""
        ids, dropped = self.conversation.window(self.template, self.tokenizer, self.prompt_budget)
        stream = ReplyStream(
            self.model, self.tokenizer, self.template, ids, self.settings, self.generator
        )
        return stream, dropped

    def context_used(self) -> tuple[int, int]:
        """(tokens the next prompt would take, turns left out to fit)."""
        if not self.conversation.messages():
            return 0, 0
        ids, dropped = self.conversation.window(self.template, self.tokenizer, self.prompt_budget)
        return len(ids), dropped
