"""`gpt serve`: load the models, start one batching engine each, serve them over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import socket
from typing import Annotated

import typer

from gptcli.cli.console import info
from gptcli.cli.options import complete_model_name
from gptcli.cli.sampling import DeviceOption, DtypeOption, ThreadsOption
from gptcli.hardware import sleeping_omp_threads
from gptcli.serve.origins import check_allowed_host, check_allowed_origin, is_loopback

HELP = """Serve models over an OpenAI-compatible HTTP API, with a chat page at /.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST /v1/chat/completions. \
Requests in flight together are decoded together (continuous batching). Needs the serve \
extra: pip install "gptcli\\[serve]".

Example: gpt serve -m stories -m stories-chat --port 8080
"""

INSTALL_HINT = (
    'gpt serve needs the serve extra (starlette, uvicorn): pip install "gptcli[serve]", '
    'or pip install -e ".[serve]" in a checkout'
)


def machine_addresses() -> list[str]:
    """This machine's own IP addresses, as far as the standard library can list them: its host
    name's, and the ones it would send from (a UDP socket connected to documentation addresses
    sends nothing). The server also takes each connection's own local address as its own."""
    found: set[str] = set()
    with contextlib.suppress(OSError):
        found |= {str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None)}
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as probing:
            probing.connect((probe, 9))
            found.add(str(probing.getsockname()[0]))
    return sorted(a.partition("%")[0] for a in found)  # fe80::1%eth0: no zone in a Host


def allowed_hosts_from_env() -> list[str]:
    return [name for name in re.split(r"[,\s]+", os.environ.get(HOSTS_ENV, "")) if name]


HOSTS_ENV = "GPTCLI_ALLOWED_HOSTS"


def start_line(names: str, host: str, port: int, any_host: bool) -> str:
    """What `gpt serve` says once it listens; bound elsewhere than loopback, it says that
    requests by a host name need --allowed-host."""
    shown = f"[{host}]" if ":" in host else host
    line = f"serving {names} on http://{shown}:{port} (Ctrl+C to stop)"
    if not is_loopback(host) and not any_host:
        line += "; to reach it by a host name rather than an IP address, add --allowed-host NAME"
    return line


def serve(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Model to serve, by store name or directory (repeatable; default: the "
            "store's default). Requests name it by its name.",
            autocompletion=complete_model_name,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback needs care.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: any free one).", min=0, max=65535)] = 8000,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer requests sent to host NAME, not only to localhost and this "
            f"machine's addresses (repeatable, or {HOSTS_ENV}; '*': any host).",
            metavar="NAME",
            show_default=False,
        ),
    ] = None,
    allow_origin: Annotated[
        list[str] | None,
        typer.Option(
            help="Also answer web pages from ORIGIN (such as http://localhost:3000), with "
            "CORS headers (repeatable; '*': any page).",
            metavar="ORIGIN",
            show_default=False,
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="GPTCLI_API_KEY",
            help="Require 'Authorization: Bearer KEY' on /v1 requests.",
            show_default=False,
        ),
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    max_batch: Annotated[
        int, typer.Option(help="Sequences decoded together, per model.", min=1, max=256)
    ] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Requests waiting for a slot before 503s, per model.", min=0)
    ] = 32,
    max_tokens: Annotated[
        int, typer.Option(help="Most tokens a request may ask for, per choice.", min=1)
    ] = 2048,
) -> None:
    sleeping_omp_threads()
    from gptcli.errors import GptError

    hosts = allowed_host if allowed_host else allowed_hosts_from_env()
    origins = allow_origin or []
    for name in hosts:
        check_allowed_host(name)  # bad ones fail before any model loads
    for origin in origins:
        check_allowed_origin(origin)

    try:
        import uvicorn

        from gptcli.serve.app import ServedModel, Server, create_app
    except ImportError:
        raise GptError(INSTALL_HINT) from None
    from gptcli.chat import load_template
    from gptcli.inference.batching import BatchEngine
    from gptcli.inference.loader import load
    from gptcli.serve.origins import policy
    from gptcli.serve.protocol import Limits

    served: list[ServedModel] = []
    for ref in model or [None]:
        loaded = load(ref, device, dtype, threads)
        if any(s.name == loaded.name for s in served):
            raise GptError(f"two models are named {loaded.name!r}: serve each name once")
        template = load_template(loaded.path, loaded.tokenizer)
        engine = BatchEngine(loaded.model, loaded.tokenizer, max_batch, max_queue)
        created = int((loaded.path / "config.json").stat().st_mtime)
        served.append(ServedModel(loaded.name, loaded, template, engine, created))

    try:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # from now on connections wait in the backlog for uvicorn
    except OSError as exc:
        raise GptError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    if not is_loopback(host) and not api_key:
        info(
            f"warning: serving on {host}, reachable from other machines, without an API key "
            "(set --api-key or GPTCLI_API_KEY)"
        )
    addresses = [] if is_loopback(host) else machine_addresses()
    guard = policy(host, bound, addresses, hosts, origins)
    if guard.any_host:
        info(
            "warning: --allowed-host '*': any Host header is answered, so a web page can "
            "reach this server by DNS rebinding"
        )
    server = Server(served, Limits(max_tokens=max_tokens, max_n=max_batch), api_key)
    config = uvicorn.Config(
        create_app(server, guard),
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="off",
    )
    names = ", ".join(s.name for s in served)
    info(start_line(names, host, bound, guard.any_host))
    for s in served:
        s.engine.start()
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn raises the Ctrl+C again once it has shut down: that is a normal exit
    finally:
        for s in served:
            s.engine.stop()
        sock.close()
    info("stopped")
