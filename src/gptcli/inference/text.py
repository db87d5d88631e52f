"""Tokens -> text, the one way every caller turns generated ids into what it shows: pieces that
never split a UTF-8 character nor show any part of a stop string.

Knows the tokenizer's streaming decoder; nothing about models, sampling or where text goes.
"""

from __future__ import annotations

from gptcli.tokenizer import StreamDecoder, Tokenizer


def split_at_stop(text: str, stops: list[str], final: bool = False) -> tuple[str, str, bool]:
    """(text safe to emit, text held back, whether a stop string was found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    if final:
        return text, "", False
    hold = 0  # the longest suffix that is a prefix of some stop string
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False


class TextStream:
    """Token ids -> text pieces that never split a UTF-8 character nor show part of a stop string.

    After a stop string is found, `stopped` is true and the text before it has all been emitted.
    """

    def __init__(self, tokenizer: Tokenizer, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stops = [s for s in stops if s]
        self.pending = ""  # held back while it could be the start of a stop string
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.decoder.push(token_id)
        emit, self.pending, self.stopped = split_at_stop(self.pending, self.stops)
        return emit

    def flush(self) -> str:
        """The rest of the text, once generation is over."""
        if self.stopped:
            return ""
        emit, _, self.stopped = split_at_stop(
            self.pending + self.decoder.flush(), self.stops, final=True
        )
        self.pending = ""
        return emit


class ReplyTrim:
    """A chat reply without leading or trailing whitespace, as `gpt chat` shows it; piece by
    piece, so the streamed reply concatenates to the whole one (`gpt chat` and `gpt serve`)."""

    def __init__(self) -> None:
        self.started = False
        self.held = ""  # whitespace not shown until something follows it

    def push(self, piece: str) -> str:
        if not self.started:
            piece = piece.lstrip()
            self.started = bool(piece)
        text = self.held + piece
        body = text.rstrip()
        self.held = text[len(body) :]
        return body
