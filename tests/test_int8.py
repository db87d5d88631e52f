"""Weight-only int8 inference (`--dtype int8`): logits, greedy generation and eval loss close to
float32, and the choice visible in `gpt models show`."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from conftest import run
from test_model import tiny_model

from gptcli.inference.precision import inference_dtype, prepare_for_inference


def test_int8_logits_are_close_to_float32() -> None:
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 250, 11]])
    for family in ("gpt2", "modern"):
        reference = prepare_for_inference(tiny_model(family), torch.float32)
        model = prepare_for_inference(tiny_model(family), inference_dtype("int8", ids.device))
        assert model.lm_head.packed is not None and model.lm_head.packed.kind == "int8"
        with torch.no_grad():
            want = reference(ids)[0]
            got = model(ids)[0].float()
        assert not torch.equal(got, want)
        # logits span about +-4 here; int8 weights and bfloat16 activations move them by 0.02
        # on average (bfloat16 weights alone: 0.01), never by more than about 0.2
        error = (got - want).abs()
        scale = want.abs().max()
        assert error.mean() < 0.01 * scale and error.max() < 0.06 * scale, family
        assert (got.softmax(-1) - want.softmax(-1)).abs().max() < 0.01
        cache = model.new_cache(1)  # the decode path: a prefill, then one token at a time
        with torch.no_grad():
            model(ids[:, :4], cache=cache)
            for t in range(4, ids.size(1)):
                step = model(ids[:, t : t + 1], cache=cache)[0][0, -1].float()
        torch.testing.assert_close(step, got[0, -1], atol=0.05, rtol=0.02)


def test_int8_generate_and_eval_through_the_cli(trained_home: Path) -> None:
    greedy = ["--temperature", "0", "-n", "30", "--seed", "1", "--json"]
    texts = {
        dtype: json.loads(run("generate", "Once", "--dtype", dtype, *greedy).stdout)
        for dtype in ("float32", "int8")
    }
    assert texts["int8"]["generated_tokens"] == 30
    assert texts["int8"]["text"][:10] == texts["float32"]["text"][:10]
    losses = {
        dtype: json.loads(run("eval", "--dtype", dtype, "--json", "-q").stdout)["loss"]
        for dtype in ("float32", "int8")
    }
    assert losses["int8"] != losses["float32"]
    assert abs(losses["int8"] - losses["float32"]) < 0.01 * losses["float32"]
    shown = json.loads(run("models", "show", "--json").stdout)
    assert shown["inference_dtype"]["int8"] == "int8 x bfloat16"
    assert "int8: int8 weights" in run("models", "show").stdout


def test_int8_on_widths_that_are_not_a_multiple_of_16() -> None:
    # ATen's int8 kernel summed rows of 40 to inf and crashed on 100: those widths must still
    # give float32's logits, give or take the rounding of int8 weights
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    for width in (40, 100):
        torch.manual_seed(0)
        config = ModelConfig(family="gpt2", vocab_size=120, block_size=8, n_layer=1, n_head=2)
        config.n_embd = width
        reference = prepare_for_inference(GPT(config), torch.float32)
        model = GPT(config)
        model.load_state_dict(reference.state_dict())
        prepare_for_inference(model, torch.int8)
        with torch.no_grad():
            want, got = reference(ids)[0], model(ids)[0].float()
        assert torch.isfinite(got).all()
        assert (got - want).abs().max() < 0.05 * want.abs().max(), width
