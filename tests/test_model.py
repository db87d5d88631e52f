"""The model: save/load keeps logits, the KV cache matches recomputation, both families."""

from __future__ import annotations

import pytest
import torch

from gptcli.checkpoint import load_model, write_model_dir
from gptcli.config import ModelConfig
from gptcli.inference.generate import generate_tokens
from gptcli.model import GPT
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer

FAMILIES = ["gpt2", "modern"]


def tiny_model(family: str, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(
        family=family, vocab_size=300, block_size=24, n_layer=2, n_head=2, n_embd=32
    )
    model = GPT(config)
    with torch.no_grad():  # larger weights than the init, so the test sees real differences
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_then_load_gives_identical_logits(family: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model(family)
    tokenizer = Tokenizer.train_char(["".join(chr(65 + i) for i in range(26))])
    write_model_dir(tmp_path, model, tokenizer)
    loaded = load_model(tmp_path)
    x = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x)[0], model(x)[0], rtol=0, atol=0)


def naive_greedy(model: GPT, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([tokens]))
            tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt) :]


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_generation_matches_recomputation(family: str) -> None:
    model = tiny_model(family)
    prompt = [5, 17, 3, 88, 42]
    cached = list(generate_tokens(model, prompt, 15, SamplingSettings(temperature=0)))
    assert cached == naive_greedy(model, prompt, 15)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_matches_one_pass(family: str) -> None:
    model = tiny_model(family)
    x = torch.randint(0, 300, (1, 20))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.new_cache(1)
        first, _ = model(x[:, :7], cache=cache)
        second, _ = model(x[:, 7:], cache=cache)
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-5, atol=1e-5)


def test_generation_runs_past_the_context() -> None:
    model = tiny_model("gpt2")
    out = list(generate_tokens(model, [1, 2, 3], 60, SamplingSettings(temperature=0)))
    assert len(out) == 60  # context is 24: the cache is refilled, not overrun


def test_loss_ignores_masked_targets() -> None:
    model = tiny_model("modern")
    x = torch.randint(0, 300, (2, 10))
    y = torch.randint(0, 300, (2, 10))
    masked = y.clone()
    masked[:, :5] = -100
    with torch.no_grad():
        logits, loss = model(x, masked)
        reference = torch.nn.functional.cross_entropy(
            logits[:, 5:].reshape(-1, 300), y[:, 5:].reshape(-1)
        )
    torch.testing.assert_close(loss, reference)


def test_config_validation() -> None:
    from gptcli.errors import GptError

    with pytest.raises(GptError, match="divisible"):
        ModelConfig(n_embd=30, n_head=4)
    with pytest.raises(GptError, match="positive"):
        ModelConfig(n_layer=-1)
    with pytest.raises(GptError, match="unknown keys"):
        ModelConfig.from_dict({"n_layers": 3})


@pytest.mark.parametrize("norms", ["plain", "gains"])
def test_cpu_training_kernels_give_the_librarys_gradients(
    norms: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RMSNorm and ReLU² with their own backward (gptcli.fused, CPU training) give the loss
    and every gradient that autograd through torch's kernels gives."""
    from gptcli import fused

    torch.manual_seed(0)
    config = ModelConfig(
        family="modern", vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, norms=norms
    )
    model = GPT(config).train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    x, y = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))

    def loss_and_grads() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model(x, y)[1]
        assert loss is not None
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    own = fused.wants_own_backward
    monkeypatch.setattr(fused, "wants_own_backward", lambda t: calls.append(1) or own(t))
    ours, our_grads = loss_and_grads()
    assert calls and own(torch.ones(1, requires_grad=True))
    monkeypatch.setattr(fused, "wants_own_backward", lambda t: False)
    theirs, their_grads = loss_and_grads()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
