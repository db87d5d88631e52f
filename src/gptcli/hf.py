"""Hugging Face interop: GPT-2 directories <-> our `gpt2` family, NanoChat <-> `modern`.

The NanoChat mapping (`model_type` "nanochat") lives in `gptcli.nanochat`; this module reads
and writes the directories and does GPT-2's.

A Hugging Face GPT-2 directory holds `config.json` (`model_type` "gpt2"), `model.safetensors`
(or shards listed in `model.safetensors.index.json`) and `tokenizer.json`, or `vocab.json` and
`merges.txt`. Its projections are `Conv1D` layers that store weights as (in, out); our
`nn.Linear` stores (out, in), so the four matrices of each block are transposed both ways.
Settings our model cannot reproduce exactly are refused, never approximated. Pickle checkpoints
(`pytorch_model.bin`) are refused too: loading one can run code.

Pure conversion: this module reads and writes directories it is given, and knows nothing of
the store (`interop.py` imports into and exports out of it). torch is imported inside the
functions that need it, so reading a config stays light (`gpt models list`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

from gptcli import nanochat
from gptcli.config import ModelConfig
from gptcli.errors import GptError
from gptcli.store import (
    atomic_path,
    read_json,
    safetensors_header,
    write_json_atomic,
    write_text_atomic,
)
from gptcli.tokenizer import EOT, Tokenizer

if TYPE_CHECKING:
    import torch

    from gptcli.model import GPT

# Conv1D weights, (in, out) on the Hugging Face side.
CONV1D_WEIGHTS = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
# Causal-mask buffers that older checkpoints carry; our attention builds its own mask.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
# Names transformers gives the tanh approximation of GELU, which is what our MLP computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
PICKLE_CHECKPOINTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"


# -- reading a Hugging Face directory ---------------------------------------------------------
def is_hf_config(raw: Any) -> bool:
    """Whether a parsed `config.json` is a Hugging Face config (it names a `model_type`)."""
    return isinstance(raw, dict) and "model_type" in raw


def is_hf_dir(directory: Path) -> bool:
    """Whether `directory/config.json` is a Hugging Face config."""
    path = directory / "config.json"
    return path.is_file() and is_hf_config(read_json(path))


def config_from_hf(raw: dict[str, Any], source: Path | str) -> ModelConfig:
    """A GPT-2 `config.json` -> our ModelConfig; anything we cannot compute exactly is refused.

    Missing keys take the `GPT2Config` defaults. Dropout comes from `resid_pdrop` (our model has
    one dropout rate); it only matters for fine-tuning.
    """
    model_type = raw.get("model_type")
    if model_type == nanochat.MODEL_TYPE:
        return nanochat.config_from_nanochat(raw, source)
    if model_type != "gpt2":
        raise GptError(
            f"{source}: model_type {model_type!r} is not supported: only Hugging Face GPT-2 "
            "and NanoChat checkpoints (model_type 'gpt2' or 'nanochat') can be used"
        )
    n_embd = raw.get("n_embd", 768)
    activation = raw.get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        raise GptError(
            f"{source}: activation_function {activation!r} is not supported: the gpt2 family "
            "computes the tanh approximation of GELU ('gelu_new')"
        )
    if not raw.get("scale_attn_weights", True):
        raise GptError(f"{source}: unscaled attention (scale_attn_weights: false) is not supported")
    if raw.get("scale_attn_by_inverse_layer_idx", False):
        raise GptError(
            f"{source}: attention scaled by layer (scale_attn_by_inverse_layer_idx: true) "
            "is not supported"
        )
    if raw.get("add_cross_attention", False):
        raise GptError(f"{source}: cross-attention (add_cross_attention: true) is not supported")
    n_inner = raw.get("n_inner")
    if n_inner is not None and isinstance(n_embd, int) and n_inner != 4 * n_embd:
        raise GptError(
            f"{source}: an MLP width of {n_inner} (n_inner) is not supported: the gpt2 family "
            f"uses 4 × n_embd = {4 * n_embd}"
        )
    # reorder_and_upcast_attn only changes the order of float operations: numerics, not math.
    return ModelConfig(
        family="gpt2",
        vocab_size=raw.get("vocab_size", 50257),
        block_size=raw.get("n_positions", raw.get("n_ctx", 1024)),
        n_layer=raw.get("n_layer", 12),
        n_head=raw.get("n_head", 12),
        n_embd=n_embd,
        dropout=float(raw.get("resid_pdrop", 0.1)),
        layer_norm_eps=float(raw.get("layer_norm_epsilon", 1e-5)),
    )


def read_hf_config(directory: Path) -> ModelConfig:
    return config_from_hf(read_json(directory / "config.json"), directory)


def weight_files(directory: Path) -> list[Path]:
    """The safetensors file(s) of a directory; a pickle-only directory is refused."""
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    if (directory / WEIGHTS_INDEX).is_file():
        weight_map = read_json(directory / WEIGHTS_INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise GptError(f"{directory / WEIGHTS_INDEX}: no weight_map")
        names = sorted(set(weight_map.values()))
        if any(not isinstance(n, str) or Path(n).name != n for n in names):
            raise GptError(f"{directory / WEIGHTS_INDEX}: shard names must be plain file names")
        return [directory / n for n in names]
    pickles = [n for n in PICKLE_CHECKPOINTS if (directory / n).is_file()]
    if pickles:
        raise GptError(
            f"{directory}: {pickles[0]} is a pickle checkpoint, and gptcli never loads pickle "
            "(unpickling can run arbitrary code). Convert it to model.safetensors, e.g. with "
            'transformers: python -c "from transformers import GPT2LMHeadModel as M; '
            f"M.from_pretrained('{directory}').save_pretrained('{directory}')\""
        )
    raise GptError(f"{directory}: no {WEIGHTS} (a Hugging Face GPT-2 directory needs one)")


def read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in weight_files(directory):
        if not path.is_file():
            raise GptError(f"{path}: weights file is missing")
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118
                    tensors[key] = f.get_tensor(key)
        except SafetensorError as exc:
            raise GptError(f"{path}: not a valid safetensors file ({exc})") from None
    return tensors


def tensors_from_hf(
    hf: dict[str, torch.Tensor], tied: bool, source: Path | str
) -> dict[str, torch.Tensor]:
    """GPT2Model or GPT2LMHeadModel tensors -> our `gpt2` state dict (fp32, Linear layout).

    Accepts names with or without the `transformer.` prefix. The head must be tied: an
    `lm_head.weight` is only accepted when it equals the token embedding.
    """
    import torch

    ours: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in hf.items():
        name = key.removeprefix("transformer.")
        if name == "lm_head.weight" or name.endswith(MASK_BUFFERS):
            continue
        if not name.startswith(("wte.", "wpe.", "h.", "ln_f.")):
            unexpected.append(key)
            continue
        if name.endswith(CONV1D_WEIGHTS):
            value = value.t()
        ours["transformer." + name] = value.to(torch.float32).contiguous()
    if unexpected:
        raise GptError(
            f"{source}: tensors {', '.join(sorted(unexpected)[:3])} are not part of a GPT-2 "
            "language model"
        )
    head = hf.get("lm_head.weight")
    wte = ours.get("transformer.wte.weight")
    if head is not None and wte is not None:
        if head.shape != wte.shape or not torch.equal(head.to(torch.float32), wte):
            raise GptError(
                f"{source}: lm_head.weight differs from the token embedding: untied output "
                "heads are not supported by the gpt2 family"
            )
    elif not tied:
        raise GptError(
            f"{source}: tie_word_embeddings is false but there is no lm_head.weight: untied "
            "output heads are not supported by the gpt2 family"
        )
    return ours


def gpt2_bpe_tokenizer(vocab: Path, merges: Path) -> Tokenizer:
    """GPT-2's byte-level BPE from `vocab.json` + `merges.txt`, as transformers builds it."""
    try:
        hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as exc:  # tokenizers raises plain Exception for bad files
        raise GptError(f"{vocab.parent}: cannot read vocab.json and merges.txt ({exc})") from None
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    if hf.token_to_id(EOT) is not None:
        hf.add_special_tokens([EOT])
    return Tokenizer(hf)


def read_hf_tokenizer(directory: Path) -> Tokenizer:
    if (directory / "tokenizer.json").is_file():
        return Tokenizer.load(directory / "tokenizer.json")
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return gpt2_bpe_tokenizer(vocab, merges)
    raise GptError(
        f"{directory}: no tokenizer (expected tokenizer.json, or vocab.json + merges.txt)"
    )


def read_hf_dir(
    directory: Path, raw: dict[str, Any] | None = None
) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Config, weights in our layout, and tokenizer of a Hugging Face GPT-2 or NanoChat dir;
    `raw`: its config.json, when the caller has read it already."""
    raw = raw if raw is not None else read_json(directory / "config.json")
    config = config_from_hf(raw, directory)
    if config.family == "modern":
        tensors = nanochat.tensors_from_nanochat(read_hf_tensors(directory), config, directory)
    else:
        tied = bool(raw.get("tie_word_embeddings", True))
        tensors = tensors_from_hf(read_hf_tensors(directory), tied, directory)
    return config, tensors, read_hf_tokenizer(directory)


def count_hf_parameters(directory: Path) -> int:
    """Parameters of a Hugging Face directory, from safetensors headers (no torch)."""
    tied = read_json(directory / "config.json").get("model_type") == "gpt2"
    total = 0
    for path in weight_files(directory):
        for key, entry in safetensors_header(path).items():
            if key == "__metadata__" or key.endswith(MASK_BUFFERS):
                continue
            if tied and key == "lm_head.weight":
                continue
            count = 1
            for dim in entry.get("shape", []):
                count *= dim
            total += count
    return total


# -- writing one ------------------------------------------------------------------------------
def config_to_hf(config: ModelConfig, eot_id: int | None, dtype: str) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.layer_norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "dtype": dtype,
    }


def tensors_to_hf(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our `gpt2` state dict (without the tied head) -> GPT2LMHeadModel names and layout."""
    return {
        key: (value.t() if key.endswith(CONV1D_WEIGHTS) else value).contiguous().cpu()
        for key, value in weights.items()
    }


def write_hf_files(
    directory: Path, model: GPT, tokenizer: Tokenizer, chat_template: str | None = None
) -> None:
    """Writes config, weights and tokenizer as `from_pretrained` expects them: GPT2LMHeadModel
    for the gpt2 family, NanoChatForCausalLM for modern. `chat_template` is Jinja."""
    from safetensors.torch import save_file

    eot = tokenizer.eot_id
    dtype = str(model.transformer["wte"].weight.dtype).removeprefix("torch.")
    if model.config.family == "modern":
        config = nanochat.config_to_nanochat(model.config, eot, dtype)
        tensors = nanochat.tensors_to_nanochat(model.weights(), model.config)
    else:
        config = config_to_hf(model.config, eot, dtype)
        tensors = tensors_to_hf(model.weights())
    write_json_atomic(directory / "config.json", config)
    write_json_atomic(
        directory / "generation_config.json", {"bos_token_id": eot, "eos_token_id": eot}
    )
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(directory / "tokenizer.json", tokenizer.to_json())
    special = EOT if eot is not None else None
    # PreTrainedTokenizerFast takes tokenizer.json as it is, whatever kind of tokenizer it is.
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special,
        "eos_token": special,
        "unk_token": special,
        "model_max_length": model.config.block_size,
        # GPT-2 adds token_type_ids to its embeddings: a tokenizer must not produce them.
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
    }
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    write_json_atomic(directory / "tokenizer_config.json", tokenizer_config)
