"""Weights moved into huge pages for CPU inference (gptcli.inference.hugepages): the same
parameters (tying kept), the same logits, and on Linux memory the kernel was asked to back
with 2 MB pages (the `hg` flag of its mapping)."""

from __future__ import annotations

import copy
import mmap
import sys
from pathlib import Path

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.inference.precision import prepare_for_inference
from gptcli.model import GPT


def model(family: str) -> GPT:
    torch.manual_seed(0)  # c_fc: 256 x 1024; the head: 8192 x 256
    config = ModelConfig(family=family, vocab_size=8192, block_size=16, n_layer=1, n_head=4,
                         n_embd=256)  # fmt: skip
    return GPT(config).eval()


def advised(pointer: int) -> bool:
    """Whether the mapping holding `pointer` is advised to use huge pages (/proc/self/smaps)."""
    lines = Path("/proc/self/smaps").read_text().splitlines()
    inside = False
    for line in lines:
        first = line.split()[0]
        if "-" in first and not first.endswith(":"):
            lo, hi = (int(x, 16) for x in first.split("-"))
            inside = lo <= pointer < hi
        elif inside and first == "VmFlags:":
            return "hg" in line.split()
    return False


@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_the_same_model_and_logits(family: str, dtype: torch.dtype) -> None:
    plain = model(family)
    moved = copy.deepcopy(plain)
    params = dict(moved.named_parameters())
    prepare_for_inference(moved, dtype)
    assert dict(moved.named_parameters()) == params  # the same Parameter objects
    if family == "gpt2":  # the head is still the embedding
        assert moved.lm_head.weight is moved.transformer["wte"].weight
    from gptcli.inference import hugepages

    before = hugepages.available
    try:
        hugepages.available = lambda tensor: False  # the reference: nothing moved
        prepare_for_inference(plain, dtype)
    finally:
        hugepages.available = before
    ids = torch.randint(0, 8192, (2, 12), generator=torch.manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(moved(ids)[0], plain(ids)[0])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
    reason="huge pages are asked for on Linux only",
)
def test_big_weights_are_in_memory_advised_for_huge_pages() -> None:
    moved = prepare_for_inference(model("modern"), torch.bfloat16)
    head = moved.lm_head.weight  # 4 MB in bfloat16: moved
    fc = moved.transformer["h"][0].mlp.c_fc.weight  # 512 KB: left where it was
    assert advised(head.data_ptr())
    assert not advised(fc.data_ptr())
    int8 = prepare_for_inference(model("modern"), torch.int8)
    packed = int8.lm_head.packed
    assert packed is not None and advised(packed.data.data_ptr())  # 2 MB of int8
