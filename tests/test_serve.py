"""`gpt serve`: the real server on a free loopback port, driven by the official `openai` client,
raw HTTP for the malformed cases, threads for concurrent clients, and headless Chromium for the
chat page. Models are tiny and random (fast to make; greedy text is still fully determined).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run, snapshot

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
pytest.importorskip("starlette")

TEXT = (
    "Once upon a time there was a little fox. The fox liked to run in the woods and play "
    "with the birds. One day the fox met a bear, and they became friends.\n"
)
STORE_AT_START: dict[Path, dict] = {}
LIMIT = 100_000  # --max-tokens: long enough that a request never ends on its own in a test


def make_models(home: Path) -> None:
    """Two random tiny models: `tiny` (plain text) and `tiny-chat` (with a chat template)."""
    import torch

    from gptcli.chat import ChatTemplate, add_chat_tokens, save_template
    from gptcli.checkpoint import write_model_dir
    from gptcli.config import ModelConfig
    from gptcli.model import GPT
    from gptcli.tokenizer import Tokenizer

    for name, chat in (("tiny", False), ("tiny-chat", True)):
        tok = Tokenizer.train_char([TEXT])
        if chat:
            add_chat_tokens(tok)
        torch.manual_seed(1)
        config = ModelConfig.from_preset("tiny", vocab_size=tok.vocab_size, block_size=48)
        write_model_dir(home / "models" / name, GPT(config), tok)
        if chat:
            save_template(home / "models" / name, ChatTemplate())


def logs_of(home: Path) -> Path:
    return home.parent / f"{home.name}-logs"


class Served:
    """A `gpt serve` subprocess; `url` once it has printed its line."""

    def __init__(self, home: Path, *args: str) -> None:
        env = os.environ | {"GPTCLI_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        env["GPTCLI_LOGS"] = str(logs_of(home))  # where a log would go: the server never logs
        env.pop("GPTCLI_API_KEY", None)
        src = str(Path(__file__).resolve().parents[1] / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gptcli", "serve", "--port", "0", "--threads", "1", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        deadline = time.monotonic() + 120
        assert self.proc.stderr is not None
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.lines.append(line)
            found = re.search(r"on http://(?:127\.0\.0\.1|0\.0\.0\.0):(\d+) ", line)
            if found:
                self.url = f"http://127.0.0.1:{found.group(1)}"
                return
        self.stop()
        raise AssertionError(f"gpt serve did not start: {''.join(self.lines)}")

    def client(self, key: str = "none") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("serve-store")
    make_models(home)
    STORE_AT_START[home] = snapshot(home)
    return home


@pytest.fixture(scope="module")
def server(store: Path) -> Iterator[Served]:
    served = Served(store, "-m", "tiny", "-m", "tiny-chat", "--max-tokens", str(LIMIT))
    yield served
    assert served.stop() == 0


@pytest.fixture
def home_env(store: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GPTCLI_HOME", str(store))
    return store


def wait_until(check, seconds: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def idle(server: Served, model: str = "tiny") -> bool:
    state = server.health()["models"][model]
    return state["active"] == 0 and state["waiting"] == 0


# -- endpoints through the openai client ----------------------------------------------------
def test_health_and_models(server: Served, store: Path) -> None:
    assert server.health()["status"] == "ok"
    models = server.client().models.list()
    assert [m.id for m in models.data] == ["tiny", "tiny-chat"]
    assert server.client().models.retrieve("tiny-chat").id == "tiny-chat"
    with pytest.raises(openai.NotFoundError):
        server.client().models.retrieve("../tiny")
    assert "serving tiny, tiny-chat on http://127.0.0.1:" in server.lines[-1]


def test_greedy_completion_is_gpt_generate(server: Served, home_env: Path) -> None:
    for prompt, n in (("Once upon a", 24), ("The fox", 70)):  # 70: past the 48-token context
        expected = run("generate", prompt, "-m", "tiny", "--temperature", "0", "-n", str(n))
        out = server.client().completions.create(
            model="tiny", prompt=prompt, max_tokens=n, temperature=0
        )
        choice = out.choices[0]
        assert prompt + choice.text + "\n" == expected.stdout
        assert out.usage.prompt_tokens == len(prompt)  # a char tokenizer
        assert out.usage.completion_tokens == n
        assert choice.finish_reason == "length"


def test_seeded_samples_streamed_or_not_are_gpt_generate(server: Served, home_env: Path) -> None:
    flags = ["--temperature", "1.0", "--seed", "5", "--repetition-penalty", "1.3"]
    flags += ["--presence-penalty", "0.5", "--frequency-penalty", "0.2", "--top-k", "12"]
    expected = run("generate", "Once", "-m", "tiny", "-n", "30", "--num-samples", "2", "--json",
                   *flags)  # fmt: skip
    texts = [s["text"] for s in json.loads(expected.stdout)["samples"]]
    client = server.client()
    params = dict(
        model="tiny",
        prompt="Once",
        max_tokens=30,
        n=2,
        temperature=1.0,
        seed=5,
        presence_penalty=0.5,
        frequency_penalty=0.2,
        extra_body={"repetition_penalty": 1.3, "top_k": 12},
    )
    whole = client.completions.create(**params)
    assert [c.text for c in sorted(whole.choices, key=lambda c: c.index)] == texts
    streamed = ["", ""]
    finishes = [None, None]
    chunks = client.completions.create(
        **params, stream=True, stream_options={"include_usage": True}
    )
    usage = None
    for chunk in chunks:
        for c in chunk.choices:
            streamed[c.index] += c.text
            finishes[c.index] = c.finish_reason or finishes[c.index]
        usage = chunk.usage or usage
    assert streamed == texts
    assert finishes == ["length", "length"]
    assert usage is not None and usage.completion_tokens == 60 and usage.prompt_tokens == 4
    again = client.completions.create(**params)
    assert [c.text for c in again.choices] == [c.text for c in whole.choices]


def test_stop_strings_and_echo(server: Served) -> None:
    client = server.client()
    full = client.completions.create(model="tiny", prompt="Once", max_tokens=30, temperature=0)
    text = full.choices[0].text
    stop = text[10:12]
    cut = client.completions.create(
        model="tiny", prompt="Once", max_tokens=30, temperature=0, stop=[stop, "never seen"]
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 30
    streamed = client.completions.create(
        model="tiny", prompt="Once", max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == cut.choices[0].text
    echoed = client.completions.create(
        model="tiny", prompt="Once", max_tokens=5, temperature=0, echo=True
    )
    assert echoed.choices[0].text == "Once" + text[:5]


def test_several_prompts_an_empty_one_and_the_default_model(server: Served) -> None:
    client = server.client()
    alone = [
        client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0)
        .choices[0]
        .text
        for p in ("Once", "The fox", "")
    ]
    out = client.completions.create(
        model="tiny", prompt=["Once", "The fox", ""], max_tokens=12, temperature=0
    )
    assert [c.text for c in sorted(out.choices, key=lambda c: c.index)] == alone
    assert out.usage.prompt_tokens == 4 + 7 + 1  # an empty prompt starts at end-of-text
    body = {"prompt": "Once", "max_tokens": 12, "temperature": 0}  # no model: the first served
    response = httpx.post(server.url + "/v1/completions", json=body, timeout=30).json()
    assert response["model"] == "tiny" and response["choices"][0]["text"] == alone[0]


def test_chat_uses_the_template_like_gpt_chat(server: Served, home_env: Path) -> None:
    from gptcli.chat import ChatTemplate, PlainTemplate
    from gptcli.tokenizer import Tokenizer

    client = server.client()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi fox"},
    ]
    for model, template in (("tiny-chat", ChatTemplate()), ("tiny", PlainTemplate())):
        record = json.loads(
            run(
                "chat",
                "-m",
                model,
                "--json",
                "-n",
                "12",
                "--temperature",
                "0",
                "--system",
                "Be brief.",
                input="Hi fox\n",
            ).stdout
        )
        out = client.chat.completions.create(
            model=model, messages=messages, max_tokens=12, temperature=0
        )
        assert out.choices[0].message.content == record["reply"]
        assert out.choices[0].message.role == "assistant"
        tok = Tokenizer.load(home_env / "models" / model / "tokenizer.json")
        ids, _ = template.render_ids(tok, messages, add_generation_prompt=True)
        assert out.usage.prompt_tokens == len(ids) == record["prompt_tokens"]
        assert out.choices[0].finish_reason in ("stop", "length")
        chunks = list(
            client.chat.completions.create(
                model=model, messages=messages, max_tokens=12, temperature=0, stream=True
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == out.choices[0].message.content
        assert chunks[-1].choices[0].finish_reason == out.choices[0].finish_reason


def test_chat_accepts_text_parts_and_drops_old_turns(server: Served) -> None:
    long_turns = []
    for i in range(20):  # far more than the 48-token context
        long_turns += [
            {"role": "user", "content": f"question {i}"},
            {"role": "assistant", "content": f"answer {i}"},
        ]
    last = {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    out = server.client().chat.completions.create(
        model="tiny", messages=[*long_turns, last], max_tokens=4, temperature=0
    )
    assert out.usage.prompt_tokens <= 48 - 4


# -- continuous batching --------------------------------------------------------------------
def test_concurrent_clients_share_decode_steps(server: Served) -> None:
    prompts = ["Once", "The fox", "One day", "a bear", "woods", "birds"]
    tokens = 120
    client = server.client()
    alone = {
        p: client.completions.create(model="tiny", prompt=p, max_tokens=tokens, temperature=0)
        .choices[0]
        .text
        for p in prompts
    }
    before = server.health()["models"]["tiny"]["decode_steps"]
    results: dict[str, str] = {}
    start = threading.Barrier(len(prompts))

    def ask(prompt: str) -> None:
        start.wait()
        out = server.client().completions.create(
            model="tiny", prompt=prompt, max_tokens=tokens, temperature=0
        )
        results[prompt] = out.choices[0].text

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    steps = server.health()["models"]["tiny"]["decode_steps"] - before
    assert results == alone  # every client got all its tokens, the same as alone
    # alone, each would take tokens - 1 steps: together they shared most of them
    assert steps < 0.7 * len(prompts) * (tokens - 1), steps


def test_disconnected_clients_free_their_slots(server: Served) -> None:
    body = {"model": "tiny", "prompt": "Once", "max_tokens": LIMIT, "stream": True}
    body["ignore_eos"] = True
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert wait_until(lambda: server.health()["models"]["tiny"]["active"] == 1)
    assert wait_until(lambda: idle(server)), server.health()
    # a non-streamed request whose client gives up
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/completions", json=body | {"stream": False}, timeout=1.5)
    assert wait_until(lambda: idle(server)), server.health()
    out = server.client().completions.create(model="tiny", prompt="Once", max_tokens=3)
    assert out.usage.completion_tokens == 3


# -- bad requests ---------------------------------------------------------------------------
BAD_BODIES = [
    (b'{"model": "tiny", "prompt": ', 400, None),  # cut-off JSON
    (b'{"prompt": "\xff\xfe"}', 400, None),  # not UTF-8
    (b"[1, 2]", 400, None),
    (b'{"prompt": "x", "max_tokens": NaN}', 400, None),
    (b'{"prompt": "x", "max_tokens": "ten"}', 400, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 0}', 400, "max_tokens"),
    (b'{"prompt": "x", "max_tokens": 100001}', 400, "max_tokens"),
    (b'{"prompt": "x", "temperature": true}', 400, "temperature"),
    (b'{"prompt": "x", "temperature": -1}', 400, "temperature"),
    (b'{"prompt": "x", "top_p": 0}', 400, "top_p"),
    (b'{"prompt": "x", "top_k": 0}', 400, "top_k"),
    (b'{"prompt": "x", "n": 0}', 400, "n"),
    (b'{"prompt": "x", "n": 99}', 400, "n"),
    (b'{"prompt": "x", "stop": [1]}', 400, "stop"),
    (b'{"prompt": "x", "seed": 1.5}', 400, "seed"),
    (b'{"prompt": "x", "presence_penalty": 3}', 400, "presence_penalty"),
    (b'{"prompt": "x", "stream": "yes"}', 400, "stream"),
    (b'{"prompt": "x", "stream_options": {"include_usage": true}}', 400, "stream_options"),
    (b'{"prompt": 5}', 400, "prompt"),
    (b'{"prompt": "x", "model": 3}', 400, "model"),
    (b'{"prompt": "x", "model": "nope"}', 404, "model"),
    (b'{"prompt": "x", "model": "../tiny"}', 404, "model"),
    (b'{"prompt": "x", "model": "/etc"}', 404, "model"),
]
BAD_CHATS = [
    {"messages": []},
    {"messages": "hi"},
    {"messages": [{"role": "wizard", "content": "hi"}]},
    {"messages": [{"role": "user", "content": 3}]},
    {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
    {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]},
]


def check_error(response: httpx.Response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param


def test_malformed_requests_get_openai_errors(server: Served) -> None:
    url = server.url + "/v1/completions"
    for body, status, param in BAD_BODIES:
        response = httpx.post(url, content=body, timeout=10)
        check_error(response, status, param)
    for body in BAD_CHATS:
        response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=10)
        check_error(response, 400, "messages")
    check_error(httpx.get(url, timeout=10), 405)
    check_error(httpx.delete(server.url + "/v1/models", timeout=10), 405)
    check_error(httpx.get(server.url + "/v2/anything", timeout=10), 404)
    huge = b'{"prompt": "' + b"a" * (1 << 20) + b'"}'
    check_error(httpx.post(url, content=huge, timeout=10), 413)
    with pytest.raises(openai.BadRequestError):
        server.client().completions.create(model="tiny", prompt="x", max_tokens=-1)
    with pytest.raises(openai.NotFoundError):
        server.client().chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "x"}]
        )
    # and the server is still there for the next good request
    out = server.client().completions.create(
        model="tiny", prompt="Once", max_tokens=2, extra_body={"ignore_eos": True}
    )  # sampled: without ignore_eos an end-of-text first token would end it at 0
    assert out.usage.completion_tokens == 2
    assert server.proc.poll() is None


def test_queue_limit_api_key_and_ctrl_c(store: Path) -> None:
    served = Served(store, "-m", "tiny", "--api-key", "sekret", "--max-batch", "1",
                    "--max-queue", "1", "--max-tokens", str(LIMIT))  # fmt: skip
    try:
        url = served.url + "/v1/completions"
        good = {"Authorization": "Bearer sekret"}
        check_error(httpx.get(served.url + "/v1/models", timeout=10), 401)
        check_error(httpx.post(url, json={"prompt": "x"}, headers={"Authorization": "Bearer no"},
                               timeout=10), 401)  # fmt: skip
        with pytest.raises(openai.AuthenticationError):
            served.client("wrong").models.list()
        assert [m.id for m in served.client("sekret").models.list().data] == ["tiny"]
        assert served.health()["status"] == "ok"  # health needs no key
        body = {"prompt": "Once", "max_tokens": LIMIT, "stream": True, "ignore_eos": True}
        with (
            httpx.stream("POST", url, json=body, headers=good, timeout=30) as first,
            httpx.stream("POST", url, json=body, headers=good, timeout=30) as second,
        ):
            assert first.status_code == second.status_code == 200
            assert wait_until(lambda: served.health()["models"]["tiny"]["waiting"] == 1)
            check_error(httpx.post(url, json=body, headers=good, timeout=10), 503)
            next(first.iter_lines())
            # Ctrl+C with requests in flight: they end, the server exits 0
            served.proc.send_signal(signal.SIGINT)
            assert served.proc.wait(timeout=30) == 0
    finally:
        served.stop()


# -- the command ----------------------------------------------------------------------------
def test_without_the_extra_it_says_how_to_install(
    home_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn raises ImportError
    result = run("serve", "-m", "tiny", code=1)
    assert result.stderr.count("\n") == 1
    assert 'pip install "gptcli[serve]"' in result.stderr


def test_bind_address_checks() -> None:
    from gptcli.cli.serve import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_unknown_model_at_start_is_one_line(home_env: Path) -> None:
    result = run("serve", "-m", "nope", code=1)
    assert result.stderr.startswith("error: unknown model 'nope'")


# -- the page, in headless Chromium ---------------------------------------------------------
def chromium_driver():  # type: ignore[no-untyped-def]
    webdriver = pytest.importorskip("selenium.webdriver")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


def test_chat_page_streams_a_reply(server: Served) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium_driver()
    try:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 30)
        picker = Select(driver.find_element(By.ID, "model"))
        wait.until(lambda d: len(picker.options) == 2)
        assert [o.text for o in picker.options] == ["tiny", "tiny-chat"]
        picker.select_by_visible_text("tiny-chat")
        for field, value in (("temperature", "0"), ("max-tokens", "16")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        box = driver.find_element(By.ID, "input")
        box.send_keys("Hello", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "fox")
        assert box.get_attribute("value") == "Hello\nfox"  # Shift+Enter: a new line, not sent
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
        box.send_keys(Keys.ENTER)
        wait.until(lambda d: "finished" in d.find_element(By.ID, "status").text)
        messages = driver.find_elements(By.CSS_SELECTOR, ".msg .text")
        assert messages[0].text == "Hello\nfox"
        reply = messages[1].get_attribute("textContent")
        expected = server.client().chat.completions.create(
            model="tiny-chat",
            messages=[{"role": "user", "content": "Hello\nfox"}],
            max_tokens=16,
            temperature=0,
        )
        assert reply == expected.choices[0].message.content
        # stop: a reply that would never end on its own
        box = driver.find_element(By.ID, "max-tokens")
        box.clear()
        box.send_keys(str(LIMIT))
        driver.find_element(By.ID, "input").send_keys("Go on", Keys.ENTER)
        wait.until(lambda d: d.find_element(By.ID, "stop").is_enabled())
        wait.until(lambda d: server.health()["models"]["tiny-chat"]["active"] == 1)
        driver.find_element(By.ID, "stop").click()
        wait.until(lambda d: d.find_element(By.ID, "status").text == "stopped")
        assert wait_until(lambda: idle(server, "tiny-chat")), server.health()
        driver.find_element(By.ID, "new").click()
        assert driver.find_elements(By.CSS_SELECTOR, ".msg") == []
        # no script error, and nothing fetched from anywhere but this server
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        assert resources and all(r.startswith(server.url + "/") for r in resources)
    finally:
        driver.quit()


def test_serving_never_writes_to_the_store(server: Served, store: Path) -> None:
    server.client().completions.create(model="tiny", prompt="Once", max_tokens=3)
    server.client().chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "x"}], max_tokens=3
    )
    assert snapshot(store) == STORE_AT_START[store]  # after every test above
    assert not logs_of(store).exists()  # `gpt serve` never logs a conversation
    assert sorted(p.name for p in (store / "models").iterdir()) == ["tiny", "tiny-chat"]


def test_chat_page_keeps_conversations_in_the_browser(server: Served) -> None:
    """Reload keeps the current conversation, an older one reopens and goes on, clear forgets."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = chromium_driver()
    wait = WebDriverWait(driver, 30)

    def texts() -> list[str]:
        shown = driver.find_elements(By.CSS_SELECTOR, ".msg .text")
        return [e.get_attribute("textContent") for e in shown]

    def past() -> list[str]:
        return [b.text for b in driver.find_elements(By.CSS_SELECTOR, "#past button")]

    def send(text: str) -> None:
        driver.find_element(By.ID, "input").send_keys(text, Keys.ENTER)
        wait.until(lambda d: "finished" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: d.find_element(By.ID, "send").is_enabled())  # kept by then

    def start() -> Select:
        picker = Select(driver.find_element(By.ID, "model"))
        wait.until(lambda d: len(picker.options) == 2)
        return picker

    try:
        driver.get(server.url + "/")
        start().select_by_visible_text("tiny-chat")
        for field, value in (("temperature", "0"), ("max-tokens", "8")):
            box = driver.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        send("Hello fox")
        first = texts()
        assert first[0] == "Hello fox" and len(first) == 2
        driver.refresh()
        picker = start()
        wait.until(lambda d: texts() == first)
        assert picker.first_selected_option.text == "tiny-chat"  # the model comes back too
        assert past() == ["Hello fox"]
        current = driver.find_element(By.CSS_SELECTOR, "#past button[aria-current]")
        assert current.text == "Hello fox"
        # a new conversation: the first stays in the list
        driver.find_element(By.ID, "new").click()
        assert texts() == [] and past() == ["Hello fox"]
        send("Second one")
        assert past() == ["Second one", "Hello fox"]  # newest first
        # reopen the first and go on: the server gets its whole history
        driver.find_element(By.XPATH, "//ul[@id='past']//button[text()='Hello fox']").click()
        assert texts() == first
        driver.find_element(By.ID, "max-tokens").clear()
        driver.find_element(By.ID, "max-tokens").send_keys("8")
        driver.find_element(By.ID, "temperature").clear()
        driver.find_element(By.ID, "temperature").send_keys("0")
        send("Go on")
        expected = server.client().chat.completions.create(
            model="tiny-chat",
            messages=[
                {"role": "user", "content": "Hello fox"},
                {"role": "assistant", "content": first[1]},
                {"role": "user", "content": "Go on"},
            ],
            max_tokens=8,
            temperature=0,
        )
        assert texts() == [*first, "Go on", expected.choices[0].message.content]
        assert past() == ["Hello fox", "Second one"]
        driver.refresh()
        start()
        wait.until(lambda d: len(texts()) == 4)
        # clear: asks first, then forgets every conversation, also after a reload
        driver.find_element(By.ID, "clear-history").click()
        driver.switch_to.alert.dismiss()
        assert len(past()) == 2 and len(texts()) == 4
        driver.find_element(By.ID, "clear-history").click()
        driver.switch_to.alert.accept()
        assert texts() == [] and past() == []
        assert driver.execute_script("return localStorage.getItem('gptcli.conversations')") is None
        driver.refresh()
        start()
        assert texts() == [] and past() == []
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        driver.quit()
