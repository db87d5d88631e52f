"""The GPT: attention, MLP, block, model (leaf to root), the KV cache, and safetensors I/O.

Two families share one class:
- `gpt2`: learned positions, LayerNorm with bias, GELU MLP, tied head (the Hugging Face layout);
- `modern`: rotary positions, RMSNorm, QK-norm, ReLU² MLP, no biases, untied head. Its norms
  (`config.norms`) are "plain", parameter-free and also on the token embeddings (nanochat's
  recipe, which transformers' NanoChatForCausalLM computes, see `gptcli.nanochat`), or
  "gains", with a learned gain each and none on the embeddings (older models).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from gptcli import fused
from gptcli.config import ModelConfig
from gptcli.errors import GptError

Rope = tuple[torch.Tensor, torch.Tensor]  # cos and sin tables of rotary positions

FORMAT_VERSION = "1"


class KVCache:
    """Preallocated keys and values for every layer, written in place as tokens arrive.

    `pos` counts the tokens seen so far. Once `max_len` are stored, each new token overwrites
    the oldest slot (a ring): one query's attention over a set of keys does not depend on their
    order, and rotary keys carry their own positions, so a rotary model slides its window this
    way at no cost. Chunks of several tokens must fit before the end of the ring.

    While `static` is set (by `gptcli.inference.generate.StaticDecodeStep`), one-token steps use the
    layout CUDA graphs need: the slot to write lives in the tensor `index`, set by the caller
    before each step, and attention spans the whole cache under a mask, so every step runs the
    same kernels on the same buffers.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
        zeroed: bool = True,
    ) -> None:
        shape = (config.n_layer, batch_size, config.n_head, max_len, config.head_size)
        # `zeroed=False` leaves the memory as it comes, which is cheaper (the 124M shape's full
        # cache is 75 MB), for users that read only the slots written (not the static layout)
        make = torch.zeros if zeroed else torch.empty
        self.k = make(shape, device=device, dtype=dtype)
        self.v = make(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # tokens seen (in static mode: kept by the caller)
        self.static = False
        self.index = torch.zeros((), dtype=torch.long, device=device)  # static mode's slot
        self.slots = torch.arange(max_len, device=device)
        self.mask: torch.Tensor | None = None  # static mode: the slots this step attends to

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Stores k, v (B, H, T, D) at the current position; returns the keys/values to attend to.

        A batch of one is written to every row, so one prefill serves a batch of samples.
        """
        if self.static:
            k = k.to(self.k.dtype).expand_as(self.k[layer, :, :, :1])
            v = v.to(self.v.dtype).expand_as(self.v[layer, :, :, :1])
            self.k[layer].index_copy_(2, self.index.view(1), k)
            self.v[layer].index_copy_(2, self.index.view(1), v)
            return self.k[layer], self.v[layer]
        T = k.size(2)
        start = self.pos % self.max_len
        if T > 1 and self.pos + T > self.max_len:
            raise GptError(f"a chunk of {T} tokens does not fit in the cache of {self.max_len}")
        self.k[layer, :, :, start : start + T] = k
        self.v[layer, :, :, start : start + T] = v
        end = min(self.pos + T, self.max_len)
        return self.k[layer, : k.size(0), :, :end], self.v[layer, : v.size(0), :, :end]

    def static_mask(self) -> torch.Tensor:
        """(1, 1, 1, max_len): True for the slots a static step attends to (up to `index`)."""
        return (self.slots <= self.index).view(1, 1, 1, -1)

    def reset(self) -> None:
        self.pos = 0


class RMSNorm(nn.Module):
    """x / rms(x), times a learned gain unless `gain` is False (then it has no parameters)."""

    def __init__(self, dim: int, eps: float = 1e-6, gain: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None
        self.dim = dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if fused.wants_own_backward(x):
            y = fused.rms_norm(x, self.eps)
            return y if self.weight is None else y * self.weight
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


def rotary_tables(config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    half = config.head_size // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()  # (block_size, head_size/2) each


def rotary_at(config: ModelConfig, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin for positions past the table (a sliding window), in float64 for large angles."""
    half = config.head_size // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(half, dtype=torch.float64) / half))
    angles = torch.outer(torch.arange(start, start + length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)  # x: (B, H, T, D); cos/sin: (T, D/2)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class PackedLinear(Protocol):
    """What a `Linear` needs of a packed copy of its weight (see `gptcli.inference.packing`):
    whether it still matches the weight, and the product with it."""

    def matches(self, weight: torch.Tensor) -> bool: ...

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor: ...


class Linear(nn.Linear):
    """nn.Linear with an inference-only fast path: a packed copy of the weight, set by
    `gptcli.inference.packing.pack_weights`, serves calls without gradients while it matches
    the weight; everything else (training, a changed weight) goes through `F.linear`."""

    packed: PackedLinear | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed
        if packed is not None and not torch.is_grad_enabled() and packed.matches(self.weight):
            return packed(x, self.bias)
        return F.linear(x, self.weight, self.bias)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        bias = config.family == "gpt2"
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd, bias=bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=bias)
        self.n_head = config.n_head
        self.layer = layer
        self.dropout = config.dropout
        self.rotary = config.family == "modern"
        if self.rotary:
            gain = config.norms == "gains"
            self.q_norm = RMSNorm(config.head_size, gain=gain)
            self.k_norm = RMSNorm(config.head_size, gain=gain)

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope | None,
        cache: KVCache | None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, -1).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_head, -1).transpose(1, 2)
        v = v.view(B, T, self.n_head, -1).transpose(1, 2)
        if self.rotary:
            assert rope is not None
            q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        past = 0
        mask = None
        if cache is not None and cache.static:  # one token over the whole cache, masked
            k, v = cache.update(self.layer, k, v)
            mask = cache.mask
        elif cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)
        if cache is not None:
            q = q.to(k.dtype)  # the cache may be float32 under bfloat16 weights
        if past and T > 1:  # a chunk after cached tokens: query i sees keys up to past + i
            rows = torch.arange(T, device=x.device).unsqueeze(1) + past
            mask = torch.arange(past + T, device=x.device).unsqueeze(0) <= rows
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=(past == 0 and T > 1),
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.to(x.dtype).transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        bias = config.family == "gpt2"
        self.c_fc = Linear(config.n_embd, 4 * config.n_embd, bias=bias)
        self.c_proj = Linear(4 * config.n_embd, config.n_embd, bias=bias)
        self.gpt2 = config.family == "gpt2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)
        if self.gpt2:
            h = F.gelu(h, approximate="tanh")
        else:
            h = fused.relu_squared(h) if fused.wants_own_backward(h) else F.relu(h).square()
        return self.c_proj(h)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.family == "gpt2":
        return nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
    return RMSNorm(config.n_embd, gain=config.norms == "gains")


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: Rope | None, cache: KVCache | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln_1(x), rope, cache))
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
                ln_f=make_norm(config),
            )
        )
        if config.family == "gpt2":
            self.transformer["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        # plain norms normalise the embeddings too (a parameter-free identity otherwise)
        self.embed_norm = (
            RMSNorm(config.n_embd, gain=False)
            if config.family == "modern" and config.norms == "plain"
            else nn.Identity()
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.tied = config.family == "gpt2"
        if self.tied:
            self.lm_head.weight = self.transformer["wte"].weight
        else:
            cos, sin = rotary_tables(config)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        if config.labels:
            self.classifier = nn.Linear(config.n_embd, len(config.labels))
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections, scaled as in GPT-2
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
        cls_positions: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        aux_lm_weight: float = 0.5,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V), or (B, 1, V) with `last_only`; loss if targets given.

        Targets equal to -100 are not scored; a batch with none to score has loss 0, not NaN.
        With `cls_positions` (B,) the logits are the classifier's (B, labels) at those tokens,
        and with `labels` the loss is the classification loss + aux_lm_weight x the LM loss.
        """
        x = self.hidden(idx, cache)
        if cls_positions is not None:
            rows = torch.arange(idx.size(0), device=idx.device)
            logits = self.classifier(x[rows, cls_positions])  # (B, labels)
            if labels is None:
                return logits, None
            loss = F.cross_entropy(logits.float(), labels)
            if targets is not None and aux_lm_weight:
                loss = loss + aux_lm_weight * lm_loss(self.lm_head(x), targets)
            return logits, loss
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        return logits, lm_loss(logits, targets) if targets is not None else None

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """idx (B, T) -> final hidden states (B, T, C), after the last norm.

        With a cache, idx continues the tokens already in it; a rotary model may go on past
        its context (the cache is a sliding window), a model with learned positions may not.
        """
        _B, T = idx.shape
        if cache is not None and cache.static:
            return self._hidden_static(idx, cache)
        start = cache.pos if cache is not None else 0
        limit = (
            self.config.block_size if cache is None else min(self.config.block_size, cache.max_len)
        )
        if start + T > limit and not (cache is not None and self.rotary and T == 1):
            raise GptError(f"sequence of {start + T} tokens exceeds the context of {limit}")
        x = self.transformer["wte"](idx)  # (B, T, C)
        rope = None
        if self.tied:
            x = x + self.transformer["wpe"].weight[start : start + T]
        elif start + T <= self.config.block_size:
            rope = (self.rope_cos[start : start + T], self.rope_sin[start : start + T])
        else:
            rope = tuple(t.to(idx.device) for t in rotary_at(self.config, start, T))
        x = self.transformer["drop"](self.embed_norm(x))
        for block in self.transformer["h"]:
            x = block(x, rope, cache)
        if cache is not None:
            cache.pos += T
        return self.transformer["ln_f"](x)

    def _hidden_static(self, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """One token per row at position `cache.index` (a tensor), with no host-side state.

        `index` holds one position for every row, or one per row: gptcli.inference.batching's ragged
        cache, whose rows are sequences of different lengths, decodes through this path too.
        """
        if idx.size(1) != 1:
            raise GptError("a static cache takes one token at a time")
        at = cache.index.view(-1)  # (1,) or (B,)
        x = self.transformer["wte"](idx)  # (B, 1, C)
        rope = None
        if self.tied:
            x = x + self.transformer["wpe"].weight.index_select(0, at).unsqueeze(1)
        else:  # (1 or B, 1, 1, D/2): broadcast over the heads of each row
            half = self.rope_cos.size(-1)
            rope = (
                self.rope_cos.index_select(0, at).view(-1, 1, 1, half),
                self.rope_sin.index_select(0, at).view(-1, 1, 1, half),
            )
        x = self.embed_norm(x)
        cache.mask = cache.static_mask()
        for block in self.transformer["h"]:
            x = block(x, rope, cache)
        return self.transformer["ln_f"](x)

    @property
    def rotary(self) -> bool:
        """Whether positions are rotary (the cache can slide) rather than learned."""
        return not self.tied

    def cast_weights(self, dtype: torch.dtype) -> None:
        """Casts the parameters, in place, for inference; the rotary tables stay float32."""
        for p in self.parameters():
            p.data = p.data.to(dtype)

    def grow_vocab(self, vocab_size: int) -> None:
        """Adds rows to the embedding and head, initialised to the mean of the existing ones."""
        old = self.config.vocab_size
        if vocab_size <= old:
            return
        extra = vocab_size - old
        wte = self.transformer["wte"]
        grown = nn.Embedding(vocab_size, self.config.n_embd).to(wte.weight)
        with torch.no_grad():
            grown.weight[:old] = wte.weight
            grown.weight[old:] = wte.weight.mean(0, keepdim=True).expand(extra, -1)
        self.transformer["wte"] = grown
        if self.tied:
            self.lm_head = Linear(self.config.n_embd, vocab_size, bias=False)
            self.lm_head.weight = grown.weight
        else:
            head = Linear(self.config.n_embd, vocab_size, bias=False).to(self.lm_head.weight)
            with torch.no_grad():
                head.weight[:old] = self.lm_head.weight
                head.weight[old:] = self.lm_head.weight.mean(0, keepdim=True).expand(extra, -1)
            self.lm_head = head
        self.config.vocab_size = vocab_size

    def new_cache(
        self, batch_size: int, max_len: int | None = None, zeroed: bool = True
    ) -> KVCache:
        """A cache in the weights' dtype, except on the CPU: there it is float32, where
        attention of one query runs several times faster than in bfloat16 (and scores stay
        exact), for a cache far smaller than the weights read each step."""
        p = next(self.parameters())
        size = max_len or self.config.block_size
        dtype = torch.float32 if p.device.type == "cpu" else p.dtype
        return KVCache(self.config, batch_size, size, p.device, dtype, zeroed)

    # -- weights on disk ------------------------------------------------------------------
    def weights(self, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """State dict (or `state`, e.g. with LoRA adapters merged: `lora.merged_weights`)
        without the tied head (safetensors refuses shared tensors)."""
        state = self.state_dict() if state is None else state
        if self.tied:
            state.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in state.items()}

    def load_weights(self, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
        expected = self.weights()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise GptError(f"{source}: weights do not match the model config ({detail})")
        for key, value in tensors.items():
            if value.shape != expected[key].shape:
                raise GptError(
                    f"{source}: tensor {key} has shape {tuple(value.shape)}, "
                    f"config expects {tuple(expected[key].shape)}"
                )
        self.load_state_dict(tensors, strict=False)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over the scored targets (those not -100); 0 when there are none."""
    total = F.cross_entropy(
        logits.float().view(-1, logits.size(-1)),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return total / (targets != -100).sum().clamp(min=1)
