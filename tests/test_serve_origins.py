"""`gpt serve` and the web pages its user visits: the Host and Origin policy as a pure function,
then the real server refusing rebound Hosts and foreign Origins before it reads a body (its
engine's decode-step counter proves nothing ran), answering the clients and origins it allows,
and the chat page in headless Chromium with an API key.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import LIMIT, Served, check_error, chromium_driver, idle, make_models, wait_until

from gptcli.errors import GptError
from gptcli.serve.origins import origin_key, policy, split_host_header

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

ATTACKER = "http://attacker.example"
# a request that would run several decode steps if it ran at all
WORK = b'{"model": "tiny", "prompt": "Once", "max_tokens": 6, "ignore_eos": true}'


# -- the policy, pure -----------------------------------------------------------------------
def test_headers_are_parsed_and_normalised() -> None:
    assert split_host_header("LocalHost.:8000") == "localhost"
    assert split_host_header("[::1]:8000") == split_host_header("[0:0::1]") == "::1"
    assert split_host_header("box.lan") == "box.lan"
    for bad in ("", ":8000", "[::1", "[::1]x", "a:b", "a b", "user@host", "::1"):
        assert split_host_header(bad) is None, bad
    assert origin_key("http://LOCALHOST") == "http://localhost:80"
    assert origin_key("https://x.org") == "https://x.org:443"
    assert origin_key("http://[::1]:8000") == "http://[::1]:8000"
    for bad in ("null", "file://", "http://x.org/path", "ftp://x.org", "x.org", "http://"):
        assert origin_key(bad) is None, bad


def test_loopback_policy_answers_only_loopback_names_and_own_origins() -> None:
    p = policy("127.0.0.1", 8000, addresses=["192.168.1.5"])
    for host in ("localhost", "localhost:8000", "127.0.0.1:9999", "[::1]:8000", "127.0.0.2"):
        assert p.check(host, None).allowed, host
    for host in ("attacker.example:8000", "192.168.1.5:8000", "localhost.attacker.example", ""):
        verdict = p.check(host, None)
        assert not verdict.allowed and verdict.code == "host_not_allowed", host
    assert "--allowed-host attacker.example" in (p.check("attacker.example:80", None).refusal or "")
    assert p.check(None, None).allowed  # no Host at all: not a browser
    refusal = p.check("localhost", ATTACKER).refusal or ""
    assert refusal.endswith(f"--allow-origin {ATTACKER}")
    for origin in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        verdict = p.check("localhost:8000", origin)
        assert verdict.allowed and verdict.cors_origin is None, origin
    for origin in (ATTACKER, "null", "http://localhost:3000", "https://localhost:8000", "x"):
        verdict = p.check("localhost:8000", origin)
        assert not verdict.allowed and verdict.code == "origin_not_allowed", origin
    # the origin is never taken from the request's own Host
    assert not p.check("127.0.0.1:8000", "http://192.168.1.5:8000").allowed


def test_bound_elsewhere_own_addresses_and_allowed_names() -> None:
    anywhere = policy("0.0.0.0", 8000, ["192.168.1.5", "fe80::1"], ["Box.LAN"])
    for host in ("192.168.1.5:8000", "[fe80::1]:8000", "box.lan:8000", "localhost"):
        assert anywhere.check(host, None).allowed, host
    assert not anywhere.check("attacker.example:8000", None).allowed
    assert not anywhere.check("10.0.0.9", None).allowed
    assert anywhere.check("10.0.0.9", None, local="10.0.0.9").allowed  # the connection's own
    assert anywhere.check("10.0.0.9:8000", "http://10.0.0.9:8000", local="10.0.0.9").allowed
    for origin in ("http://192.168.1.5:8000", "http://box.lan:8000", "http://[fe80::1]:8000"):
        assert anywhere.check("box.lan:8000", origin).allowed, origin
    assert not anywhere.check("box.lan:8000", "http://box.lan:9000").allowed
    one = policy("192.168.1.5", 8000, ["192.168.1.5", "10.0.0.2"])
    assert one.check("192.168.1.5:8000", "http://192.168.1.5:8000").allowed
    assert one.check("10.0.0.2", None).allowed  # a literal of this machine cannot be rebound
    assert not one.check("10.0.0.2", "http://10.0.0.2:8000").allowed  # not the bound address
    named = policy("box.lan", 8000, [])
    assert named.check("box.lan:8000", "http://box.lan:8000").allowed


def test_allowed_origins_get_cors_and_star_opens_everything() -> None:
    p = policy("127.0.0.1", 8000, [], allowed_origins=["http://App.example:3000/", "null"])
    assert p.check("localhost", "http://app.example:3000").cors_origin == "http://app.example:3000"
    assert p.check("localhost", "null").cors_origin == "null"
    assert not p.check("localhost", "http://app.example:3001").allowed
    assert not p.check("evil.example", "http://app.example:3000").allowed  # Host first
    star = policy("127.0.0.1", 8000, [], allowed_hosts=["*"], allowed_origins=["*"])
    assert star.any_host and star.any_origin
    verdict = star.check("attacker.example", ATTACKER)
    assert verdict.allowed and verdict.cors_origin == ATTACKER
    for bad in (["http://x.org/path"], ["x.org"], ["null.example"]):
        with pytest.raises(GptError, match="--allow-origin"):
            policy("127.0.0.1", 8000, [], allowed_origins=bad)
    with pytest.raises(GptError, match="--allowed-host"):
        policy("127.0.0.1", 8000, [], allowed_hosts=["http://box.lan/"])


def test_start_line_says_when_names_need_allowed_host() -> None:
    from gptcli.cli.serve import start_line

    assert start_line("m", "127.0.0.1", 8000, False) == (
        "serving m on http://127.0.0.1:8000 (Ctrl+C to stop)"
    )
    line = start_line("m", "0.0.0.0", 8000, False)
    assert line.startswith("serving m on http://0.0.0.0:8000 (Ctrl+C to stop); ")
    assert line.endswith("by a host name rather than an IP address, add --allowed-host NAME")
    assert "--allowed-host" in start_line("m", "::", 8000, False)
    assert "--allowed-host" not in start_line("m", "0.0.0.0", 8000, True)


# -- the real server ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("origins-store")
    make_models(home)
    return home


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Served]:
    served = Served(store, "-m", "tiny", "-m", "tiny-chat", "--max-tokens", str(LIMIT))
    yield served
    assert served.stop() == 0


def steps(server: Served) -> int:
    return sum(m["decode_steps"] for m in server.health()["models"].values())


def post(
    server: Served, headers: dict[str, str], body: bytes = WORK, path: str = "/v1/completions"
) -> httpx.Response:
    return httpx.post(server.url + path, content=body, headers=headers, timeout=120)


def test_rebound_hosts_and_foreign_origins_are_refused_and_run_nothing(server: Served) -> None:
    port = server.url.rsplit(":", 1)[1]
    rebound = {"Host": f"attacker.example:{port}"}
    before = steps(server)
    for path in ("/", "/health", "/v1/models", "/v1/models/tiny"):
        check_error(httpx.get(server.url + path, headers=rebound, timeout=10), 403)
    for kind in ("application/json", "text/plain"):
        check_error(post(server, rebound | {"Content-Type": kind}), 403)
        for origin in (ATTACKER, "null", f"http://localhost:{int(port) + 1}"):
            response = post(server, {"Content-Type": kind, "Origin": origin})
            check_error(response, 403)
            assert response.json()["error"]["code"] == "origin_not_allowed"
            assert "access-control-allow-origin" not in response.headers
    chat = b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "Hi"}]}'
    check_error(post(server, {"Origin": ATTACKER}, chat, "/v1/chat/completions"), 403)
    preflight = {
        "Origin": ATTACKER,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    response = httpx.options(server.url + "/v1/completions", headers=preflight, timeout=10)
    check_error(response, 403)
    assert "access-control-allow-origin" not in response.headers
    # a huge body from a foreign page is refused before it is read
    huge = b'{"prompt": "' + b"a" * (4 << 20) + b'"}'
    check_error(post(server, {"Origin": ATTACKER, "Content-Type": "text/plain"}, huge), 403)
    assert steps(server) == before and idle(server) and idle(server, "tiny-chat")
    # the counter does count: the same body without an Origin runs, whatever its type
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        response = post(server, {"Content-Type": kind})
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 6
    assert steps(server) >= before + 3 * 5


def test_loopback_names_and_own_origins_are_answered(server: Served) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    for host in (f"localhost:{port}", "localhost", f"127.0.0.1:{port}", f"[::1]:{port}"):
        response = httpx.get(server.url + "/v1/models", headers={"Host": host}, timeout=10)
        assert response.status_code == 200, host
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        response = post(server, {"Origin": origin, "Content-Type": "application/json"})
        assert response.status_code == 200, response.text
        assert "access-control-allow-origin" not in response.headers  # same origin: no CORS
    out = server.client().completions.create(model="tiny", prompt="Once", max_tokens=3)
    assert out.usage.completion_tokens == 3


def test_allowed_names_and_origins_open_exactly_what_they_name(store: Path) -> None:
    app = "http://app.example:3000"
    served = Served(store, "-m", "tiny", "--allowed-host", "box.lan", "--allow-origin", app,
                    "--api-key", "sekret")  # fmt: skip
    try:
        port = served.url.rsplit(":", 1)[1]
        key = {"Authorization": "Bearer sekret"}
        box = {"Host": f"box.lan:{port}"}
        response = httpx.get(served.url + "/v1/models", headers=box | key, timeout=10)
        assert response.status_code == 200
        check_error(httpx.get(served.url + "/v1/models", headers=box, timeout=10), 401)
        check_error(httpx.get(served.url + "/v1/models", headers={"Host": "other.lan"} | key,
                              timeout=10), 403)  # fmt: skip
        response = post(served, box | key | {"Origin": f"http://box.lan:{port}"})
        assert response.status_code == 200  # the page loaded from the allowed name
        preflight = {
            "Origin": app,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
            "Access-Control-Request-Private-Network": "true",  # Chrome, from a public page
        }
        response = httpx.options(served.url + "/v1/completions", headers=preflight, timeout=10)
        assert response.status_code == 204
        assert response.headers["access-control-allow-private-network"] == "true"
        assert response.headers["access-control-allow-origin"] == app
        assert "POST" in response.headers["access-control-allow-methods"]
        assert response.headers["access-control-allow-headers"] == "authorization,content-type"
        before = steps(served)
        response = post(served, key | {"Origin": app, "Content-Type": "application/json"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == app
        assert response.json()["usage"]["completion_tokens"] == 6
        refused = post(served, {"Origin": app})  # no key: CORS still lets the page read why
        check_error(refused, 401)
        assert refused.headers["access-control-allow-origin"] == app
        check_error(post(served, key | {"Origin": "http://app.example:3001"}), 403)
        check_error(post(served, key | {"Origin": ATTACKER}), 403)
        assert steps(served) >= before + 5
        assert [m.id for m in served.client("sekret").models.list().data] == ["tiny"]
    finally:
        assert served.stop() == 0


def test_bound_to_every_address_it_answers_this_machine_s_addresses(store: Path) -> None:
    """Bound to 0.0.0.0 (with a key, and reached here only through 127.0.0.1): the machine's
    own addresses and the allowed name are answered, other names are not."""
    from gptcli.cli.serve import machine_addresses

    served = Served(store, "-m", "tiny", "--host", "0.0.0.0", "--api-key", "k",
                    "--allowed-host", "box.lan")  # fmt: skip
    try:
        assert "add --allowed-host NAME" in served.lines[-1]
        port = served.url.rsplit(":", 1)[1]
        key = {"Authorization": "Bearer k"}
        mine = [a for a in machine_addresses() if ":" not in a] or ["127.0.0.1"]
        for host in (f"{mine[0]}:{port}", f"box.lan:{port}", f"localhost:{port}"):
            response = httpx.get(served.url + "/v1/models", headers=key | {"Host": host},
                                 timeout=10)  # fmt: skip
            assert response.status_code == 200, host
        check_error(httpx.get(served.url + "/v1/models", headers=key | {"Host": "nas.lan"},
                              timeout=10), 403)  # fmt: skip
        page = {"Host": f"box.lan:{port}", "Origin": f"http://box.lan:{port}"}
        response = post(served, key | page)
        assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 6
        check_error(post(served, key | page | {"Origin": f"http://nas.lan:{port}"}), 403)
    finally:
        assert served.stop() == 0


def test_star_turns_the_host_check_off_and_says_so(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPTCLI_ALLOWED_HOSTS", "box.lan, *")
    served = Served(store, "-m", "tiny")
    try:
        said = "".join(served.lines)
        assert "warning: --allowed-host '*'" in said and "DNS rebinding" in said
        response = httpx.get(served.url + "/v1/models", headers={"Host": "attacker.example"},
                             timeout=10)  # fmt: skip
        assert response.status_code == 200
        check_error(post(served, {"Origin": ATTACKER}), 403)  # origins are still checked
    finally:
        assert served.stop() == 0


def test_bad_allowed_values_fail_before_loading(store: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from conftest import run

    monkeypatch.setenv("GPTCLI_HOME", str(store))
    result = run("serve", "-m", "tiny", "--allow-origin", "app.example", code=1)
    assert result.stderr.startswith("error: --allow-origin 'app.example' is not an origin")
    result = run("serve", "-m", "tiny", "--allowed-host", "http://x/", code=1)
    assert result.stderr.startswith("error: --allowed-host 'http://x/' is not a host name")


def test_a_raw_request_without_host_is_answered(server: Served) -> None:
    """HTTP/1.0 without a Host header is no browser; it is served as before."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")


# -- the page, with an API key --------------------------------------------------------------
def test_chat_page_with_an_api_key(store: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium_driver()
    served = Served(store, "-m", "tiny-chat", "--api-key", "sekret")
    try:
        driver.get(served.url + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "key-label").is_displayed())
        driver.find_element(By.ID, "api-key").send_keys("sekret", Keys.TAB)
        picker = Select(driver.find_element(By.ID, "model"))
        wait.until(lambda d: len(picker.options) == 1)
        box = driver.find_element(By.ID, "max-tokens")
        box.clear()
        box.send_keys("8")
        driver.find_element(By.ID, "input").send_keys("Hi fox", Keys.ENTER)
        wait.until(lambda d: "finished" in d.find_element(By.ID, "status").text)
        assert len(driver.find_elements(By.CSS_SELECTOR, ".msg .text")) == 2
        assert wait_until(lambda: idle(served, "tiny-chat"))
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not [e for e in severe if "401" not in e["message"]]  # the first, keyless list
    finally:
        driver.quit()
        served.stop()
