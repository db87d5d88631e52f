"""The ASGI app of `gpt serve`: routes, API key, request bodies, streaming, the web page.

Each served model has one `BatchEngine` (gptcli.inference.batching) on its own thread; a
request turns its prompt into tokens here (the chat template for chat requests), submits it to
the engine and relays the engine's events as one JSON response or as server-sent events. The
engine's thread hands events to the event loop with `call_soon_threadsafe`.

Models are named only by the names given at start: a request cannot make the server load
anything else, and nothing here writes to the store. Before any route runs (before a body is
read), `OriginGuard` refuses requests whose Host or Origin the server's `origins.Policy` does
not allow, and answers the CORS preflights of the origins it does.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from functools import partial
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptcli.chat import Template
from gptcli.checkpoint import LoadedModel
from gptcli.conversation import Conversation
from gptcli.errors import GptError
from gptcli.inference.batching import BatchEngine, Event, QueueFull, Request
from gptcli.inference.text import ReplyTrim
from gptcli.serve import scoring, tokens
from gptcli.serve.origins import Policy
from gptcli.serve.protocol import (
    ApiError,
    ChatParams,
    CompletionParams,
    Envelope,
    Limits,
    Prompt,
    SamplingParams,
    chat_params,
    completion_params,
    usage,
)
from gptcli.serve.scoring import TokenScore, score_tokens
from gptcli.tokenizer import Tokenizer

STATUS_CODES = {404: "not_found", 405: "method_not_allowed"}


@dataclass
class ServedModel:
    """A loaded model under the name it is served as, with its template and engine."""

    name: str
    loaded: LoadedModel
    template: Template
    engine: BatchEngine
    created: int

    @property
    def context(self) -> int:
        return self.loaded.model.config.block_size

    def card(self) -> dict[str, Any]:
        return {
            "id": self.name,
            "object": "model",
            "created": self.created,
            "owned_by": "gptcli",
            "context_length": self.context,
            "chat_template": self.template.kind,
        }


@dataclass(frozen=True)
class Job:
    """Token ids of one prompt, and what the response reports about it."""

    ids: list[int]
    prompt_tokens: int  # after cutting to the context
    echo: str = ""
    echo_ids: bool = False  # `logprobs` are reported for the prompt's tokens too


# -- request bodies -------------------------------------------------------------------------
async def read_json(request: HttpRequest, limit: int) -> dict[str, Any]:
    """The body as a JSON object, or ApiError 413 (too large) / 400 (not UTF-8, not JSON)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the body is not UTF-8 (byte {exc.start})"
        raise ApiError(400, message, code="invalid_utf8") from None

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    try:
        body = json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


class Relay:
    """Engine events for one HTTP request's choices, on the event loop's side."""

    def __init__(self, served: ServedModel, jobs: list[Job], params: SamplingParams) -> None:
        self.served, self.jobs, self.params = served, jobs, params
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.requests: list[Request] = []
        self.choices = len(jobs) * params.n
        self.finish = [""] * self.choices
        self.tokens = [0] * self.choices
        self.ids: list[list[int]] = [[] for _ in range(self.choices)]  # with a stop token

    def submit(self, stop_ids: frozenset[int], stops: tuple[str, ...]) -> None:
        """Queues every job with the engine; 503 when its queue is full."""
        try:
            for i, job in enumerate(self.jobs):
                request = Request(
                    job.ids,
                    self.params.max_tokens,
                    self.params.settings,
                    self.params.seed,
                    self._sink(i * self.params.n),
                    n=self.params.n,
                    stop_ids=stop_ids,
                    stops=stops,
                )
                self.served.engine.submit(request)
                self.requests.append(request)
        except QueueFull as exc:
            self.cancel()
            raise ApiError(503, str(exc), code="queue_full", kind="server_error") from None
        except GptError as exc:
            self.cancel()
            raise ApiError(400, str(exc)) from None

    def _sink(self, base: int) -> Callable[[Event], None]:
        def sink(event: Event) -> None:  # on the engine's thread
            self.loop.call_soon_threadsafe(
                self.queue.put_nowait, replace(event, choice=event.choice + base)
            )

        return sink

    def cancel(self) -> None:
        for request in self.requests:
            request.cancel()

    def logprobs(self, shape: Callable[[Tokenizer, list[TokenScore]], Any]) -> list[Any]:
        """Each choice's `logprobs` object (on a worker thread: a forward pass per choice):
        its generated tokens, after its prompt's with `echo`, scored by `scoring`."""
        model, tok = self.served.loaded.model, self.served.loaded.tokenizer
        top = self.params.logprobs or 0
        shaped = []
        for choice, generated in enumerate(self.ids):
            job = self.jobs[choice // self.params.n]
            prompt = job.ids if job.echo_ids else job.ids[-self.served.context :]
            scores = score_tokens(
                model, [*prompt, *generated], 0 if job.echo_ids else len(prompt), top
            )
            shaped.append(shape(tok, scores))
        return shaped

    @property
    def prompt_tokens(self) -> int:
        return sum(job.prompt_tokens for job in self.jobs)  # once per prompt, as OpenAI counts

    @property
    def completion_tokens(self) -> int:
        return sum(self.tokens)

    def usage(self) -> dict[str, int]:
        return usage(self.prompt_tokens, self.completion_tokens)

    async def events(self, http: HttpRequest | None = None) -> AsyncIterator[Event]:
        """Text and done events until every choice is done; cancels what is left when the
        consumer stops early or (non-streamed, `http` given) the client goes away."""
        left = self.choices
        checked = self.loop.time()
        try:
            while left:
                if http is None:
                    event = await self.queue.get()
                else:
                    if self.loop.time() - checked > 0.5:  # twice a second, busy or not
                        checked = self.loop.time()
                        if await http.is_disconnected():
                            return
                    try:
                        event = await asyncio.wait_for(self.queue.get(), timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                if event.kind == "error":
                    raise ApiError(500, event.text, code="generation_failed", kind="server_error")
                if event.kind == "done":
                    left -= 1
                    self.finish[event.choice] = event.finish
                    self.tokens[event.choice] = event.tokens
                    stop = [] if event.stop_token is None else [event.stop_token]
                    self.ids[event.choice] = [*event.ids, *stop]
                yield event
        finally:
            self.cancel()  # a no-op for the choices that are done


# -- the app --------------------------------------------------------------------------------
class Server:
    """The served models, the limits and the API key behind the routes."""

    def __init__(
        self, models: list[ServedModel], limits: Limits, api_key: str | None = None
    ) -> None:
        self.models = {m.name: m for m in models}
        self.limits, self.api_key = limits, api_key

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def authorize(self, request: HttpRequest) -> None:
        if not self.api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            key.strip().encode(), self.api_key.encode()
        ):
            raise ApiError(
                401,
                "a valid API key is needed: send 'Authorization: Bearer KEY'",
                code="invalid_api_key",
            )

    # -- routes ---------------------------------------------------------------------------
    async def page(self, request: HttpRequest) -> Response:
        html = resources.files("gptcli.serve").joinpath("page/index.html").read_text("utf-8")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    async def health(self, request: HttpRequest) -> Response:
        models = {
            name: {
                "active": m.engine.busy_slots,
                "waiting": len(m.engine.waiting),
                "decode_steps": m.engine.steps,
            }
            for name, m in self.models.items()
        }
        return JSONResponse({"status": "ok", "models": models})

    async def list_models(self, request: HttpRequest) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [m.card() for m in self.models.values()]})

    async def get_model(self, request: HttpRequest) -> Response:
        self.authorize(request)
        name = request.path_params["name"]
        if name not in self.models:
            raise ApiError(404, f"the model {name!r} does not exist here", code="model_not_found")
        return JSONResponse(self.models[name].card())

    async def completions(self, request: HttpRequest) -> Response:
        self.authorize(request)
        params = completion_params(
            await read_json(request, self.limits.max_body), self.names, self.limits
        )
        served = self.models[params.sampling.model]
        jobs = [self._completion_job(served, text, params) for text in params.prompts]
        tok = served.loaded.tokenizer
        relay = Relay(served, jobs, params.sampling)
        no_eot = tok.eot_id is None or params.sampling.ignore_eos
        stop_ids = frozenset() if no_eot else frozenset({tok.eot_id})
        relay.submit(stop_ids, params.sampling.stop)
        if params.sampling.stream:
            return self._stream(relay, request, "text_completion", chat=False)
        texts = [jobs[i // params.sampling.n].echo for i in range(relay.choices)]
        async for event in relay.events(request):
            texts[event.choice] += event.text
        logprobs: list[Any] = [None] * relay.choices
        if params.sampling.logprobs is not None:
            logprobs = await asyncio.to_thread(relay.logprobs, scoring.completion_logprobs)
        choices = [
            {"text": text, "index": i, "logprobs": logprobs[i], "finish_reason": relay.finish[i]}
            for i, text in enumerate(texts)
        ]
        envelope = Envelope("cmpl", "text_completion", served.name)
        return JSONResponse(envelope.wrap(choices, usage=relay.usage()))

    def _completion_job(self, served: ServedModel, prompt: Prompt, params: CompletionParams) -> Job:
        tok = served.loaded.tokenizer
        if isinstance(prompt, str):
            text, ids = prompt, tok.encode(prompt)
        else:
            vocab = tok.vocab_size
            if any(not 0 <= t < vocab for t in prompt):
                raise ApiError(
                    400, f"prompt token ids must be between 0 and {vocab - 1}", param="prompt"
                )
            text, ids = tok.decode(prompt), list(prompt)
        scored = params.echo and params.sampling.logprobs is not None
        if scored and len(ids) > served.context:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens, longer than the model's context "
                f"({served.context}): with echo and logprobs every prompt token is scored, so "
                "it is not cut (lm-evaluation-harness: pass max_length=<context>)",
                param="prompt",
                code="context_length_exceeded",
            )
        if not ids:
            if tok.eot_id is None:
                raise ApiError(
                    400, "empty prompt, and this model has no end-of-text token", param="prompt"
                )
            ids = [tok.eot_id]
        # A prompt longer than the context is cut to its newest tokens, as in gpt generate.
        return Job(ids, min(len(ids), served.context), text if params.echo else "", scored)

    async def chat_completions(self, request: HttpRequest) -> Response:
        self.authorize(request)
        params = chat_params(
            await read_json(request, self.limits.max_body), self.names, self.limits
        )
        served = self.models[params.sampling.model]
        job = self._chat_job(served, params)
        tok, template = served.loaded.tokenizer, served.template
        relay = Relay(served, [job], params.sampling)
        relay.submit(template.stop_ids(tok), template.stop_strings + params.sampling.stop)
        if params.sampling.stream:
            return self._stream(relay, request, "chat.completion.chunk", chat=True)
        trims = [ReplyTrim() for _ in range(relay.choices)]
        texts = [""] * relay.choices
        async for event in relay.events(request):
            texts[event.choice] += trims[event.choice].push(event.text)
        logprobs: list[Any] = [None] * relay.choices
        if params.sampling.logprobs is not None:
            logprobs = await asyncio.to_thread(relay.logprobs, scoring.chat_logprobs)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs[i],
                "finish_reason": relay.finish[i],
            }
            for i, text in enumerate(texts)
        ]
        envelope = Envelope("chatcmpl", "chat.completion", served.name)
        return JSONResponse(envelope.wrap(choices, usage=relay.usage()))

    def _chat_job(self, served: ServedModel, params: ChatParams) -> Job:
        """The template's prompt, leaving out the oldest turns to fit, as `gpt chat` does."""
        messages = params.messages
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        conversation = Conversation(system=system, turns=messages[1 if system is not None else 0 :])
        budget = served.context - min(params.sampling.max_tokens, served.context // 2)
        try:
            ids, _ = conversation.window(served.template, served.loaded.tokenizer, budget)
        except GptError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        return Job(ids, min(len(ids), served.context))

    def _stream(self, relay: Relay, request: HttpRequest, kind: str, chat: bool) -> Response:
        envelope = Envelope("chatcmpl" if chat else "cmpl", kind, relay.served.name)
        include_usage = relay.params.include_usage

        def chunk(choices: list[dict[str, Any]]) -> str:
            data = envelope.wrap(choices, usage=None) if include_usage else envelope.wrap(choices)
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
            if chat:
                delta = {"content": text} if text or finish is None else {}
                return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": index, "text": text, "logprobs": None, "finish_reason": finish}

        async def body() -> AsyncIterator[str]:
            trims = [ReplyTrim() for _ in range(relay.choices)]
            for i in range(relay.choices):  # the role (chat) or the echoed prompt first
                if chat:
                    first = {"role": "assistant", "content": ""}
                    yield chunk(
                        [{"index": i, "delta": first, "logprobs": None, "finish_reason": None}]
                    )
                elif relay.jobs[i // relay.params.n].echo:
                    yield chunk([choice(i, relay.jobs[i // relay.params.n].echo, None)])
            try:
                async for event in relay.events():
                    if event.kind == "text":
                        text = trims[event.choice].push(event.text) if chat else event.text
                        if text:
                            yield chunk([choice(event.choice, text, None)])
                    else:
                        yield chunk([choice(event.choice, "", event.finish)])
            except ApiError as exc:
                yield f"data: {json.dumps(exc.body())}\n\n"
                return
            if include_usage:
                yield f"data: {json.dumps(envelope.wrap([], usage=relay.usage()))}\n\n"
            yield "data: [DONE]\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


async def on_api_error(request: HttpRequest, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def on_http_error(request: HttpRequest, exc: Exception) -> Response:
    """Starlette's own refusals (unknown route, wrong method) in OpenAI's error body."""
    assert isinstance(exc, HTTPException)
    message = {
        404: f"no route {request.url.path}",
        405: f"{request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    error = ApiError(exc.status_code, message, code=STATUS_CODES.get(exc.status_code))
    response = error_response(error)
    if exc.headers:
        response.headers.update(exc.headers)  # Allow, on a 405
    return response


async def on_unexpected(request: HttpRequest, exc: Exception) -> Response:
    """A bug: a 500 with an error body rather than a dropped connection."""
    message = f"internal error: {type(exc).__name__}: {exc}"
    return error_response(ApiError(500, message, code="internal_error", kind="server_error"))


class OriginGuard:
    """ASGI middleware: the Host and Origin checks, and CORS for the allowed foreign origins.

    A refused request gets 403 with OpenAI's error body and never reaches a route: its body is
    not read, so nothing is parsed, queued or generated."""

    ALLOW_METHODS = "GET, POST, OPTIONS"
    ALLOW_HEADERS = "Authorization, Content-Type"

    def __init__(self, app: ASGIApp, policy: Policy) -> None:
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        local = scope.get("server")
        verdict = self.policy.check(
            headers.get("host"), headers.get("origin"), local[0] if local else None
        )
        if not verdict.allowed:
            assert verdict.refusal is not None
            error = ApiError(403, verdict.refusal, code=verdict.code)
            await error_response(error)(scope, receive, send)
            return
        cors = verdict.cors_origin
        if cors is None:
            await self.app(scope, receive, send)
            return
        answer = {"Access-Control-Allow-Origin": cors, "Vary": "Origin"}
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            asked = headers.get("access-control-request-headers")
            answer |= {
                "Access-Control-Allow-Methods": self.ALLOW_METHODS,
                "Access-Control-Allow-Headers": asked or self.ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
            if "access-control-request-private-network" in headers:
                answer["Access-Control-Allow-Private-Network"] = "true"  # a public page, allowed
            await Response(status_code=204, headers=answer)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(answer)
            await send(message)

        await self.app(scope, receive, send_with_cors)


def create_app(server: Server, policy: Policy) -> Starlette:
    routes = [
        Route("/", server.page, methods=["GET"]),
        Route("/health", server.health, methods=["GET"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.get_model, methods=["GET"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/tokenizer_info", partial(tokens.tokenizer_info, server), methods=["GET"]),
        Route("/tokenize", partial(tokens.tokenize, server), methods=["POST"]),
        Route("/detokenize", partial(tokens.detokenize, server), methods=["POST"]),
    ]
    handlers = {ApiError: on_api_error, HTTPException: on_http_error, Exception: on_unexpected}
    guard = Middleware(OriginGuard, policy=policy)
    return Starlette(routes=routes, exception_handlers=handlers, middleware=[guard])  # type: ignore[arg-type]
