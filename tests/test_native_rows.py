"""The native step on several rows of one cache (gptcli.kernels.rows): every row gets, to the
bit, the logits and cache contents of the one-row native step fed alone, with rows at
different positions, prefills beside decode steps, rows joining and leaving, past the context
(the rotary ring; gpt2 prefilled again), for every weight dtype; rows not fed are untouched;
bad input is refused before the kernel runs."""

from __future__ import annotations

import pytest
import torch
from test_model import tiny_model

from gptcli import kernels
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.inference.generate import decode, generate_tokens
from gptcli.inference.precision import prepare_for_inference
from gptcli.inference.sequence import Sequence
from gptcli.kernels.rows import NativeRows
from gptcli.kernels.step import NativeDecodeStep
from gptcli.lora import apply_lora
from gptcli.model import GPT
from gptcli.sample import SamplingSettings

pytestmark = pytest.mark.skipif(
    kernels.compiler() is None, reason="no C compiler to build the native step"
)
SLOTS, CONTEXT = 6, 24  # tiny_model's block_size


class Alone:
    """One sequence on its own one-row cache through the one-row native step."""

    def __init__(self, model, seed: int) -> None:  # type: ignore[no-untyped-def]
        self.cache = model.new_cache(1, CONTEXT)
        step = NativeDecodeStep.for_model(model, self.cache)
        assert step is not None
        self.step = step
        self.ids = torch.randint(0, 300, (200,), generator=torch.manual_seed(seed)).tolist()
        self.fed = 0  # tokens of ids fed so far

    def feed(self, count: int, refill: int = 0) -> tuple[int, list[int], torch.Tensor]:
        """(position, tokens, logits) of the next `count` tokens, or after a refill with the
        newest `refill` tokens fed so far at position 0."""
        if refill:
            window = self.ids[self.fed - refill : self.fed]
            self.cache.pos = 0
            return 0, window, self.step(torch.tensor([window]))
        pos, tokens = self.cache.pos, self.ids[self.fed : self.fed + count]
        self.fed += count
        return pos, tokens, self.step(torch.tensor([tokens]))


def run_schedule(family: str, dtype: torch.dtype) -> None:
    model = prepare_for_inference(tiny_model(family), dtype)
    cache = model.new_cache(SLOTS, CONTEXT)
    native = NativeRows.for_model(model, cache)
    assert native is not None
    rows = {slot: Alone(model, seed=10 + slot) for slot in (0, 2, 3, 4, 5)}
    # each pass: slot -> how many tokens to feed (a prompt's chunk, or one)
    schedule: list[dict[int, int]] = [
        {0: 5, 2: 9, 3: 1},  # prompts of different lengths arrive together
        {0: 1, 2: 1, 3: 1},
        {0: 1, 2: 1, 3: 1, 4: 7, 5: 4},  # two join with their prompts beside three steps
        {0: 1, 3: 1, 4: 1, 5: 1},  # 2 sits out a step
    ]
    schedule += [{0: 1, 2: 1, 3: 1, 4: 1, 5: 1}] * 4
    schedule += [{2: 1, 3: 1, 5: 1}] * 14  # 0 and 4 leave; 2 passes the context
    with torch.inference_mode():
        for step in schedule:
            fed, positions, tokens, want = [], [], [], []
            for slot, what in step.items():
                alone = rows[slot]
                if family == "gpt2" and alone.cache.pos + what > CONTEXT:
                    # learned positions: a full row is prefilled again from its newest half
                    pos, ids, logits = alone.feed(0, refill=CONTEXT // 2)
                else:
                    pos, ids, logits = alone.feed(what)
                fed.append(slot)
                positions.append(pos)
                tokens.append(ids)
                want.append(logits[0])
            got = native(fed, positions, tokens)
            assert torch.equal(got, torch.stack(want)), (step, fed)
    assert rows[2].fed > CONTEXT  # past the context: the ring, or prefilled again
    for slot, alone in rows.items():
        assert torch.equal(cache.k[:, slot], alone.cache.k[:, 0]), slot
        assert torch.equal(cache.v[:, slot], alone.cache.v[:, 0]), slot
    assert not cache.k[:, 1].any() and not cache.v[:, 1].any()  # never fed: untouched


@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_rows_together_equal_rows_alone(family: str, dtype: torch.dtype) -> None:
    run_schedule(family, dtype)


@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_a_long_pass_equals_rows_alone(family: str, dtype: torch.dtype) -> None:
    # 6 prompts of about 20 tokens in one pass, 3072 columns into the MLP's projection: more
    # tokens than the kernel keeps in cache at once there (64), so those weights pass twice,
    # through tiles of 8 and 4 tokens and the one-token rows; two layers, so that every
    # token's MLP output reaches the last tokens' logits (through the second layer's keys)
    torch.manual_seed(0)
    config = ModelConfig(
        family=family, vocab_size=300, block_size=CONTEXT, n_layer=2, n_head=4, n_embd=768
    )
    model = prepare_for_inference(GPT(config).eval(), dtype)
    cache = model.new_cache(SLOTS, CONTEXT)
    native = NativeRows.for_model(model, cache)
    assert native is not None
    rows = [Alone(model, seed=20 + slot) for slot in range(SLOTS)]
    with torch.inference_mode():
        fed = [alone.feed(20 - slot % 2) for slot, alone in enumerate(rows)]
        got = native(list(range(SLOTS)), [p for p, _, _ in fed], [ids for _, ids, _ in fed])
        assert torch.equal(got, torch.stack([logits[0] for _, _, logits in fed]))
        then = [alone.feed(1) for alone in rows]  # and a decode step after it
        got = native(list(range(SLOTS)), [p for p, _, _ in then], [ids for _, ids, _ in then])
        assert torch.equal(got, torch.stack([logits[0] for _, _, logits in then]))


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_float32_rows_equal_the_forward_pass(family: str) -> None:
    model = prepare_for_inference(tiny_model(family), torch.float32)
    prompts = [[5, 7, 9], [1, 2, 3, 4, 5, 6, 7, 8], [42]]
    cache = model.new_cache(3, CONTEXT)
    native = NativeRows.for_model(model, cache)
    assert native is not None
    with torch.inference_mode():
        got = native([2, 0, 1], [0, 0, 0], prompts)
        for row, ids in enumerate(prompts):
            want = model(torch.tensor([ids]), last_only=True)[0][0, -1]
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)
        got = native([0, 1, 2], [8, 1, 3], [[11], [12], [13]])  # each at its own length
        for row, ids in enumerate([prompts[1] + [11], prompts[2] + [12], prompts[0] + [13]]):
            want = model(torch.tensor([ids]), last_only=True)[0][0, -1]
            torch.testing.assert_close(got[row], want, atol=1e-5, rtol=1e-5)


def test_bad_input_is_refused_before_the_kernel_runs() -> None:
    model = prepare_for_inference(tiny_model("gpt2"), torch.float32)
    cache = model.new_cache(3, CONTEXT)
    native = NativeRows.for_model(model, cache)
    assert native is not None
    assert native.bad_tokens([1, 300]) and native.bad_tokens([-1]) and not native.bad_tokens([299])
    with torch.inference_mode():
        for rows, positions, tokens, message in [
            ([0, 1], [0, 0], [[1], [300]], "out of range"),
            ([0, 0], [0, 0], [[1], [2]], "distinct"),
            ([3], [0], [[1]], "distinct"),
            ([0], [20], [[1] * 5], "exceeds the context|does not fit"),
            ([0], [24], [[1]], "exceeds the context"),
            ([0], [0], [[]], "at least one"),
        ]:
            with pytest.raises(GptError, match=message):
                native(rows, positions, tokens)
    assert not cache.k.any() and not cache.v.any()


def test_it_stands_aside_where_it_cannot_run() -> None:
    model = prepare_for_inference(tiny_model("gpt2"), torch.float32)
    apply_lora(model, rank=2)
    assert NativeRows.for_model(model, model.new_cache(2, 16)) is None


def seeded(seed: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8])
def test_num_samples_each_get_the_tokens_they_get_alone(family: str, dtype: torch.dtype) -> None:
    # `gpt generate --num-samples 3`: the samples decode together through the native step,
    # past the context (gpt2 prefills again, modern slides its ring); one ends early
    model = prepare_for_inference(tiny_model(family), dtype)
    settings = SamplingSettings(temperature=1.0, top_k=40)
    prompt, n = [5, 17, 42, 7], 40
    alone = [list(generate_tokens(model, prompt, n, settings, seeded(s))) for s in (1, 2, 3)]
    seqs = [Sequence(prompt, settings, seeded(s), max_tokens=n) for s in (1, 2, 3)]
    together: list[list[int]] = [[], [], []]
    for step, tokens in enumerate(decode(model, prompt, seqs)):
        for row, token in enumerate(tokens):
            if token is not None:
                together[row].append(token)
        if step == 9:
            seqs[1].stop()  # a stop string ended it: it leaves the batch
    assert together[0] == alone[0] and together[2] == alone[2]
    assert together[1] == alone[1][:10]
    assert len(alone[0]) == n
