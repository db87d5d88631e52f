"""Property-based tests: tokenizers, samplers and parsers against random input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptcli.config import parse_duration
from gptcli.errors import GptError
from gptcli.sample import SamplingSettings, sample_next_token
from gptcli.tokenizer import Tokenizer

TEXT = "Once upon a time a fox counted stars. 狐狸数星星。 ☺\n" * 20
TOKENIZERS = {"char": Tokenizer.train_char([TEXT]), "bpe": Tokenizer.train_bpe([TEXT], 300)}
FAST = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.mark.parametrize("kind", ["char", "bpe"])
@FAST
@given(text=st.text(max_size=200))
def test_any_text_round_trips(kind: str, text: str) -> None:
    tokenizer = TOKENIZERS[kind]
    assert tokenizer.decode(tokenizer.encode(text)) == text


logits_strategy = st.lists(
    st.floats(min_value=-20, max_value=20, allow_nan=False), min_size=2, max_size=40
)


@FAST
@given(values=logits_strategy, k=st.integers(1, 50), seed=st.integers(0, 2**31))
def test_top_k_samples_among_the_k_best(values: list[float], k: int, seed: int) -> None:
    logits = torch.tensor([values])
    token = sample_next_token(
        logits, SamplingSettings(temperature=1.0, top_k=k), torch.Generator().manual_seed(seed)
    )
    kth = torch.topk(logits, min(k, len(values))).values[0, -1]
    assert logits[0, int(token)] >= kth


@FAST
@given(values=logits_strategy, p=st.floats(0.01, 1.0), seed=st.integers(0, 2**31))
def test_top_p_samples_inside_the_nucleus(values: list[float], p: float, seed: int) -> None:
    logits = torch.tensor([values])
    token = int(
        sample_next_token(
            logits, SamplingSettings(temperature=1.0, top_p=p), torch.Generator().manual_seed(seed)
        )
    )
    probs = torch.softmax(logits[0], -1)
    better = probs[probs > probs[token]].sum()  # mass of strictly more likely tokens
    assert better < p + 1e-6


@FAST
@given(values=logits_strategy, m=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_min_p_never_picks_below_the_floor(values: list[float], m: float, seed: int) -> None:
    logits = torch.tensor([values])
    token = int(
        sample_next_token(
            logits, SamplingSettings(temperature=1.0, min_p=m), torch.Generator().manual_seed(seed)
        )
    )
    probs = torch.softmax(logits[0], -1)
    assert probs[token] >= probs.max() * m - 1e-6


@FAST
@given(values=logits_strategy)
def test_temperature_zero_is_argmax(values: list[float]) -> None:
    logits = torch.tensor([values])
    token = sample_next_token(logits, SamplingSettings(temperature=0))
    assert logits[0, int(token)] == logits.max()


@FAST
@given(
    temperature=st.floats(allow_nan=True), top_p=st.floats(allow_nan=True), top_k=st.integers(-5, 5)
)
def test_sampling_settings_accept_or_refuse_cleanly(
    temperature: float, top_p: float, top_k: int
) -> None:
    try:
        SamplingSettings(temperature=temperature, top_p=top_p, top_k=top_k)
    except GptError:
        return
    assert 0 <= temperature < float("inf") and 0 < top_p <= 1 and top_k >= 1


@FAST
@given(text=st.text(max_size=12))
def test_durations_parse_or_refuse_cleanly(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except GptError as exc:
        assert "duration" in str(exc)
        return
    assert seconds > 0


@FAST
@given(
    lines=st.lists(
        st.one_of(
            st.text(max_size=30),
            st.dictionaries(
                st.sampled_from(["text", "label", "x"]),
                st.one_of(st.text(max_size=10), st.integers(), st.none()),
                max_size=3,
            ).map(json.dumps),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_labelled_jsonl_reads_or_names_the_line(tmp_path_factory, lines: list[str]) -> None:  # type: ignore[no-untyped-def]
    from gptcli.tasks.classify import read_labelled

    path: Path = tmp_path_factory.mktemp("jsonl") / "data.jsonl"
    path.write_text("\n".join(line.replace("\n", " ") for line in lines), encoding="utf-8")
    try:
        records = read_labelled([path])
    except GptError as exc:
        assert str(path) in str(exc)
        return
    assert all(isinstance(t, str) and t and isinstance(label, str) for t, label, _ in records)
