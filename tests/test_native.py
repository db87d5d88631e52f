"""The native CPU decode step (gptcli.kernels): the same logits as the model's own forward pass
through the cache, for both families, every inference dtype, past the context (the rotary
ring), and a clean fallback to torch where it cannot run."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import run
from test_model import tiny_model

from gptcli import kernels
from gptcli.errors import GptError
from gptcli.inference.generate import generate_tokens
from gptcli.inference.precision import prepare_for_inference
from gptcli.kernels.step import NativeDecodeStep
from gptcli.lora import apply_lora
from gptcli.model import GPT, KVCache
from gptcli.sample import SamplingSettings

needs_native = pytest.mark.skipif(
    kernels.compiler() is None, reason="no C compiler to build the native step"
)
GREEDY = SamplingSettings(temperature=0)
GREEDY_ARGS = ("-n", "12", "--temperature", "0", "--dtype", "float32", "--json")


def step_errors(family: str, dtype: torch.dtype, steps: int) -> tuple[float, float, float]:
    """(native step vs the model's forward, the forward vs float32, native vs float32): worst
    relative error of the logits over `steps` one-token steps after a 5-token prefill, on a
    16-slot cache."""
    reference = prepare_for_inference(tiny_model(family), torch.float32)
    model = prepare_for_inference(tiny_model(family), dtype)
    ids = torch.randint(0, model.config.vocab_size, (1, 5 + steps), generator=torch.manual_seed(2))
    caches = [m.new_cache(1, 16) for m in (reference, model, model)]
    worst_native = worst_torch = worst_ours = 0.0
    with torch.inference_mode():
        for m, cache in zip((reference, model, model), caches, strict=True):
            m(ids[:, :5], cache=cache)
        step = NativeDecodeStep.for_model(model, caches[2])
        assert step is not None
        for t in range(5, 5 + steps):
            token = ids[:, t : t + 1]
            want = reference(token, cache=caches[0], last_only=True)[0][:, -1].float()
            torch_path = model(token, cache=caches[1], last_only=True)[0][:, -1].float()
            got = step(token)
            scale = want.abs().max()
            worst_native = max(worst_native, ((got - torch_path).abs().max() / scale).item())
            worst_torch = max(worst_torch, ((torch_path - want).abs().max() / scale).item())
            worst_ours = max(worst_ours, ((got - want).abs().max() / scale).item())
    assert caches[2].pos == caches[1].pos == 5 + steps
    torch.testing.assert_close(caches[2].k, caches[1].k.float(), atol=0.05, rtol=0.05)
    return worst_native, worst_torch, worst_ours


@needs_native
@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_float32_step_equals_the_forward_pass(family: str) -> None:
    # gpt2 up to its context of 16; modern on past it, where the cache is a ring
    native, _, _ = step_errors(family, torch.float32, 11 if family == "gpt2" else 30)
    assert native < 1e-5


@needs_native
@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_low_precision_step_is_as_close_as_torch(family: str, dtype: torch.dtype) -> None:
    # Same weights as torch's path; activations differ (float32 here, bfloat16 there), so the
    # two may differ by what bfloat16 rounding costs, and ours strays no further from float32.
    native, torch_error, ours = step_errors(family, dtype, 11)
    assert 0 < native < 0.05
    assert torch_error < 0.05
    assert ours < 1.2 * torch_error  # float32 activations: closer to float32, if anything


@needs_native
@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_prefill_and_chunks_equal_the_forward_pass(family: str) -> None:
    model = prepare_for_inference(tiny_model(family), torch.float32)
    ids = torch.randint(0, 300, (1, 24), generator=torch.manual_seed(4))
    with torch.inference_mode():
        torch_cache, cache = model.new_cache(1, 24), model.new_cache(1, 24)
        step = NativeDecodeStep.for_model(model, cache)
        assert step is not None
        for lo, hi in ((0, 12), (12, 20), (20, 21), (21, 24)):  # a prompt, a chunk, steps
            want = model(ids[:, lo:hi], cache=torch_cache, last_only=True)[0][:, -1]
            torch.testing.assert_close(step(ids[:, lo:hi]), want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.k, torch_cache.k)
        torch.testing.assert_close(cache.v, torch_cache.v)
        with pytest.raises(GptError, match=r"exceeds the context|does not fit"):
            step(ids[:, :2])  # past the 24 slots: refused, as torch's path refuses it
    with torch.inference_mode():
        fresh = NativeDecodeStep.for_model(model, model.new_cache(1, 24))
        assert fresh is not None
        with pytest.raises(GptError, match="out of range"):  # never read past the embedding
            fresh(torch.tensor([[1, 300]]))
    assert cache.pos == 24


@needs_native
@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_low_precision_prefill_is_as_close_as_torch(family: str, dtype: torch.dtype) -> None:
    # chunks of 4 tokens and more take the blocked products (four rows by four tokens)
    reference = prepare_for_inference(tiny_model(family), torch.float32)
    model = prepare_for_inference(tiny_model(family), dtype)
    ids = torch.randint(0, 300, (1, 19), generator=torch.manual_seed(5))
    with torch.inference_mode():
        want = reference(ids, last_only=True)[0][0, -1]
        torch_path = model(ids, last_only=True)[0][0, -1].float()
        cache = model.new_cache(1, 24)
        step = NativeDecodeStep.for_model(model, cache)
        assert step is not None
        got = step(ids)[0]
    scale = want.abs().max()
    assert (torch_path - want).abs().max() < 0.05 * scale
    assert (got - want).abs().max() < 1.2 * (torch_path - want).abs().max()


@needs_native
def test_modern_gains_norms_are_read() -> None:
    config = dataclasses.replace(tiny_model("modern").config, norms="gains")  # older models
    torch.manual_seed(3)
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)  # gains away from 1
    assert model.transformer["h"][0].attn.q_norm.weight is not None
    prepare_for_inference(model, torch.float32)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.inference_mode():
        cache = model.new_cache(1, 16)
        model(ids[:, :4], cache=cache)
        step = NativeDecodeStep.for_model(model, cache)
        assert step is not None
        got = torch.cat([step(ids[:, t : t + 1]) for t in range(4, 8)])
        want = model(ids)[0][0, 4:]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@needs_native
def test_greedy_generation_is_the_same_with_and_without_it(monkeypatch) -> None:
    model = prepare_for_inference(tiny_model("gpt2"), torch.float32)
    prompt = [5, 17, 42]
    native = list(generate_tokens(model, prompt, 40, GREEDY))  # past the context: prefills again
    monkeypatch.setattr(NativeDecodeStep, "for_model", staticmethod(lambda *a: None))
    plain = list(generate_tokens(model, prompt, 40, GREEDY))
    assert native == plain and len(native) == 40


def test_it_stands_aside_where_it_cannot_run() -> None:
    model = prepare_for_inference(tiny_model("gpt2"), torch.float32)
    assert NativeDecodeStep.for_model(model, model.new_cache(2, 16)) is None  # two rows
    apply_lora(model, rank=2)  # adapters: torch's path
    assert NativeDecodeStep.for_model(model, model.new_cache(1, 16)) is None


def test_without_a_compiler_generation_uses_torch(
    base_home: Path, monkeypatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GPTCLI_KERNELS", str(tmp_path / "built"))
    kernels.library.cache_clear()  # built afresh there
    reference = json.loads(run("generate", "Once", *GREEDY_ARGS).stdout)
    shown = run("models", "show").stdout  # the generation above built it
    assert re.search(r"decode +one row on the CPU: native step \(built\)", shown)
    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: error: no such thing' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setenv("GPTCLI_KERNELS", str(tmp_path / "kernels"))  # nothing built there yet
    kernels.library.cache_clear()
    try:
        assert kernels.library() is None
        assert "did not build" in (kernels.unavailable() or "")
        assert "no such thing" in (kernels.unavailable() or "")
        again = json.loads(run("generate", "Once", *GREEDY_ARGS).stdout)
        assert again["text"] == reference["text"]
        monkeypatch.setenv("GPTCLI_NATIVE", "0")
        kernels.library.cache_clear()
        assert kernels.library() is None and kernels.unavailable() == "GPTCLI_NATIVE=0"
        shown = json.loads(run("models", "show", "--json").stdout)["inference_dtype"]
        assert shown["decode"] == "torch's kernels (GPTCLI_NATIVE=0)"
    finally:
        kernels.library.cache_clear()


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_slots_not_yet_written_are_never_read(family: str, native: bool, monkeypatch) -> None:
    # generation's cache comes unzeroed (75 MB to clear on the 124M shape): fill it with NaN
    # and the tokens must not change, on both paths, past the context too
    model = prepare_for_inference(tiny_model(family), torch.float32)
    want = list(generate_tokens(model, [5, 17, 42], 40, GREEDY))
    made = GPT.new_cache

    def poisoned(self: GPT, *args: object, **kwargs: object) -> KVCache:
        cache = made(self, *args, **kwargs)  # type: ignore[arg-type]
        if not kwargs.get("zeroed", True):
            cache.k.fill_(float("nan"))
            cache.v.fill_(float("nan"))
        return cache

    monkeypatch.setattr(GPT, "new_cache", poisoned)
    if not native:
        monkeypatch.setattr(NativeDecodeStep, "for_model", staticmethod(lambda *a: None))
    assert list(generate_tokens(model, [5, 17, 42], 40, GREEDY)) == want
