"""`gpt serve`'s tokenizer routes at the root, as vLLM has them (lm-evaluation-harness's
`tokenizer_backend=remote` reads them): `GET /tokenizer_info`, `POST /tokenize`
`{"prompt", "add_special_tokens"} -> {"tokens"}`, `POST /detokenize` `{"tokens"} -> {"prompt"}`.

A client that tokenizes with the server's own tokenizer needs no copy of it (no download).
Each takes an optional `model` (a query parameter for the GET), the first served by default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response

from gptcli.serve.protocol import invalid, model_name, token_list
from gptcli.tokenizer import EOT

if TYPE_CHECKING:
    from gptcli.serve.app import ServedModel, Server


def served_model(server: Server, body: dict[str, Any]) -> ServedModel:
    return server.models[model_name(body, server.names)]


async def tokenizer_info(server: Server, request: HttpRequest) -> Response:
    server.authorize(request)
    served = served_model(server, dict(request.query_params))
    tok = served.loaded.tokenizer
    eos = EOT if tok.eot_id is not None else None
    return JSONResponse(
        {
            "model": served.name,
            "tokenizer_class": tok.kind,
            "vocab_size": tok.vocab_size,
            "model_max_length": served.context,
            "eos_token": eos,
            "bos_token": None,  # the models here start a text with no BOS
            "pad_token": None,
            "unk_token": None,
            "chat_template": served.template.jinja(),
        }
    )


async def tokenize(server: Server, request: HttpRequest) -> Response:
    from gptcli.serve.app import read_json

    server.authorize(request)
    body = await read_json(request, server.limits.max_body)
    served = served_model(server, body)
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise invalid("prompt", "'prompt' must be a string")
    special = body.get("add_special_tokens", False)
    if not isinstance(special, bool):
        raise invalid("add_special_tokens", "'add_special_tokens' must be true or false")
    # Nothing is added either way: the tokenizers here have no BOS or other template.
    tokens = served.loaded.tokenizer.encode(prompt)
    return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": served.context})


async def detokenize(server: Server, request: HttpRequest) -> Response:
    from gptcli.serve.app import read_json

    server.authorize(request)
    body = await read_json(request, server.limits.max_body)
    served = served_model(server, body)
    tokens = body.get("tokens")
    if tokens != [] and not token_list(tokens):
        raise invalid("tokens", "'tokens' must be a list of token ids")
    vocab = served.loaded.tokenizer.vocab_size
    if any(not 0 <= t < vocab for t in tokens):
        raise invalid("tokens", f"token ids must be between 0 and {vocab - 1}")
    return JSONResponse({"prompt": served.loaded.tokenizer.decode(tokens)})
