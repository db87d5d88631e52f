"""transformers' NanoChat layout for the `modern` family: config and weights, both ways.

`NanoChatForCausalLM` (transformers >= 5) computes what a `modern` model with plain norms
(`config.norms == "plain"`) computes, term by term: token embedding, a parameter-free RMSNorm
on it, then per block RMSNorm -> attention (rotary, per-head QK-norm, scale 1/sqrt(head size))
and RMSNorm -> ReLU² MLP (width 4 x n_embd), both residual, no biases, a final RMSNorm and an
untied head; eps 1e-6 everywhere. Ours is written with `final_logit_softcapping` null (no cap)
and one key/value head per head. Two differences are of layout, not of math:

- its `rotate_half` gives (x2, -x1), rotating the other way round from ours. Writing each
  head's query and key rows with their second half negated turns it back: the rotated halves
  come out as (a, -b) for our (a, b), and q·k is unchanged (negation is exact, so the round
  trip is bit for bit);
- it normalises q and k after the rotation, we before: without gains the two agree, since a
  rotation keeps the vector's length.

The names (ours -> transformers): `transformer.wte` -> `model.embed_tokens`; block `i`'s
`attn.c_attn` (3C, C) -> `self_attn.{q,k,v}_proj` (C, C) each, `attn.c_proj` -> `o_proj`,
`mlp.c_fc` -> `mlp.fc1`, `mlp.c_proj` -> `mlp.fc2`; `lm_head` stays. Models with learned norm
gains ("gains", made before plain norms) have no NanoChat equivalent and are refused.

Knows nothing of the store; `gptcli.hf` calls it for `model_type` "nanochat".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gptcli.config import ModelConfig
from gptcli.errors import GptError

if TYPE_CHECKING:
    from pathlib import Path

    import torch

MODEL_TYPE = "nanochat"
EPS = 1e-6
# (our name in block i, theirs in layer i); c_attn is split into q, k and v.
BLOCK_NAMES = (
    ("attn.c_proj.weight", "self_attn.o_proj.weight"),
    ("mlp.c_fc.weight", "mlp.fc1.weight"),
    ("mlp.c_proj.weight", "mlp.fc2.weight"),
)


def check_exportable(config: ModelConfig, name: str) -> None:
    """Refuses a model NanoChatForCausalLM cannot compute exactly."""
    if config.family != "modern":
        raise GptError(f"{name} is a {config.family}-family model, not modern")
    if config.norms != "plain":
        raise GptError(
            f"{name} has learned norm gains (a modern model made before plain norms): "
            "transformers' NanoChatForCausalLM has none, so it cannot be exported exactly"
        )


def config_to_nanochat(config: ModelConfig, eot_id: int | None, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["NanoChatForCausalLM"],
        "model_type": MODEL_TYPE,
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "max_position_embeddings": config.block_size,
        "hidden_act": "relu2",
        "attention_dropout": config.dropout,
        "rms_norm_eps": EPS,
        "initializer_range": 0.02,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "final_logit_softcapping": None,
        "attention_bias": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "pad_token_id": None,
        "dtype": dtype,
    }


def config_from_nanochat(raw: dict[str, Any], source: Path | str) -> ModelConfig:
    """A NanoChat `config.json` -> our ModelConfig (plain norms); anything else is refused."""
    hidden = raw.get("hidden_size", 768)
    heads = raw.get("num_attention_heads", 6)
    checks = (
        (raw.get("final_logit_softcapping", 15.0) is None, "final_logit_softcapping"),
        (raw.get("num_key_value_heads") in (None, heads), "grouped key/value heads"),
        (raw.get("hidden_act", "relu2") == "relu2", f"activation {raw.get('hidden_act')!r}"),
        (raw.get("intermediate_size", 8192) == 4 * hidden, "an MLP width other than 4 x hidden"),
        (not raw.get("attention_bias", False), "attention biases"),
        (raw.get("head_dim") in (None, hidden // max(heads, 1)), "a head_dim of its own"),
        (float(raw.get("rms_norm_eps", EPS)) == EPS, f"rms_norm_eps other than {EPS}"),
    )
    for ok, what in checks:
        if not ok:
            raise GptError(f"{source}: {what} is not supported by the modern family")
    rope = raw.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default":
        raise GptError(f"{source}: rope_type {rope.get('rope_type')!r} is not supported")
    return ModelConfig(
        family="modern",
        vocab_size=raw.get("vocab_size", 50304),
        block_size=raw.get("max_position_embeddings", 2048),
        n_layer=raw.get("num_hidden_layers", 12),
        n_head=heads,
        n_embd=hidden,
        dropout=float(raw.get("attention_dropout", 0.0)),
        rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 10000.0))),
        norms="plain",
    )


def flip_second_halves(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Rows (n_head x head_size, C) with the second half of each head's rows negated."""
    rows, cols = weight.shape
    heads = weight.reshape(n_head, 2, rows // n_head // 2, cols).clone()
    heads[:, 1] = -heads[:, 1]
    return heads.reshape(rows, cols)


def tensors_to_nanochat(
    weights: dict[str, torch.Tensor], config: ModelConfig
) -> dict[str, torch.Tensor]:
    """Our modern state dict -> NanoChatForCausalLM names and layout."""
    out = {
        "model.embed_tokens.weight": weights["transformer.wte.weight"],
        "lm_head.weight": weights["lm_head.weight"],
    }
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = weights[ours + "attn.c_attn.weight"].split(config.n_embd, dim=0)
        out[theirs + "self_attn.q_proj.weight"] = flip_second_halves(q, config.n_head)
        out[theirs + "self_attn.k_proj.weight"] = flip_second_halves(k, config.n_head)
        out[theirs + "self_attn.v_proj.weight"] = v
        for mine, hf_name in BLOCK_NAMES:
            out[theirs + hf_name] = weights[ours + mine]
    return {key: value.contiguous().cpu() for key, value in out.items()}


def tensors_from_nanochat(
    hf: dict[str, torch.Tensor], config: ModelConfig, source: Path | str
) -> dict[str, torch.Tensor]:
    """NanoChatForCausalLM tensors -> our modern state dict (float32); the inverse of the above."""
    import torch

    def take(name: str) -> torch.Tensor:
        if name not in hf:
            raise GptError(f"{source}: tensor {name} is missing")
        return hf.pop(name).to(torch.float32)

    hf = dict(hf)
    ours = {"transformer.wte.weight": take("model.embed_tokens.weight")}
    if "lm_head.weight" in hf:
        ours["lm_head.weight"] = take("lm_head.weight")
    else:  # a tied checkpoint: our head is untied, so it starts as a copy of the embedding
        ours["lm_head.weight"] = ours["transformer.wte.weight"].clone()
    for i in range(config.n_layer):
        ours_, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q = flip_second_halves(take(theirs + "self_attn.q_proj.weight"), config.n_head)
        k = flip_second_halves(take(theirs + "self_attn.k_proj.weight"), config.n_head)
        v = take(theirs + "self_attn.v_proj.weight")
        ours[ours_ + "attn.c_attn.weight"] = torch.cat((q, k, v), dim=0)
        for mine, hf_name in BLOCK_NAMES:
            ours[ours_ + mine] = take(theirs + hf_name)
    if hf:
        raise GptError(
            f"{source}: tensors {', '.join(sorted(hf)[:3])} are not part of a NanoChat model"
        )
    return {key: value.contiguous() for key, value in ours.items()}
