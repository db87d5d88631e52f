"""`gpt serve` for scoring clients: `logprobs` (legacy and chat shapes, with `echo` over the
prompt's tokens), prompts as token ids, the tokenizer routes, 16 stop strings, and the 400s for
OpenAI fields the server cannot honour. A tiny random GPT-2 with a byte-level BPE, served in
float32, so its log-probabilities can be checked against `gpt eval`'s own computation."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hubfake import make_hf_dir

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
from test_serve import Served  # noqa: E402

from gptcli.checkpoint import load_model, write_model_dir  # noqa: E402
from gptcli.evaluate import ChoiceItem, choice_loglikelihoods  # noqa: E402


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, corpus: Path) -> Path:
    """`bpe`: the random tiny GPT-2; `eot`: the same whose every next token is end-of-text."""
    import torch

    home = tmp_path_factory.mktemp("scoring-store")
    source = make_hf_dir(tmp_path_factory.mktemp("scoring-hf") / "bpe", corpus)
    loaded = load_model(source)
    write_model_dir(home / "models" / "bpe", loaded.model, loaded.tokenizer)
    model, eot = loaded.model, loaded.tokenizer.eot_id
    with torch.no_grad():  # the final norm outputs end-of-text's embedding, whatever comes in
        wte = model.transformer["wte"].weight
        wte[eot] = wte[eot] / wte[eot].norm() * 20
        model.transformer["ln_f"].weight.zero_()
        model.transformer["ln_f"].bias.copy_(wte[eot])
    write_model_dir(home / "models" / "eot", model, loaded.tokenizer)
    return home


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Served]:
    served = Served(store, "-m", "bpe", "-m", "eot", "--dtype", "float32")
    yield served
    assert served.stop() == 0


def post(server: Served, path: str, body: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def completion(server: Served, **body: object) -> dict:
    response = post(server, "/v1/completions", {"model": "bpe", "temperature": 0} | body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("tool_choice", "auto"),
        ("functions", [{"name": "f"}]),
        ("function_call", "auto"),
        ("response_format", {"type": "json_object"}),
        ("logit_bias", {"5": 10}),
    ],
)
def test_unsupported_fields_are_refused_naming_them(
    server: Served, field: str, value: object
) -> None:
    for path, body in (
        ("/v1/completions", {"prompt": "Once"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ):
        response = post(server, path, body | {"model": "bpe", field: value, "max_tokens": 2})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field
        assert field in error["message"] and "not supported" in error["message"]


def test_empty_values_of_those_fields_are_no_ops(server: Served) -> None:
    plain = completion(server, prompt="Once", max_tokens=4)
    empty = {
        "tools": [],
        "tool_choice": None,
        "functions": None,
        "response_format": {"type": "text"},
        "logit_bias": {},
    }
    assert (
        completion(server, prompt="Once", max_tokens=4, **empty)["choices"][0]["text"]
        == (plain["choices"][0]["text"])
    )


def test_sixteen_stop_strings(server: Served) -> None:
    stops = [f"never{i}" for i in range(16)]
    assert completion(server, prompt="Once", max_tokens=2, stop=stops)["choices"]
    response = post(server, "/v1/completions", {"prompt": "Once", "stop": [*stops, "x"]})
    assert response.status_code == 400 and response.json()["error"]["param"] == "stop"


def test_tokenizer_routes(server: Served, store: Path) -> None:
    tok = load_model(store / "models" / "bpe").tokenizer
    info = httpx.get(server.url + "/tokenizer_info", timeout=10).json()
    assert info["eos_token"] == "<|endoftext|>" and info["model_max_length"] == 64
    text = "Once upon a time, the fox <|endoftext|> ran."
    tokens = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert tokens["tokens"] == tok.encode(text)
    eos = post(server, "/tokenize", {"prompt": info["eos_token"]}).json()["tokens"]
    assert eos == [tok.eot_id]
    assert post(server, "/detokenize", {"tokens": tokens["tokens"]}).json() == {"prompt": text}
    bad = post(server, "/detokenize", {"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_prompts_as_text_or_token_ids(server: Served, store: Path) -> None:
    tok = load_model(store / "models" / "bpe").tokenizer
    a, b = "Once upon a time", "The fox"
    ia, ib = tok.encode(a), tok.encode(b)
    texts = [c["text"] for c in completion(server, prompt=[a, b], max_tokens=5)["choices"]]
    assert [c["text"] for c in completion(server, prompt=[ia, ib], max_tokens=5)["choices"]] == (
        texts
    )
    assert completion(server, prompt=ia, max_tokens=5)["choices"][0]["text"] == texts[0]
    echoed = completion(server, prompt=ib, max_tokens=5, echo=True)["choices"][0]["text"]
    assert echoed == b + texts[1]
    for bad in ([], [[]], [1, "x"], [[1], "x"], [-1], [[10**9]]):
        response = post(server, "/v1/completions", {"prompt": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"]["param"] == "prompt"


def test_echo_logprobs_are_the_models_own(server: Served, store: Path) -> None:
    """What lm-evaluation-harness sends: token ids, echo, logprobs 1, max_tokens 1. The summed
    continuation equals `gpt eval --task choice`'s log-likelihood of that choice."""
    import torch

    loaded = load_model(store / "models" / "bpe")
    tok = loaded.tokenizer
    item = ChoiceItem("Once upon a time there was a", [" little fox", " bear"], 0)
    with torch.no_grad():
        expected = choice_loglikelihoods(loaded.model, tok, [item])[0]
    context = tok.encode(item.context)
    for choice, want in zip(item.choices, expected, strict=True):
        ids = tok.encode(item.context + choice)
        assert ids[: len(context)] == context
        body = {"prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1, "seed": 1234}
        out = completion(server, **body)["choices"][0]["logprobs"]
        assert len(out["tokens"]) == len(ids) + 1  # the prompt's, and exactly one generated
        assert out["token_logprobs"][0] is None and out["top_logprobs"][0] is None
        assert out["tokens"][: len(ids)] == [tok.decode([i]) for i in ids]
        got = sum(out["token_logprobs"][len(context) : -1])
        assert math.isclose(got, want, abs_tol=1e-4), (got, want)
        for lp, top in zip(out["token_logprobs"][1:], out["top_logprobs"][1:], strict=True):
            assert len(top) == 1 and lp <= max(top.values()) + 1e-6
        assert out["text_offset"][:3] == [0, len(out["tokens"][0]), len("".join(out["tokens"][:2]))]
    # up to 5 alternatives, and without echo only the generated tokens
    out = completion(server, prompt="Once", max_tokens=3, logprobs=5)["choices"][0]
    assert len(out["logprobs"]["tokens"]) == 3 and "".join(out["logprobs"]["tokens"]) == out["text"]
    # tokens that read alike (pieces of one character) share an entry: the likeliest stays
    assert all(1 <= len(top) <= 5 for top in out["logprobs"]["top_logprobs"])
    greedy = [max(top, key=top.get) for top in out["logprobs"]["top_logprobs"]]
    assert greedy == out["logprobs"]["tokens"]  # temperature 0 takes the likeliest
    response = post(server, "/v1/completions", {"prompt": "x", "logprobs": 6})
    assert response.status_code == 400 and response.json()["error"]["param"] == "logprobs"


def test_end_of_text_is_reported_once(server: Served, store: Path) -> None:
    tok = load_model(store / "models" / "eot").tokenizer
    ids = tok.encode("Once upon a time")
    body = {"model": "eot", "prompt": [ids], "echo": True, "logprobs": 1, "max_tokens": 1}
    choice = completion(server, **body)["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"]["tokens"][-1] == "<|endoftext|>"
    assert len(choice["logprobs"]["tokens"]) == len(ids) + 1
    # without logprobs, as before: the stop token ends the text and is not counted
    plain = completion(server, model="eot", prompt="Once", max_tokens=3)
    assert plain["choices"][0]["text"] == "" and plain["usage"]["completion_tokens"] == 0


def test_a_scored_prompt_is_never_cut(server: Served) -> None:
    long = [5] * 65  # the context is 64
    body = {"prompt": [long], "echo": True, "logprobs": 1, "max_tokens": 1}
    response = post(server, "/v1/completions", body | {"model": "bpe"})
    assert response.status_code == 400
    assert "max_length" in response.json()["error"]["message"]
    assert completion(server, prompt=[long], max_tokens=1)["choices"]  # unscored: cut, as before


def test_chat_logprobs(server: Served) -> None:
    body = {
        "model": "bpe",
        "messages": [{"role": "user", "content": "Once upon a time"}],
        "max_tokens": 4,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 2,
    }
    response = post(server, "/v1/chat/completions", body)
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert 1 <= len(content) <= 5
    for entry in content:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 2
        assert entry["token"] == entry["top_logprobs"][0]["token"]  # greedy
        assert bytes(entry["bytes"]).decode("utf-8", "replace") or entry["token"]
    for bad in ({"top_logprobs": 2, "logprobs": False}, {"logprobs": True, "stream": True}):
        response = post(server, "/v1/chat/completions", body | bad)
        assert response.status_code == 400, bad
