"""The continuous-batching engine against `generate_tokens`, token for token: sequences of
different lengths decoded together, both model families, greedy, seeded and penalised
sampling, a sequence that passes the context, stop strings and cancellation."""

from __future__ import annotations

import threading

import pytest
import torch

from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.inference.batching import BatchEngine, Event, QueueFull, RaggedKVCache, Request
from gptcli.inference.generate import generate_tokens
from gptcli.inference.text import TextStream
from gptcli.model import GPT
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer

TEXT = "hello world, this is a tiny corpus of text for a char tokenizer. "
SETTINGS = [
    SamplingSettings(temperature=0),
    SamplingSettings(),
    SamplingSettings(
        temperature=1.0,
        top_k=5,
        repetition_penalty=1.3,
        presence_penalty=0.5,
        frequency_penalty=0.3,
    ),
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.train_char([TEXT])


def tiny(tok: Tokenizer, family: str) -> GPT:
    torch.manual_seed(0)
    values = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, block_size=24).to_dict()
    return GPT(ModelConfig.from_dict(values | {"family": family})).eval()


class Collector:
    """The text and end of every choice of one request, and when it is all done."""

    def __init__(self, n: int = 1) -> None:
        self.texts = [""] * n
        self.finish = [""] * n
        self.tokens = [0] * n
        self.left = n
        self.done = threading.Event()
        self.errors: list[str] = []

    def __call__(self, event: Event) -> None:
        if event.kind == "text":
            self.texts[event.choice] += event.text
        elif event.kind == "done":
            self.finish[event.choice], self.tokens[event.choice] = event.finish, event.tokens
            self.left -= 1
            if not self.left:
                self.done.set()
        else:
            self.errors.append(event.text)
            self.done.set()


def reference(model: GPT, tok: Tokenizer, prompt: str, n: int, settings, seed: int) -> str:  # type: ignore[no-untyped-def]
    generator = torch.Generator()
    generator.manual_seed(seed)
    stream = TextStream(tok)
    tokens = generate_tokens(model, tok.encode(prompt), n, settings, generator)
    return "".join(stream.push(t) for t in tokens) + stream.flush()


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_together_or_alone_the_tokens_of_generate(tok: Tokenizer, family: str) -> None:
    model = tiny(tok, family)
    prompts = ["hello", "this is a", "tiny corpus of", "t"]  # different lengths
    # within the context: a rotary model would slide past it where the engine prefills again
    n = 9 if family == "modern" else 40
    engine = BatchEngine(model, tok, max_batch=4).start()
    try:
        for settings in SETTINGS:
            expected = [reference(model, tok, p, n, settings, 7 + i) for i, p in enumerate(prompts)]
            for together in (False, True):
                sinks = []
                for i, p in enumerate(prompts):
                    sink = Collector()
                    engine.submit(Request(tok.encode(p), n, settings, 7 + i, sink))
                    sinks.append(sink)
                    if not together:
                        assert sink.done.wait(60)
                for sink in sinks:
                    assert sink.done.wait(60) and not sink.errors
                assert [s.texts[0] for s in sinks] == expected, (settings, together)
    finally:
        engine.stop()


def test_requests_arriving_together_are_prefilled_in_one_pass(tok: Tokenizer) -> None:
    """Clients that start together reach the engine milliseconds apart: an idle engine waits
    for the rest of the burst, so none of them waits for another's pass to end."""
    model = tiny(tok, "gpt2")
    engine = BatchEngine(model, tok, max_batch=4).start()
    greedy = SamplingSettings(temperature=0)
    try:
        sinks = [Collector() for _ in range(4)]
        for i, sink in enumerate(sinks):
            engine.submit(Request(tok.encode("hello"[: i + 1]), 5, greedy, 0, sink))
            threading.Event().wait(0.004)
        assert all(s.done.wait(60) and not s.errors for s in sinks)
        assert engine.joins == 1
        alone = Collector()  # one request alone joins as soon as no other follows it
        engine.submit(Request(tok.encode("hello"), 5, greedy, 0, alone))
        assert alone.done.wait(60) and engine.joins == 2
    finally:
        engine.stop()


def test_stops_lengths_choices_and_cancel(tok: Tokenizer) -> None:
    model = tiny(tok, "gpt2")
    engine = BatchEngine(model, tok, max_batch=3, max_queue=1).start()
    greedy = SamplingSettings(temperature=0)
    try:
        full = reference(model, tok, "hello", 20, greedy, 0)
        stop = full[8:10]
        sink = Collector()
        engine.submit(Request(tok.encode("hello"), 20, greedy, 0, sink, stops=(stop,)))
        assert sink.done.wait(60)
        assert sink.texts == [full[: full.find(stop)]] and sink.finish == ["stop"]
        sink = Collector(2)
        engine.submit(Request(tok.encode("hello"), 5, SamplingSettings(), 3, sink, n=2))
        assert sink.done.wait(60)
        assert sink.finish == ["length", "length"] and sink.tokens == [5, 5]
        # a long request cancelled mid-way leaves its slot; the others are not held up
        long, short = Collector(), Collector()
        cancelled = Request(tok.encode("t"), 10**6, SamplingSettings(), 1, long)
        engine.submit(cancelled)
        engine.submit(Request(tok.encode("hello"), 30, greedy, 0, short))
        assert short.done.wait(60) and short.tokens == [30]
        cancelled.cancel()
        for _ in range(600):
            if engine.busy_slots == 0:
                break
            threading.Event().wait(0.05)
        assert engine.busy_slots == 0 and not long.done.is_set()
    finally:
        engine.stop()


def test_queue_limit(tok: Tokenizer) -> None:
    engine = BatchEngine(tiny(tok, "gpt2"), tok, max_batch=1, max_queue=1)  # not started
    greedy = SamplingSettings(temperature=0)
    engine.submit(Request([1], 5, greedy, 0, Collector()))  # takes the free slot next step
    engine.submit(Request([1], 5, greedy, 0, Collector()))  # waits
    with pytest.raises(QueueFull):
        engine.submit(Request([1], 5, greedy, 0, Collector()))
    with pytest.raises(GptError, match="n is at most 1"):
        engine.submit(Request([1], 5, greedy, 0, Collector(), n=2))


def test_ragged_cache_rows_see_only_their_own_keys(tok: Tokenizer) -> None:
    """One step over rows of lengths 3 and 7 gives each row the logits it gets alone."""
    model = tiny(tok, "modern")
    prompts = [tok.encode("hel"), tok.encode("tiny co")]
    cache = RaggedKVCache(model, 2)
    alone = []
    with torch.inference_mode():
        for slot, ids in enumerate(prompts):
            single = model.new_cache(1, len(ids) + 1)
            model(torch.tensor([ids[:-1]]), cache=single)
            cache.store(slot, single, len(ids) - 1)
            logits, _ = model(torch.tensor([ids[-1:]]), cache=single, last_only=True)
            alone.append(logits[0, -1])
        cache.select([0, 1], [len(p) - 1 for p in prompts])
        tokens = torch.tensor([[p[-1]] for p in prompts])
        together, _ = model(tokens, cache=cache, last_only=True)
    for row in range(2):
        torch.testing.assert_close(together[row, -1], alone[row], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "modern"])
def test_the_native_step_on_one_slot_of_the_ragged_cache(tok: Tokenizer, family: str) -> None:
    """The native step writes and reads slot 2 of 3 only, and takes turns with torch's
    batched path on it: the logits and keys of a one-row cache, step by step."""
    from gptcli import kernels
    from gptcli.inference.batching import SlotCache
    from gptcli.kernels.step import NativeDecodeStep

    if kernels.library() is None:
        pytest.skip(f"no native step here: {kernels.unavailable()}")
    model = tiny(tok, family)
    ids = tok.encode("tiny corpus")
    cache = RaggedKVCache(model, 3)
    step = NativeDecodeStep.for_model(model, SlotCache(cache.k, cache.v, cache.max_len), row=2)
    assert step is not None
    single = model.new_cache(1, model.config.block_size)
    with torch.inference_mode():
        ours = step(torch.tensor([ids[:7]]))  # prefill, pos 0
        theirs, _ = model(torch.tensor([ids[:7]]), cache=single, last_only=True)
        torch.testing.assert_close(ours[0], theirs[0, -1], rtol=1e-5, atol=1e-5)
        for position in range(7, len(ids)):  # then torch's path and the native one in turn
            if position % 2:
                cache.select([2], [position])
                ours, _ = model(torch.tensor([[ids[position]]]), cache=cache, last_only=True)
                ours = ours[:, -1]
            else:
                step.cache.pos = position
                ours = step(torch.tensor([[ids[position]]]))
            theirs, _ = model(torch.tensor([[ids[position]]]), cache=single, last_only=True)
            torch.testing.assert_close(ours[0], theirs[0, -1], rtol=1e-5, atol=1e-5)
    n = len(ids)
    torch.testing.assert_close(cache.k[:, 2, :, :n], single.k[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.v[:, 2, :, :n], single.v[:, 0, :, :n], rtol=1e-5, atol=1e-5)
    assert not cache.k[:, :2].any() and not cache.v[:, :2].any()  # the other slots untouched
    assert not cache.k[:, 2, :, n:].any()


@pytest.mark.parametrize("family", ["gpt2", "modern"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.int8])
def test_alone_or_together_the_native_step_gives_generates_tokens(
    tok: Tokenizer, family: str, dtype: torch.dtype
) -> None:
    """On the CPU every prefill and step goes through the native step, sequences side by side
    in one pass: each gets the tokens `gpt generate` gives it alone, even where activations
    in bfloat16 (torch's batched path) and float32 (the native step's) part."""
    from gptcli import kernels
    from gptcli.inference.precision import prepare_for_inference

    if kernels.library() is None:
        pytest.skip(f"no native step here: {kernels.unavailable()}")
    model = prepare_for_inference(tiny(tok, family), dtype)
    prompts = ["hello", "tiny corpus of", "t", "this is a"]
    n = 9 if family == "modern" else 30  # gpt2: past the context, prefilled again
    engine = BatchEngine(model, tok, max_batch=4).start()
    try:
        for settings in SETTINGS[:2]:
            expected = [reference(model, tok, p, n, settings, 3 + i) for i, p in enumerate(prompts)]
            for together in (False, True):
                sinks = []
                for i, prompt in enumerate(prompts):
                    sink = Collector()
                    engine.submit(Request(tok.encode(prompt), n, settings, 3 + i, sink))
                    sinks.append(sink)
                    if not together:
                        assert sink.done.wait(60)
                for sink in sinks:
                    assert sink.done.wait(60) and not sink.errors
                assert [s.texts[0] for s in sinks] == expected, (settings, together)
        assert engine.native_steps == engine.steps > 0
    finally:
        engine.stop()


def test_a_prompt_token_the_model_does_not_know_fails_that_request_only(tok: Tokenizer) -> None:
    model = tiny(tok, "gpt2")
    engine = BatchEngine(model, tok, max_batch=4).start()
    greedy = SamplingSettings(temperature=0)
    try:
        bad, good = Collector(), Collector()
        with engine.lock:  # both join at the same step
            engine.submit(Request([1, tok.vocab_size + 3], 5, greedy, 0, bad))
            engine.submit(Request(tok.encode("hello"), 5, greedy, 0, good))
        assert bad.done.wait(60) and good.done.wait(60)
        assert bad.errors == [f"token id out of range for the vocabulary of {tok.vocab_size}"]
        assert not good.errors and good.texts[0] == reference(model, tok, "hello", 5, greedy, 0)
    finally:
        engine.stop()


def test_a_request_whose_prefill_fails_gets_the_error(tok: Tokenizer) -> None:
    """Taken from the queue but not yet in a slot, it is failed too, not left waiting."""
    engine = BatchEngine(tiny(tok, "modern"), tok, max_batch=2)

    def fail(requests: list[Request]) -> None:
        raise MemoryError("no room for the prefill")

    engine._join = fail  # type: ignore[method-assign]
    engine.start()
    try:
        sink = Collector()
        engine.submit(Request(tok.encode("hello"), 5, SETTINGS[0], 0, sink))
        assert sink.done.wait(30)
        assert sink.errors == ["generation failed: MemoryError: no room for the prefill"]
    finally:
        engine.stop()
