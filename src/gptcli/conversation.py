"""A chat in progress: the conversation so far, its settings, and streaming a reply.

What `gpt chat` (cli/chat.py) and a server hold per conversation. Knows templates
(`chat.py`), the model and generation; nothing about terminals, REPL commands or HTTP.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptcli.chat import Message, Template
from gptcli.errors import GptError
from gptcli.inference.generate import GenerationStats, stream_text
from gptcli.inference.sequence import Sequence
from gptcli.inference.text import ReplyTrim, TextStream
from gptcli.model import GPT
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer


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


@dataclass(frozen=True)
class ChatSettings:
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    max_tokens: int = 256
    seed: int | None = None
    stats: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise GptError(f"max_tokens must be at least 1, got {self.max_tokens}")


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
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.prompt_ids, self.settings, self.generator = prompt_ids, settings, generator
        self.stats: GenerationStats = GenerationStats()
        self.text = ""
        self.finish = "stop"

    def __iter__(self) -> Iterator[str]:
        seq = Sequence(
            self.prompt_ids,
            self.settings.sampling,
            self.generator,
            self.template.stop_ids(self.tokenizer),
            self.settings.max_tokens,
            TextStream(self.tokenizer, self.template.stop_strings),
        )
        trim = ReplyTrim()
        for text in stream_text(self.model, self.prompt_ids, seq, self.stats):
            piece = trim.push(text)  # trailing whitespace stays held: dropped at the end
            self.text += piece
            if piece:
                yield piece
        self.finish = seq.finish or "stop"


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

    def update(self, settings: ChatSettings) -> None:
        """New settings; a new seed restarts the random stream."""
        old_seed = self.settings.seed
        self.settings = settings
        if settings.seed != old_seed:
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
