"""One Tokenizer over Hugging Face `tokenizers`: byte-level BPE and char (with byte fallback).

Both kinds round-trip any Unicode text exactly: BPE works on bytes, and the char tokenizer
falls back to byte tokens for characters it never saw in training.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from gptcli.errors import GptError

EOT = "<|endoftext|>"
MAX_CHAR_VOCAB = 60_000
BYTE_FALLBACK = re.compile(r"<0x([0-9A-F]{2})>")


def byte_level_decode_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves,
    the others are shifted to code points from 256 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    shifted = (b for b in range(256) if b not in table.values())
    for n, b in enumerate(shifted):
        table[chr(256 + n)] = b
    return table


BYTE_LEVEL_DECODE = byte_level_decode_table()


class Tokenizer:
    """Text <-> token ids. `kind` is "bpe" or "char"; `eot_id` separates documents."""

    def __init__(self, hf: HFTokenizer) -> None:
        self.hf = hf
        eot = hf.token_to_id(EOT)
        self.eot_id: int | None = eot
        model = json.loads(hf.to_str()).get("model", {})
        self.kind = "char" if model.get("byte_fallback") else "bpe"

    # -- building -------------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int) -> Tokenizer:
        """Byte-level BPE (GPT-2 style) learned from `texts`."""
        if vocab_size < 257:
            raise GptError("--vocab-size must be at least 257 for a byte-level BPE tokenizer")
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def train_char(cls, texts: Iterable[str]) -> Tokenizer:
        """One token per character seen, plus 256 byte tokens for anything unseen."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
            if len(chars) > MAX_CHAR_VOCAB:
                raise GptError(
                    f"more than {MAX_CHAR_VOCAB} distinct characters: use a BPE tokenizer"
                )
        vocab: dict[str, int] = {}
        for ch in sorted(chars):
            vocab[ch] = len(vocab)
        for byte in range(256):
            vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
        vocab.setdefault(EOT, len(vocab))
        hf = HFTokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
        # Lines keep BPE "words" short; no merges exist, so every character stands alone.
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n"), behavior="merged_with_previous")
        hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
        hf.add_special_tokens([EOT])
        return cls(hf)

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except FileNotFoundError:
            raise GptError(f"tokenizer file not found: {path}") from None
        except Exception as exc:  # tokenizers raises plain Exception for bad files
            raise GptError(f"{path}: not a valid tokenizer.json ({exc})") from None

    def to_json(self) -> str:
        return self.hf.to_str()

    @property
    def digest(self) -> str:
        """Content hash: the token cache is keyed by it."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    # -- using ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def pieces(self, ids: list[int]) -> list[str]:
        """The text each id stands for on its own (for showing a tokenization)."""
        return [self.decode([i]) for i in ids]

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes a token stands for (possibly part of a character); b"" for special
        tokens. Joined over an encoding, they give back the text's bytes exactly."""
        if token_id in self.hf.get_added_tokens_decoder():  # end of text, chat markers
            return b""
        piece = self.hf.id_to_token(token_id)
        if piece is None:
            raise GptError(f"token id {token_id} is out of range")
        if self.kind == "char":
            fallback = BYTE_FALLBACK.fullmatch(piece)
            return bytes([int(fallback.group(1), 16)]) if fallback else piece.encode()
        return bytes(BYTE_LEVEL_DECODE[ch] for ch in piece)


class StreamDecoder:
    """Turns a growing list of ids into text pieces, never splitting a UTF-8 character.

    Decodes only a short window at the end, so the cost per token does not grow with the text.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # start of the window that gives context to the decoder
        self.read = 0  # ids before this have been emitted

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if len(text) > len(done) and not text.endswith("\ufffd"):
            self.prefix, self.read = self.read, len(self.ids)
            return text[len(done) :]
        return ""

    def flush(self) -> str:
        done = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return text[len(done) :]


def iter_chunks(text: str, size: int = 1 << 12) -> Iterator[str]:
    """Cut text into pieces of about `size` characters at line ends (for batch encoding)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        # Cut after a newline followed by a non-space, where no BPE pre-token can straddle.
        while end < len(text):
            newline = text.rfind("\n", start, end)
            if newline <= start:
                end = min(len(text), start + size)
                break
            end = newline + 1
            if end < len(text) and not text[end].isspace():
                break
            end = newline
        yield text[start:end]
        start = end
