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
from dataclasses import dataclass, field
from typing import Any

from gptcli.chat import ROLES, Message, check_messages
from gptcli.errors import GptError
from gptcli.sample import SamplingSettings

MAX_STOPS = 4


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
    logprobs = body.get("logprobs")
    if logprobs not in (None, False, 0):
        raise invalid("logprobs", "logprobs are not supported by this server")
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


# -- the two kinds of request ---------------------------------------------------------------
@dataclass(frozen=True)
class CompletionParams:
    sampling: SamplingParams
    prompts: list[str]
    echo: bool


@dataclass(frozen=True)
class ChatParams:
    sampling: SamplingParams
    messages: list[Message] = field(default_factory=list)


def completion_params(body: dict[str, Any], served: list[str], limits: Limits) -> CompletionParams:
    sampling = sampling_params(body, served, limits, default_max_tokens=16)
    prompt = body.get("prompt", "")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise invalid("prompt", "'prompt' must be a string or a list of strings")
    if not prompts:
        raise invalid("prompt", "'prompt' must not be an empty list")
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
