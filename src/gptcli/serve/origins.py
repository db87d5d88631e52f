"""Which `Host` and `Origin` headers `gpt serve` answers: its defence against the web pages its
user visits (DNS rebinding, cross-site requests).

A page on a name the attacker controls can rebind that name to 127.0.0.1 and become same-origin
with the server in the browser; its requests then carry the attacker's name in `Host`. A page
anywhere can also send a "simple" cross-origin POST without a preflight; the browser marks it
with `Origin`. So a request is answered only when its Host is one of the server's own names
(the loopback names, literal addresses of this machine, the names the user allowed) and, when
it carries an Origin, that Origin is one of the server's own origins or one the user allowed.
Requests without an Origin (curl, SDKs) are not from a web page and pass the Origin check.

Everything here is pure: the bound address, the port, this machine's addresses and the
user's lists come in; `Policy.check` maps two header values to a `Verdict`. It knows nothing
about HTTP servers, sockets or request bodies.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from gptcli.errors import GptError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("", "0.0.0.0", "::")
DEFAULT_PORTS = {"http": 80, "https": 443}
ANY = "*"


def normal_host(name: str) -> str:
    """A host name or address as compared here: lower case, no trailing dot, IPv6 unbracketed
    and in its compressed form."""
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only to itself (a loopback name or address)."""
    host = normal_host(host)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(normal_host(host))
    except ValueError:
        return False
    return True


def split_host_header(value: str) -> str | None:
    """The name in a Host header (`name`, `name:port`, `[v6]`, `[v6]:port`), normalised, or
    None when it is not one."""
    value = value.strip()
    if value.startswith("["):
        name, bracket, port = value[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        name, _, port = value.partition(":")
    if not name or (port and not port.isdigit()) or any(c in name for c in "/ @[]"):
        return None
    return normal_host(name)


def origin_key(origin: str) -> str | None:
    """`scheme://host:port` with the default port written out and the host normalised, or
    None when `origin` is not a serialised origin (`null`, a path, another scheme)."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = normal_host(parts.hostname)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port or DEFAULT_PORTS[scheme]}"


@dataclass(frozen=True)
class Verdict:
    """What to do with a request: refuse it (`refusal` says why), or answer it, with CORS
    headers for `cors_origin` when it came from an allowed foreign origin."""

    refusal: str | None = None
    code: str | None = None
    cors_origin: str | None = None

    @property
    def allowed(self) -> bool:
        return self.refusal is None


@dataclass(frozen=True)
class Policy:
    """The server's own names and origins, and the extra origins the user allowed."""

    port: int
    hosts: frozenset[str]  # normalised names and addresses a Host header may carry
    own_origins: frozenset[str]  # origin keys
    extra_origins: frozenset[str]  # origin keys, and "null" when allowed by name
    any_host: bool = False
    any_origin: bool = False

    def origin(self, host: str) -> str | None:
        """The key of `http://HOST:PORT` on this server's port."""
        host = normal_host(host)
        return origin_key(f"http://[{host}]:{self.port}" if ":" in host else
                          f"http://{host}:{self.port}")  # fmt: skip

    def host_allowed(self, host: str, local: str | None = None) -> bool:
        """Whether a Host header names this server. `local` is the address the connection
        came in on: this machine's, whatever a listing of its addresses missed."""
        if self.any_host:
            return True
        name = split_host_header(host)
        if name is None:
            return False
        if name in self.hosts or (local is not None and name == normal_host(local)):
            return True
        return is_address(name) and is_loopback(name)  # 127.0.0.2: a literal is not rebound

    def check(self, host: str | None, origin: str | None, local: str | None = None) -> Verdict:
        """The verdict on a request with these headers (None: the header is absent)."""
        if host is not None and not self.host_allowed(host, local):
            name = split_host_header(host) or "NAME"
            return Verdict(
                f"the Host {host[:100]!r} is not a name of this server; to answer it, start "
                f"gpt serve with --allowed-host {name[:100]}",
                code="host_not_allowed",
            )
        if origin is None:
            return Verdict()
        key = origin_key(origin)
        if key is not None and (key in self.own_origins or (local and key == self.origin(local))):
            return Verdict()
        if self.any_origin or (key or origin.strip().lower()) in self.extra_origins:
            return Verdict(cors_origin=origin.strip())
        named = origin.strip()[:100] if key else "ORIGIN"
        return Verdict(
            f"requests from the web page at {origin[:100]!r} are refused; to answer them, "
            f"start gpt serve with --allow-origin {named}",
            code="origin_not_allowed",
        )


def check_allowed_host(name: str) -> str:
    """A name given with --allowed-host, normalised; `*` for any."""
    if name.strip() == ANY:
        return ANY
    host = split_host_header(name)
    if not host or "/" in host or " " in host:
        raise GptError(f"--allowed-host {name!r} is not a host name (example: box.lan)")
    return host


def check_allowed_origin(origin: str) -> str:
    """An origin given with --allow-origin, as its key; `*` for any, `null` for opaque ones."""
    origin = origin.strip()
    if origin in (ANY, "null"):
        return origin
    key = origin_key(origin)
    if key is None:
        raise GptError(
            f"--allow-origin {origin!r} is not an origin (example: http://localhost:3000)"
        )
    return key


def policy(
    bound: str,
    port: int,
    addresses: Iterable[str] = (),
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
) -> Policy:
    """The policy of a server bound to `bound`:`port` on a machine with these `addresses`,
    with the user's --allowed-host names and --allow-origin origins (GptError on a bad one)."""
    hosts = {normal_host(h) for h in LOOPBACK_NAMES}
    origin_hosts = set(hosts)
    bound = normal_host(bound)
    if not is_loopback(bound):
        mine = {normal_host(a) for a in addresses}
        hosts |= mine
        if bound in WILDCARDS:
            origin_hosts |= mine
        else:
            hosts.add(bound)
            origin_hosts.add(bound)
    names = {check_allowed_host(h) for h in allowed_hosts}
    any_host = ANY in names
    names.discard(ANY)
    hosts |= names
    origin_hosts |= names
    extra = {check_allowed_origin(o) for o in allowed_origins}
    any_origin = ANY in extra
    extra.discard(ANY)
    base = Policy(port, frozenset(hosts), frozenset(), frozenset(extra), any_host, any_origin)
    own = {base.origin(h) for h in origin_hosts}
    return replace(base, own_origins=frozenset(o for o in own if o))
