"""GGUF files for llama.cpp and ollama: a gpt2-family model, its tokenizer, an ollama Modelfile.

The file follows llama.cpp's `gpt2` architecture: tensors `token_embd`, `position_embd`,
`blk.N.{attn_norm, attn_qkv, attn_output, ffn_norm, ffn_up, ffn_down}` (weight and bias) and
`output_norm`; the head is tied, so there is no `output` and llama.cpp reuses `token_embd`. Our
`nn.Linear` matrices are (out, in), which is the row order GGUF wants as they are. Matrices are
written in the chosen type (q8_0 needs rows of a multiple of 32 values, else float16, as
llama.cpp's own converter does); vectors and the position table stay float32.

The tokenizer is written as llama.cpp's byte-level BPE (`tokenizer.ggml.model` "gpt2" with the
GPT-2 pre-tokenizer "gpt-2"): tokens in id order as the byte-level strings `tokenizers` keeps,
the merges, special tokens as control tokens, end-of-text as both BOS and EOS (never added to a
prompt, as `gpt generate` adds none), and the chat template as Jinja.

The modern family is refused: no llama.cpp architecture computes it exactly (per-head QK-norm
with a ReLU² MLP, parameter-free norms and a norm on the embeddings). So are char tokenizers,
whose byte-fallback vocabulary llama.cpp's BPE cannot reproduce.

Pure conversion, like `hf.py`: `interop.export_gguf` resolves the model and the target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gptcli.errors import GptError
from gptcli.store import atomic_path
from gptcli.tokenizer import EOT

if TYPE_CHECKING:
    import numpy as np

    from gptcli.chat import Template
    from gptcli.model import GPT
    from gptcli.tokenizer import Tokenizer

# --dtype -> (the matrices' GGML type, the file's llama.cpp type), by their names in `gguf`
GGUF_TYPES = {
    "float32": ("F32", "ALL_F32"),
    "float16": ("F16", "MOSTLY_F16"),
    "bfloat16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}
DTYPES = tuple(GGUF_TYPES)
# our block names -> llama.cpp's (MODEL_TENSOR members of the gguf package)
BLOCK_TENSORS = {
    "ln_1": "ATTN_NORM",
    "attn.c_attn": "ATTN_QKV",
    "attn.c_proj": "ATTN_OUT",
    "ln_2": "FFN_NORM",
    "mlp.c_fc": "FFN_UP",
    "mlp.c_proj": "FFN_DOWN",
}
TOP_TENSORS = {
    "transformer.wte": "TOKEN_EMBD",
    "transformer.wpe": "POS_EMBD",
    "transformer.ln_f": "OUTPUT_NORM",
}


def import_gguf() -> Any:
    try:
        import gguf
    except ImportError:
        raise GptError(
            "GGUF export needs the gguf package: pip install 'gptcli[gguf]' (or pip install gguf)"
        ) from None
    return gguf


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise GptError(f"unknown GGUF --dtype {dtype!r} (choose from {', '.join(DTYPES)})")


def check_exportable(model: GPT, tokenizer: Tokenizer, name: str) -> None:
    """Refuses, in one line, what llama.cpp cannot compute or tokenize exactly."""
    config = model.config
    if config.family != "gpt2":
        raise GptError(
            f"{name} is a {config.family}-family model, and llama.cpp has no architecture that "
            "computes it exactly (QK-norm with a ReLU² MLP): export it as a transformers "
            "directory instead, or train with --family gpt2 for GGUF"
        )
    if tokenizer.kind != "bpe":
        raise GptError(
            f"{name} has a char tokenizer (characters with byte fallback), which llama.cpp's "
            "byte-level BPE cannot reproduce: train with the default BPE tokenizer for GGUF"
        )
    spec = json.loads(tokenizer.to_json())
    pre = spec.get("pre_tokenizer") or {}
    if (
        spec.get("normalizer") is not None
        or pre.get("type") != "ByteLevel"
        or not pre.get("use_regex", True)
        or pre.get("add_prefix_space", False)
    ):
        raise GptError(
            f"{name}: its tokenizer is not GPT-2's byte-level BPE, which is all llama.cpp's "
            "gpt2 architecture tokenizes"
        )


def tensor_name(gguf: Any, ours: str) -> str:
    """`transformer.h.3.attn.c_attn.weight` -> `blk.3.attn_qkv.weight`."""
    module, kind = ours.rsplit(".", 1)
    if module in TOP_TENSORS:
        return f"{gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, TOP_TENSORS[module])]}.{kind}"
    _, _, block, rest = module.split(".", 3)
    key = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, BLOCK_TENSORS[rest])]
    return f"{key.format(bid=int(block))}.{kind}"


def encode_tensor(gguf: Any, name: str, data: np.ndarray, dtype: str) -> tuple[np.ndarray, Any]:
    """(data as written, its GGML type) for one tensor under `dtype`."""
    types = gguf.GGMLQuantizationType
    qtype = getattr(types, GGUF_TYPES[dtype][0])
    if data.ndim == 1 or name.startswith("position_embd"):
        qtype = types.F32
    elif qtype == types.Q8_0 and data.shape[-1] % 32:
        qtype = types.F16
    return gguf.quants.quantize(data, qtype), qtype


def token_table(tokenizer: Tokenizer, vocab_size: int, gguf: Any) -> tuple[list[str], list[int]]:
    """Tokens in id order and their types, padded to the model's vocabulary."""
    special = set(tokenizer.hf.get_added_tokens_decoder())
    tokens, types = [], []
    for i in range(vocab_size):
        piece = tokenizer.hf.id_to_token(i) if i < tokenizer.vocab_size else None
        if piece is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(piece)
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
    return tokens, types


def merges(tokenizer: Tokenizer) -> list[str]:
    """BPE merges as "left right" strings (tokenizers keeps pairs or such strings)."""
    raw = json.loads(tokenizer.to_json())["model"].get("merges", [])
    return [m if isinstance(m, str) else " ".join(m) for m in raw]


def write_gguf(
    path: Path, model: GPT, tokenizer: Tokenizer, name: str, dtype: str, template: Template
) -> None:
    """Writes `model`, `tokenizer` and the chat template to `path` (atomically) as a llama.cpp
    gpt2 GGUF, its matrices in `dtype`."""
    gguf = import_gguf()
    check_dtype(dtype)
    config = model.config
    file_type = getattr(gguf.LlamaFileType, GGUF_TYPES[dtype][1])
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2])
        writer.add_name(name)
        writer.add_file_type(file_type)
        if dtype == "q8_0":
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_context_length(config.block_size)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_eps)
        tokens, types = token_table(tokenizer, config.vocab_size, gguf)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges(tokenizer))
        if tokenizer.eot_id is not None:
            writer.add_bos_token_id(tokenizer.eot_id)
            writer.add_eos_token_id(tokenizer.eot_id)
        writer.add_add_bos_token(False)
        writer.add_add_eos_token(False)
        writer.add_chat_template(template.jinja())
        for key, value in model.weights().items():
            gguf_name = tensor_name(gguf, key)
            data, qtype = encode_tensor(gguf, gguf_name, value.float().cpu().numpy(), dtype)
            writer.add_tensor(gguf_name, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


# -- ollama ---------------------------------------------------------------------------------
def go_template(template: Template) -> tuple[str, list[str]]:
    """The chat template as ollama's Go template, and its stop strings."""
    from gptcli.chat import ChatTemplate

    if isinstance(template, ChatTemplate):
        text = (
            f'{{{{ range .Messages }}}}{{{{ if eq .Role "system" }}}}{template.system}'
            f'{{{{ else if eq .Role "user" }}}}{template.user}{{{{ else }}}}{template.assistant}'
            f"{{{{ end }}}}\n{{{{ .Content }}}}{template.end}\n{{{{ end }}}}{template.assistant}\n"
        )
        return text, [template.end]
    text = (
        '{{ range .Messages }}{{ if eq .Role "system" }}{{ .Content }}\n\n'
        f'{{{{ else if eq .Role "user" }}}}{template.user} {{{{ .Content }}}}\n'
        f"{{{{ else }}}}{template.assistant} {{{{ .Content }}}}\n{{{{ end }}}}{{{{ end }}}}"
        f"{template.assistant}"
    )
    return text, [template.user]


def modelfile(gguf_path: Path, template: Template, tokenizer: Tokenizer) -> str:
    """An ollama Modelfile for the GGUF file beside it."""
    text, stops = go_template(template)
    if tokenizer.eot_id is not None:
        stops.append(EOT)
    lines = [f"FROM ./{gguf_path.name}", f'TEMPLATE """{text}"""']
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"
