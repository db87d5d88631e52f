"""gptcli: train, fine-tune, sample from, chat with and measure small GPTs with one command.

From Python: `gptcli.load(ref=None, *, device="auto", dtype="auto")` returns a model with
`.generate(prompt, ...)`, `.stream(prompt, ...)`, `.score(text)`, `.tokenizer` and `.config`
(see `gptcli.inference.api`). Importing `gptcli` does not import torch; `load` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gptcli.inference.api import Model

__version__ = "0.1.0"
__all__ = ["__version__", "load"]


def load(ref: str | None = None, *, device: str = "auto", dtype: str = "auto") -> Model:
    """A stored model (by name), a model directory, or the default model (None), ready to
    generate, stream and score; errors are `gptcli.errors.GptError`."""
    from gptcli.inference.api import load as load_model

    return load_model(ref, device=device, dtype=dtype)
