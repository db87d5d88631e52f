"""The one loader of inference: a model reference -> a model on its device, in evaluation mode,
with weights in the chosen dtype and packed for it. `gpt generate`, `chat`, `serve`, `eval`,
`classify` and the Python API (`gptcli.load`) all load through `load`.

It walks down the layers once: the store resolves the reference to a directory, `checkpoint`
reads its files (each once; Hugging Face directories converted on the fly), `precision` casts
and packs. Knows nothing of flags or output.
"""

from __future__ import annotations

import torch

from gptcli.checkpoint import LoadedModel, load_model
from gptcli.inference.precision import inference_dtype, prepare_for_inference
from gptcli.runtime import pick_device
from gptcli.store import ModelStore


def load(
    ref: str | None = None,
    device: str = "auto",
    dtype: str | None = "auto",
    threads: int | None = None,
    store: ModelStore | None = None,
) -> LoadedModel:
    """`ref`: a store name, a model directory, or None for the default model. `dtype`: `auto`,
    `float32`, `bfloat16` or `int8` (see `precision.inference_dtype`), or None to keep the
    stored weights as they are. `threads`: CPU threads (default: torch's, one per core)."""
    if threads is not None:
        torch.set_num_threads(threads)
    where = pick_device(device)
    loaded = load_model((store or ModelStore()).resolve(ref), where)
    if dtype is not None:
        prepare_for_inference(loaded.model, inference_dtype(dtype, where))
    return loaded
