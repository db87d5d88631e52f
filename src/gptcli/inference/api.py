"""The Python API: `gptcli.load()` returns a `Model` to generate with, stream from and score,
as the `gpt` commands do, through the same loader, text loop and per-token policy.

    import gptcli
    model = gptcli.load("stories")          # a store name, a directory, or None: the default
    print(model.generate("Once upon a time", max_new_tokens=50, temperature=0))
    for piece in model.stream("The dragon", seed=1):
        print(piece, end="")
    print(model.score("A short text."))     # mean loss per token, nats

Errors are `gptcli.errors.GptError`, with the one-line messages the CLI prints.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from gptcli.checkpoint import LoadedModel
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.inference.generate import stream_text
from gptcli.inference.loader import load as load_model
from gptcli.inference.sequence import Sequence
from gptcli.inference.text import TextStream
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer


class Model:
    """A loaded model with its tokenizer: what `gptcli.load` returns."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @property
    def name(self) -> str:
        return self.loaded.name

    @property
    def path(self) -> Path:
        return self.loaded.path

    @property
    def tokenizer(self) -> Tokenizer:
        return self.loaded.tokenizer

    @property
    def config(self) -> ModelConfig:
        return self.loaded.model.config

    def __repr__(self) -> str:
        return f"<gptcli.Model {self.name!r} {self.config.family} {self.path}>"

    def stream(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        *,
        seed: int | None = None,
        stop: list[str] | tuple[str, ...] = (),
        ignore_eos: bool = False,
        **sampling: Any,
    ) -> Iterator[str]:
        """The continuation of `prompt`, piece by piece, as `gpt generate` streams it (the
        prompt itself is not repeated). `sampling`: `SamplingSettings` fields (temperature,
        top_k, top_p, min_p, repetition_penalty, presence_penalty, frequency_penalty)."""
        try:
            settings = SamplingSettings(**sampling)
        except TypeError as exc:
            raise GptError(f"unknown sampling setting: {exc}") from None
        if max_new_tokens < 0:
            raise GptError("max_new_tokens must be 0 or more")
        tok = self.tokenizer
        ids = tok.encode(prompt) or ([tok.eot_id] if tok.eot_id is not None else [])
        if not ids:
            raise GptError("empty prompt, and the tokenizer has no end-of-text token")
        generator = torch.Generator(device=next(self.loaded.model.parameters()).device)
        generator.manual_seed(seed if seed is not None else random.randrange(2**62))
        stop_ids = frozenset() if ignore_eos or tok.eot_id is None else frozenset({tok.eot_id})
        seq = Sequence(
            ids, settings, generator, stop_ids, max_new_tokens, TextStream(tok, list(stop))
        )
        yield from stream_text(self.loaded.model, ids, seq)

    def generate(self, prompt: str, max_new_tokens: int = 200, **kwargs: Any) -> str:
        """The whole continuation of `prompt` (see `stream` for the settings)."""
        return "".join(self.stream(prompt, max_new_tokens, **kwargs))

    def score(self, text: str) -> float:
        """The model's mean loss per token on `text` (nats), as `gpt eval --data` computes it."""
        from gptcli.evaluate import score_text

        return score_text(self.loaded.model, self.tokenizer, text).loss


def load(ref: str | None = None, *, device: str = "auto", dtype: str = "auto") -> Model:
    """A model from the store (by name), a model directory, or the default model (None), on
    `device` (auto, cpu, cuda, mps) with weights in `dtype` (auto, float32, bfloat16, int8)."""
    return Model(load_model(ref, device, dtype))
