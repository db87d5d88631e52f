"""The OpenAI wire format: request bodies checked field by field, errors and response objects.

Everything here is pure (no HTTP server, no model): a body (already parsed JSON) becomes a
`CompletionParams` or `ChatParams`, or an `ApiError` with the status code and the error body
OpenAI clients expect: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import math
import random
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from gptcli.chat import ROLES, Message, check_messages
from gptcli.errors import GptError
from gptcli.sample import SamplingSettings

MAX_STOPS = 16
MAX_LOGPROBS = 5  # top entries per position in /v1/completions (OpenAI's legacy limit)
MAX_TOP_LOGPROBS = 20  # top entries per token in /v1/chat/completions


class ApiError(Exception):
    """A request the server refuses: the status code and OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param, code="invalid_value")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_tokens: int = 2048  # most tokens per choice
    max_n: int = 8  # most choices per request (the engine's batch)
    max_prompts: int = 8  # most prompts in one /v1/completions request
    max_body: int = 1 << 20  # bytes


# -- field checks ---------------------------------------------------------------------------
def _number(body: dict[str, Any], key: str, default: float | None) -> float | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(key, f"'{key}' must be a number")
    return float(value)


def _integer(body: dict[str, Any], key: str, default: int | None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(key, f"'{key}' must be an integer")
    return value


def _in_range(key: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise invalid(key, f"'{key}' must be between {low:g} and {high:g}, got {value:g}")


def _boolean(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(key, f"'{key}' must be true or false")
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise invalid("stop", "'stop' must be a string or a list of strings")
    if len(value) > MAX_STOPS:
        raise invalid("stop", f"'stop' takes at most {MAX_STOPS} strings")
    return tuple(s for s in value if s)


def model_name(body: dict[str, Any], served: list[str]) -> str:
    """The requested model, which must be one of the served names (the first when omitted)."""
    name = body.get("model")
    if name is None:
        return served[0]
    if not isinstance(name, str):
        raise invalid("model", "'model' must be a string")
    if name not in served:
        raise ApiError(
            404,
            f"the model {name!r} does not exist here; served: {', '.join(served)}",
            param="model",
            code="model_not_found",
        )
    return name


@dataclass(frozen=True)
class SamplingParams:
    """The fields /v1/completions and /v1/chat/completions share."""

    model: str
    settings: SamplingSettings
    max_tokens: int
    n: int
    stop: tuple[str, ...]
    seed: int
    stream: bool
    include_usage: bool
    ignore_eos: bool = False
    logprobs: int | None = None  # alternatives reported per token; None: no logprobs


def sampling_params(
    body: dict[str, Any], served: list[str], limits: Limits, default_max_tokens: int
) -> SamplingParams:
    model = model_name(body, served)
    max_tokens = _integer(body, "max_completion_tokens", None)
    key = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, key = _integer(body, "max_tokens", None), "max_tokens"
    if max_tokens is None:
        max_tokens = min(default_max_tokens, limits.max_tokens)
    if max_tokens < 1:
        raise invalid(key, f"'{key}' must be at least 1, got {max_tokens}")
    if max_tokens > limits.max_tokens:
        raise invalid(key, f"'{key}' is at most {limits.max_tokens} here, got {max_tokens}")
    n = _integer(body, "n", 1)
    assert n is not None
    if not 1 <= n <= limits.max_n:
        raise invalid("n", f"'n' must be between 1 and {limits.max_n}, got {n}")
    temperature = _number(body, "temperature", SamplingSettings.temperature)
    _in_range("temperature", temperature, 0.0, 2.0)
    top_p = _number(body, "top_p", None)
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise invalid("top_p", f"'top_p' must be in (0, 1], got {top_p:g}")
    top_k = _integer(body, "top_k", None)
    if top_k is not None and top_k < 1:
        raise invalid("top_k", f"'top_k' must be at least 1, got {top_k}")
    min_p = _number(body, "min_p", SamplingSettings.min_p)
    _in_range("min_p", min_p, 0.0, 1.0)
    repetition = _number(body, "repetition_penalty", 1.0)
    if repetition is not None and not 0.0 < repetition <= 10.0:
        raise invalid("repetition_penalty", "'repetition_penalty' must be in (0, 10]")
    presence = _number(body, "presence_penalty", 0.0)
    frequency = _number(body, "frequency_penalty", 0.0)
    _in_range("presence_penalty", presence, -2.0, 2.0)
    _in_range("frequency_penalty", frequency, -2.0, 2.0)
    seed = _integer(body, "seed", None)
    if seed is None:
        seed = random.randrange(2**62)
    if not -(2**63) <= seed < 2**63 - limits.max_n:  # choice i samples with seed + i
        raise invalid("seed", "'seed' must fit in 64 bits")
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", "'stream_options' must be an object")
        if not stream:
            raise invalid("stream_options", "'stream_options' needs 'stream': true")
        include_usage = _boolean(options, "include_usage", False)
    refuse_unsupported(body)
    try:
        settings = SamplingSettings(
            temperature=temperature if temperature is not None else SamplingSettings.temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition if repetition is not None else 1.0,
            presence_penalty=presence or 0.0,
            frequency_penalty=frequency or 0.0,
        )
    except GptError as exc:  # its messages name the command-line flags
        raise ApiError(400, str(exc).removeprefix("--")) from None
    ignore_eos = _boolean(body, "ignore_eos", False)  # as vLLM: for benchmarks and tests
    return SamplingParams(
        model, settings, max_tokens, n, _stops(body), seed, stream, include_usage, ignore_eos
    )


def refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields a client relies on that this server cannot honour: a 400 naming the field, never
    a reply that silently ignores them. Empty or null values (and `{"type": "text"}`, `"none"`)
    ask for nothing and pass."""
    for key in ("tools", "functions"):
        if body.get(key) not in (None, []):
            raise invalid(key, f"'{key}' is not supported by this server (no tool calling)")
    for key in ("tool_choice", "function_call"):
        if body.get(key) not in (None, "none", ""):
            raise invalid(key, f"'{key}' is not supported by this server (no tool calling)")
    response_format = body.get("response_format")
    if response_format is not None and response_format != {"type": "text"}:
        raise invalid(
            "response_format",
            '\'response_format\' other than {"type": "text"} is not supported by this '
            "server (no JSON mode or schemas)",
        )
    if body.get("logit_bias") not in (None, {}):
        raise invalid("logit_bias", "'logit_bias' is not supported by this server")


def completion_logprobs(body: dict[str, Any]) -> int | None:
    """Legacy completions: `logprobs` N (0..5) reports each token's log-probability and the N
    likeliest alternatives; null (or absent) reports none."""
    value = body.get("logprobs")
    if value is None or value is False:
        return None
    if value is True:
        return 0
    top = _integer(body, "logprobs", None)
    assert top is not None
    _in_range("logprobs", top, 0, MAX_LOGPROBS)
    return top


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat completions: `logprobs` true, with `top_logprobs` N (0..20) alternatives."""
    wanted = _boolean(body, "logprobs", False)
    top = _integer(body, "top_logprobs", None)
    if top and not wanted:
        raise invalid("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    _in_range("top_logprobs", top, 0, MAX_TOP_LOGPROBS)
    return (top or 0) if wanted else None


def with_logprobs(sampling: SamplingParams, top: int | None) -> SamplingParams:
    if top is not None and sampling.stream:
        raise invalid("logprobs", "'logprobs' is not available with 'stream': true here")
    return replace(sampling, logprobs=top)


# -- the two kinds of request ---------------------------------------------------------------
Prompt = str | list[int]  # text, or token ids


@dataclass(frozen=True)
class CompletionParams:
    sampling: SamplingParams
    prompts: list[Prompt]
    echo: bool


def token_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    )


def prompt_list(prompt: Any) -> list[Prompt]:
    """A string, a list of strings, a list of token ids or a list of such lists."""
    if isinstance(prompt, str):
        return [prompt]
    if token_list(prompt):
        return [list(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(token_list(p) for p in prompt):
            return [list(p) for p in prompt]
    if prompt == []:
        raise invalid("prompt", "'prompt' must not be an empty list")
    raise invalid(
        "prompt",
        "'prompt' must be a string, a list of strings, a list of token ids or a list of "
        "non-empty lists of token ids",
    )


@dataclass(frozen=True)
class ChatParams:
    sampling: SamplingParams
    messages: list[Message] = field(default_factory=list)


def completion_params(body: dict[str, Any], served: list[str], limits: Limits) -> CompletionParams:
    sampling = sampling_params(body, served, limits, default_max_tokens=16)
    sampling = with_logprobs(sampling, completion_logprobs(body))
    prompts = prompt_list(body.get("prompt", ""))
    if len(prompts) > limits.max_prompts:
        raise ApiError(413, f"at most {limits.max_prompts} prompts per request", param="prompt")
    if len(prompts) * sampling.n > limits.max_n:
        raise invalid("n", f"prompts x n must be at most {limits.max_n}")
    return CompletionParams(sampling, prompts, _boolean(body, "echo", False))


def message_text(content: Any, index: int) -> str:
    """A message's content: a string, or a list of text parts (`{"type": "text", "text"}`)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise invalid("messages", f"message {index}: only text content is supported")
            if not isinstance(part.get("text"), str):
                raise invalid("messages", f"message {index}: a text part needs a string 'text'")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid("messages", f"message {index} needs a string 'content'")


def chat_params(body: dict[str, Any], served: list[str], limits: Limits) -> ChatParams:
    sampling = sampling_params(body, served, limits, default_max_tokens=256)
    sampling = with_logprobs(sampling, chat_logprobs(body))
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise invalid("messages", "'messages' must be a non-empty list")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise invalid("messages", f"message {i} must be an object")
        role = "system" if m.get("role") == "developer" else m.get("role")
        if role not in ROLES:
            raise invalid("messages", f"message {i} needs a role of {', '.join(ROLES)}")
        messages.append({"role": role, "content": message_text(m.get("content"), i)})
    try:
        check_messages(messages, "messages")
    except GptError as exc:
        raise invalid("messages", str(exc)) from None
    return ChatParams(sampling, messages)


# -- responses ------------------------------------------------------------------------------
def response_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class Envelope:
    """What every response and stream chunk of one request carries around its choices: the id,
    the object kind, the creation time and the model."""

    def __init__(self, prefix: str, kind: str, model: str) -> None:
        self.ident, self.kind, self.model, self.created = response_id(prefix), kind, model, now()

    def wrap(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {
            "id": self.ident,
            "object": self.kind,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        } | extra


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
