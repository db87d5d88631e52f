"""Chat templates: how messages become tokens, for fine-tuning and for replies.

Shared by `gpt finetune --task chat` (tasks/chat.py), the conversation state in
`conversation.py`, and `gpt chat`. Knows messages, tokenizers and files of a model directory;
nothing about models, sampling or the REPL.

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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from gptcli.errors import GptError
from gptcli.store import read_json, write_json_atomic
from gptcli.tokenizer import Tokenizer

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


def read_conversation(spec: str) -> list[Message]:
    """The last conversation in a JSONL file of them (what `/save` appends), or with
    `FILE:N` the N-th (from 1). Raises GptError saying what is wrong."""
    path, number = Path(spec).expanduser(), None
    head, colon, tail = spec.rpartition(":")
    if colon and tail.isdigit() and not path.exists():
        path, number = Path(head).expanduser(), int(tail)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise GptError(f"cannot read {path}: {reason}") from None
    if not lines:
        raise GptError(f"{path} holds no conversation")
    if number is None:
        number = len(lines)
    if not 1 <= number <= len(lines):
        raise GptError(f"{path} holds {len(lines)} conversation(s): there is no :{number}")
    where = f"{path}:{number}"
    try:
        record = json.loads(lines[number - 1])
    except json.JSONDecodeError as exc:
        raise GptError(f"{where} is not JSON ({exc.msg}): not a saved conversation") from None
    if not isinstance(record, dict) or "messages" not in record:
        raise GptError(f"{where} is not a conversation: no 'messages' list")
    return check_messages(record["messages"], where)


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
