"""Generation: each sampler on a hand-made distribution, batches against single samples, the
windows past the context, the static (CUDA graph) path on a CPU, the fast single-row matrix
product, and the CLI's stop strings, stats, JSON, dtype and closed pipes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import run
from test_model import tiny_model

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.hardware import cpu_has_fast_bf16
from gptcli.inference.generate import (
    GenerationStats,
    StaticDecodeStep,
    generate_batch,
    generate_tokens,
)
from gptcli.inference.packing import PackedWeight, pack_weights, quantize_int8
from gptcli.inference.precision import inference_dtype, prepare_for_inference, use_cuda_graphs
from gptcli.inference.text import TextStream
from gptcli.model import GPT
from gptcli.sample import (
    SamplingSettings,
    apply_presence_frequency_penalties,
    apply_repetition_penalty,
    filter_logits,
    min_p_filter,
    sample_next_token,
    top_k_filter,
    top_p_filter,
)
from gptcli.tokenizer import Tokenizer

GREEDY = SamplingSettings(temperature=0)


def logits_of(*probs: float) -> torch.Tensor:
    """One row of logits whose softmax is `probs`."""
    return torch.tensor([probs]).log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero().view(-1).tolist()


# -- samplers -------------------------------------------------------------------------------
def test_top_k_keeps_the_k_most_likely() -> None:
    logits = logits_of(0.1, 0.4, 0.05, 0.3, 0.15)
    assert kept(top_k_filter(logits, 2)) == [1, 3]
    assert kept(top_k_filter(logits, 1)) == [1]
    assert kept(top_k_filter(logits, 9)) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = logits_of(0.15, 0.5, 0.05, 0.3)
    assert kept(top_p_filter(logits, 0.5)) == [1]  # 0.5 alone reaches 0.5
    assert kept(top_p_filter(logits, 0.7)) == [1, 3]  # 0.5 < 0.7 <= 0.8
    assert kept(top_p_filter(logits, 0.81)) == [0, 1, 3]
    assert kept(top_p_filter(logits, 0.01)) == [1]  # the top token always stays
    assert kept(top_p_filter(logits, 1.0)) == [0, 1, 2, 3]


def test_min_p_cuts_relative_to_the_top_token() -> None:
    logits = logits_of(0.6, 0.25, 0.1, 0.05)
    assert kept(min_p_filter(logits, 0.2)) == [0, 1]  # floor 0.12
    assert kept(min_p_filter(logits, 0.1)) == [0, 1, 2]  # floor 0.06
    sharper = logits_of(0.3, 0.25, 0.25, 0.2)
    assert kept(min_p_filter(sharper, 0.2)) == [0, 1, 2, 3]  # unsure: nothing cut


def test_repetition_penalty_lowers_seen_tokens_only() -> None:
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)


def test_presence_and_frequency_penalties_subtract_per_token_and_per_occurrence() -> None:
    logits = torch.zeros(1, 4)
    counts = torch.tensor([[0.0, 1.0, 3.0, 0.0]])
    out = apply_presence_frequency_penalties(logits, counts, presence=0.5, frequency=0.25)
    assert out.tolist() == [[0.0, -0.75, -1.25, 0.0]]


def test_temperature_scales_and_greedy_takes_the_argmax() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0]])
    hot = filter_logits(logits, SamplingSettings(temperature=2.0, min_p=None))
    assert torch.allclose(hot, logits / 2)
    assert sample_next_token(logits, GREEDY).tolist() == [[1]]
    # a tiny temperature is nearly greedy
    cold = SamplingSettings(temperature=0.01, min_p=None)
    draws = [sample_next_token(logits, cold).item() for _ in range(20)]
    assert set(draws) == {1}


def test_sampling_follows_the_filtered_distribution() -> None:
    logits = logits_of(0.5, 0.3, 0.15, 0.05).repeat(4000, 1)
    settings = SamplingSettings(temperature=1.0, top_k=2, min_p=None)
    draws = sample_next_token(logits, settings, torch.Generator().manual_seed(0)).view(-1)
    share = (draws == 0).float().mean().item()
    assert set(draws.tolist()) == {0, 1} and abs(share - 0.5 / 0.8) < 0.03


def test_draws_never_take_a_token_of_probability_zero() -> None:
    from gptcli.errors import GptError
    from gptcli.sample import draw

    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0, 0.0]]).repeat(5000, 1)
    tokens = draw(probs, torch.Generator().manual_seed(0)).view(-1)
    assert set(tokens.tolist()) == {1, 3} and abs((tokens == 3).float().mean() - 0.75) < 0.03
    tiny = torch.zeros(1, 50257)
    tiny[0, 0], tiny[0, 50000] = 1e-30, 1.0  # one token takes all but nothing
    assert {int(draw(tiny, torch.Generator().manual_seed(s))) for s in range(200)} == {50000}
    with pytest.raises(GptError, match="not finite"):
        draw(torch.tensor([[float("nan"), 1.0]]))


def test_each_row_draws_from_its_own_generator() -> None:
    logits = torch.randn(3, 50)
    settings = SamplingSettings(temperature=1.0, min_p=None)
    gens = [torch.Generator().manual_seed(s) for s in (1, 2, 3)]
    batch = sample_next_token(logits, settings, gens).view(-1).tolist()
    alone = [
        sample_next_token(logits[i : i + 1], settings, torch.Generator().manual_seed(s)).item()
        for i, s in enumerate((1, 2, 3))
    ]
    assert batch == alone


def test_settings_are_checked() -> None:
    for bad in (
        dict(temperature=-1),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(min_p=1.5),
        dict(repetition_penalty=0),
        dict(presence_penalty=3),
        dict(frequency_penalty=-2.5),
    ):
        with pytest.raises(GptError):
            SamplingSettings(**bad)  # type: ignore[arg-type]


# -- the engine -----------------------------------------------------------------------------
def naive_logits(model, tokens: list[int]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Logits for the next token from the newest context-length tokens, with no cache."""
    window = tokens[-model.config.block_size :]
    with torch.no_grad():
        return model(torch.tensor([window]))[0][0, -1]


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_batch_equals_single_samples_with_the_same_seeds(family: str) -> None:
    model = tiny_model(family)
    prompt = [5, 17, 3, 88]
    for settings in (GREEDY, SamplingSettings(temperature=1.0, top_k=50, repetition_penalty=1.3)):
        gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
        steps = list(generate_batch(model, prompt, 12, settings, gens))
        batch = [[step[row] for step in steps] for row in range(3)]
        for row in range(3):
            alone = generate_tokens(
                model, prompt, 12, settings, torch.Generator().manual_seed(10 + row)
            )
            assert list(alone) == batch[row]
        if settings is not GREEDY:
            assert batch[0] != batch[1]  # the seeds differ, so do the samples


def test_stop_ids_end_a_sample_and_are_not_yielded() -> None:
    model = tiny_model("gpt2")
    free = list(generate_tokens(model, [1, 2, 3], 10, GREEDY))
    stop = free[4]
    out = list(generate_tokens(model, [1, 2, 3], 10, GREEDY, stop_ids=frozenset({stop})))
    assert out == free[: free.index(stop)]


def one_layer_modern() -> GPT:
    """With one layer, a sliding window sees exactly what a fresh pass over it would."""
    torch.manual_seed(0)
    config = ModelConfig(
        family="modern", vocab_size=300, block_size=24, n_layer=1, n_head=2, n_embd=32
    )
    model = GPT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_rotary_cache_is_a_ring_with_the_right_positions() -> None:
    model = one_layer_modern()  # context 24
    tokens = torch.randint(0, 300, (20,), generator=torch.Generator().manual_seed(0)).tolist()
    cache = model.new_cache(1)
    with torch.inference_mode():
        logits, _ = model(torch.tensor([tokens]), cache=cache, last_only=True)
        for step in range(40):  # to 60 tokens: the ring turns over more than once
            expected = naive_logits(model, tokens)
            torch.testing.assert_close(logits[0, -1], expected, atol=2e-4, rtol=0)
            token = (7 * step + 3) % 300
            tokens.append(token)
            logits, _ = model(torch.tensor([[token]]), cache=cache, last_only=True)
    assert cache.pos == 60


def test_rotary_generation_slides_past_the_context() -> None:
    model = one_layer_modern()
    prompt = list(range(1, 31))  # longer than the context: the newest 24 are used
    stats = GenerationStats()
    out = list(generate_tokens(model, prompt, 40, GREEDY, stats=stats))
    assert len(out) == 40 and stats.prompt_tokens == 24
    tokens = prompt[-24:]
    for token in out:  # every step sees the newest 24 tokens
        assert int(naive_logits(model, tokens).argmax()) == token
        tokens.append(token)


def test_learned_positions_prefill_the_newest_half_again() -> None:
    model = tiny_model("gpt2")  # context 24
    prompt = list(range(1, 31))
    out = list(generate_tokens(model, prompt, 40, GREEDY))
    tokens, start = prompt, len(prompt) - 24
    for token in out:
        if len(tokens) - start > 24:  # the window is full: keep its newest half
            start = len(tokens) - 12
        assert int(naive_logits(model, tokens[start:]).argmax()) == token
        tokens = [*tokens, token]


def test_model_refuses_positions_it_has_not_learned() -> None:
    model = tiny_model("gpt2")
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.randint(0, 300, (1, 24)), cache=cache)
        with pytest.raises(GptError, match="exceeds the context"):
            model(torch.tensor([[1]]), cache=cache)


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_static_cache_path_matches_the_dynamic_one(family: str) -> None:
    """The CUDA-graph path, run eagerly: same tokens, refilling its window when full."""
    model = tiny_model(family)
    prompt = [4, 8, 15, 16, 23, 42]
    dynamic = list(generate_tokens(model, prompt, 15, GREEDY))
    static = list(generate_tokens(model, prompt, 15, GREEDY, static=True))
    assert static == dynamic
    long = list(generate_tokens(model, prompt, 50, GREEDY, static=True))
    assert len(long) == 50 and long[:15] == dynamic


def test_static_step_writes_one_slot_and_masks_the_rest() -> None:
    model = tiny_model("gpt2")
    cache = model.new_cache(2)
    step = StaticDecodeStep(model, cache, 2, capture=False)
    with torch.inference_mode():
        model(torch.tensor([[1, 2, 3]]), cache=cache, last_only=True)
        before = cache.k.clone()
        logits = step(torch.tensor([[4], [5]]))
    assert logits.shape == (2, 300) and logits.dtype == torch.float32
    assert cache.pos == 4 and not cache.static
    changed = (cache.k != before).any(dim=(0, 1, 2, 4)).nonzero().view(-1).tolist()
    assert changed == [3]  # only slot 3 was written
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3, 5]]))[0][0, -1]
    torch.testing.assert_close(logits[1], expected, atol=1e-5, rtol=0)


def test_cuda_graph_and_dtype_switches() -> None:
    cpu = torch.device("cpu")
    assert not use_cuda_graphs(None, cpu) and not use_cuda_graphs(False, cpu)
    assert use_cuda_graphs(None, torch.device("cuda"))
    with pytest.raises(GptError, match="CUDA"):
        use_cuda_graphs(True, cpu)
    assert inference_dtype("float32", cpu) == torch.float32
    assert inference_dtype("bfloat16", cpu) == torch.bfloat16
    auto = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert inference_dtype("auto", cpu) == auto
    with pytest.raises(GptError, match="unknown dtype"):
        inference_dtype("int4", cpu)


@pytest.mark.parametrize("kind", ["onednn", "rowblocks", "int8"])
@pytest.mark.parametrize("shape", [(96, 32), (300, 32), (97, 16)])  # 97 rows: no row blocks
def test_packed_weight_equals_linear(kind: str, shape: tuple[int, int]) -> None:
    """Each fast path gives F.linear's result: the same product for oneDNN's packed bfloat16
    weight and float32's row blocks; for int8, F.linear over the dequantized weight, and the
    float32 product within the int8 rounding (half a step of each row's scale)."""
    weight = torch.randn(*shape)
    bias = torch.randn(shape[0])
    activations = torch.float32 if kind == "rowblocks" else torch.bfloat16
    packed = PackedWeight(weight, kind, activations)
    for rows in ((1, 1), (2, 5)):  # one token (decode) and a batch of sequences
        x = torch.randn(*rows, shape[1]).to(activations)
        for b in (None, bias):
            got = packed(x, b).float()
            assert got.shape == (*rows, shape[0])
            if kind == "rowblocks":
                want = torch.nn.functional.linear(x, weight, b)
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
                continue
            bb = None if b is None else b.to(torch.bfloat16).float()
            if kind == "onednn":
                want = torch.nn.functional.linear(x.float(), weight.bfloat16().float(), bb)
                torch.testing.assert_close(got, want, atol=2e-2, rtol=1e-2)
                continue
            q, scales = quantize_int8(weight)
            assert q.dtype == torch.int8 and q.abs().max() == 127
            dequant = q.float() * scales.bfloat16().float()[:, None]
            assert (dequant - weight).abs().max() <= scales.max() / 2 + 1e-2
            want = torch.nn.functional.linear(x.float(), dequant, bb)
            torch.testing.assert_close(got, want, atol=3e-2, rtol=1e-2)
            exact = torch.nn.functional.linear(x.float(), weight, bb)
            assert (got - exact).abs().max() < 0.05 * exact.abs().max()


def test_packed_weights_serve_only_inference_on_unchanged_weights() -> None:
    model = prepare_for_inference(tiny_model("gpt2"), torch.int8)
    head = model.lm_head
    assert head.packed is not None and head.packed.kind == "int8"
    assert model.transformer["wte"].weight.dtype == torch.bfloat16  # the tied head's rows
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        packed_logits = model(ids)[0]
    pack_weights(model, None, torch.bfloat16)
    with torch.no_grad():
        plain_logits = model(ids)[0]
    assert not torch.equal(packed_logits, plain_logits)  # the int8 path did run
    torch.testing.assert_close(packed_logits, plain_logits, atol=0.1, rtol=0.05)
    pack_weights(model, "int8", torch.bfloat16)
    x = torch.randn(1, 1, model.config.n_embd, dtype=torch.bfloat16)
    with torch.no_grad():
        assert not torch.equal(head(x), torch.nn.functional.linear(x, head.weight))
        head.weight.mul_(2)  # an in-place change: the packed copy is stale and not used
        assert head.packed is not None and not head.packed.matches(head.weight)
        assert torch.equal(head(x), torch.nn.functional.linear(x, head.weight))
    x.requires_grad_(True)
    pack_weights(model, "int8", torch.bfloat16)
    head(x).sum().backward()  # with gradients: F.linear on the parameter
    assert x.grad is not None


def test_bfloat16_weights_keep_greedy_text_and_rotary_tables() -> None:
    model = prepare_for_inference(tiny_model("modern"), torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.rope_cos.dtype == torch.float32
    out = list(generate_tokens(model, [1, 2, 3], 10, GREEDY))
    reference = list(generate_tokens(tiny_model("modern"), [1, 2, 3], 10, GREEDY))
    assert out == reference  # this model's greedy text survives the rounding


# -- text -----------------------------------------------------------------------------------
def test_stop_string_across_two_tokens_is_never_shown() -> None:
    tokenizer = Tokenizer.train_char(["abcdef"])
    stream = TextStream(tokenizer, ["cd"])
    shown = [stream.push(t) for t in tokenizer.encode("abcdef")]
    assert shown[:3] == ["a", "b", ""]  # "c" waits: it may start the stop string
    assert stream.stopped and "".join(shown) == "ab" and stream.flush() == ""


def test_a_character_split_across_tokens_is_shown_once_complete() -> None:
    tokenizer = Tokenizer.train_char(["plain ascii"])  # "é" is two byte tokens here
    ids = tokenizer.encode("aé")
    assert len(ids) == 3
    stream = TextStream(tokenizer)
    assert [stream.push(i) for i in ids] == ["a", "", "é"]


# -- the CLI --------------------------------------------------------------------------------
def test_cli_stop_string_split_across_tokens(trained_home: Path) -> None:
    free = json.loads(run("generate", "Once", "-n", "40", "--temperature", "0", "--json").stdout)[
        "text"
    ]
    stop = free[10:12]  # two characters: two tokens of this char model
    first = free.index(stop)
    out = run("generate", "Once", "-n", "40", "--temperature", "0", "--stop", stop, "--stop", "@@")
    assert out.stdout == "Once" + free[:first] + "\n"


def test_cli_samples_are_one_batch_with_per_sample_seeds(trained_home: Path) -> None:
    flags = ["-n", "12", "--top-k", "20", "--json"]
    batch = json.loads(run("generate", "The", "--num-samples", "3", "--seed", "5", *flags).stdout)
    texts = [s["text"] for s in batch["samples"]]
    for i in range(3):
        alone = json.loads(run("generate", "The", "--seed", str(5 + i), *flags).stdout)
        assert alone["text"] == texts[i]
    assert batch["generated_tokens"] == 36 and len(set(texts)) > 1
    plain = run("generate", "The", "--num-samples", "2", "--seed", "5", "-n", "12", "--top-k", "20")
    assert plain.stdout == f"The{texts[0]}\n\nThe{texts[1]}\n"


def test_cli_stats_and_json_report_the_same_numbers(trained_home: Path) -> None:
    out = json.loads(run("generate", "The fox", "-n", "10", "--json", "--ignore-eos").stdout)
    assert out["prompt_tokens"] == 7 and out["generated_tokens"] == 10
    assert out["prefill_tokens_per_s"] > 0 and out["decode_tokens_per_s"] > 0
    assert {"model", "prompt", "text"} <= set(out)
    shown = run("generate", "The fox", "-n", "10", "--stats", "--ignore-eos")
    assert "prompt 7 tokens" in shown.stderr and "generated 10 tokens" in shown.stderr
    assert "prefill" in shown.stderr and "decode" in shown.stderr
    assert "tok/s" not in shown.stdout


def test_cli_long_prompt_is_cropped_with_a_warning(trained_home: Path) -> None:
    result = run("generate", "word " * 20, "-n", "5", "--json")  # 100 tokens, context 32
    assert "warning" in result.stderr and "newest 32" in result.stderr
    assert json.loads(result.stdout)["prompt_tokens"] == 32


def test_cli_dtype_and_bfloat16_quality(trained_home: Path) -> None:
    flags = ["generate", "The", "-n", "8", "--temperature", "0", "--json"]
    for dtype in ("float32", "bfloat16", "auto"):
        assert json.loads(run(*flags, "--dtype", dtype).stdout)["generated_tokens"] <= 8
    run(*flags, "--dtype", "float16", code=1)
    fp32 = json.loads(run("eval", "--json").stdout)["loss"]
    bf16 = json.loads(run("eval", "--json", "--dtype", "bfloat16").stdout)["loss"]
    assert abs(bf16 - fp32) / fp32 < 0.005


def test_cli_output_into_a_closed_pipe_ends_quietly(trained_home: Path) -> None:
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gptcli", "generate", "Once", "-n", "3000", "--ignore-eos"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    head = proc.stdout.read(10)  # like `| head -c 10`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert head.startswith(b"Once") and err == ""


def test_decode_speed_counts_tokens_after_the_first() -> None:
    stats = GenerationStats(prompt_tokens=4, generated_tokens=10, decode_tokens=9)
    stats.prefill_seconds, stats.decode_seconds = 0.5, 3.0
    assert stats.prefill_tokens_per_s == 8 and math.isclose(stats.decode_tokens_per_s, 3.0)


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_penalties_count_every_generated_token(family: str) -> None:
    """Greedy decoding under penalties equals a plain loop that recounts the prompt and every
    generated token before each step: the running counts miss none."""
    model = prepare_for_inference(tiny_model(family), torch.float32)
    settings = SamplingSettings(
        temperature=0, repetition_penalty=1.5, presence_penalty=0.5, frequency_penalty=1.0
    )
    prompt = [5, 17, 42, 17]
    out = list(generate_tokens(model, prompt, 16, settings))
    ids, want = list(prompt), []
    vocab = model.config.vocab_size
    with torch.no_grad():
        for _ in range(16):
            logits = model(torch.tensor([ids]))[0][:, -1].float()
            seen = torch.zeros(1, vocab)
            seen[0, ids] = 1.0
            made = torch.zeros(1, vocab)
            for token in want:
                made[0, token] += 1.0
            logits = apply_repetition_penalty(logits, seen, settings.repetition_penalty)
            logits = apply_presence_frequency_penalties(
                logits, made, settings.presence_penalty, settings.frequency_penalty
            )
            token = int(logits.argmax(-1))
            want.append(token)
            ids.append(token)
    assert out == want
