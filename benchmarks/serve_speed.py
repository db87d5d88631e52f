"""S1: `gpt serve` under concurrent streams, against llama.cpp's `llama-server`: aggregate
tokens/s and time to first token.

The 124M GPT-2 shape with random weights from a fixed seed, built and saved as
benchmarks/generate_speed.py does (through `transformers`), is served by a real `gpt serve`
subprocess on a free loopback port (`--dtype` as given, torch's thread count). With `--target
gpt llama-server` the same weights, written to GGUF in the dtype's pair (bf16, q8_0, f32) as
generate_speed.py writes them, are served by `llama-server --parallel N -t THREADS` (found on
PATH or given with `--llama-server`; built from the vendored llama.cpp source as the
README's benchmark notes say), with its own OpenMP defaults. For each level of concurrent
clients, each client streams one request of `--tokens` tokens: the same 32-token prompt ids on
both sides (a different one per client), greedy, end-of-text ignored so that every stream gets
all its tokens; all the clients of a round start together. Each client is an HTTP client made
before its first round and kept (with its connection, as a chat UI or SDK client keeps one).

- aggregate tok/s = all tokens received / (last stream's end - the round's start);
- time to first token = from the round's start to a stream's first token, median over streams;
- speedup = aggregate tok/s at N / at the first level in the same pass (the machine may be shared);
- vs llama-server = our aggregate / its aggregate, within each pass, then the median.

`--runs` passes over the levels and targets, interleaved (after one warm-up request each); the
table shows medians over the passes. The CPU model and vendor and the load average are printed.

    python benchmarks/serve_speed.py [--runs 3] [--tokens 64] [--levels 1 4 8]
        [--dtype bfloat16] [--target gpt llama-server] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import httpx  # noqa: E402
from generate_speed import DATA, LLAMA_TYPES, machine, write_gguf, write_random_gpt2  # noqa: E402


def write_full_vocab_tokenizer(directory: Path) -> None:
    """generate_speed's tokenizer knows the 256 bytes only, and ids past them decode to no text;
    here every id decodes to some (`t1234`), so each streamed token is a chunk the client sees."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab |= {f"t{i}": i for i in range(len(alphabet), 50255)}
    vocab |= {"Ġt": 50255, "<|endoftext|>": 50256}  # one merge: llama.cpp refuses none
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))


def start_server(model_dir: Path, max_batch: int, dtype: str) -> tuple[subprocess.Popen, str]:
    env = os.environ | {"PYTHONPATH": str(HERE.parent / "src"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gptcli", "serve", "-m", str(model_dir), "--port", "0"]
    command += ["--max-batch", str(max_batch), "--dtype", dtype]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"gpt serve did not start (exit {proc.wait()})")


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]  # what the benchmark's tokenizer makes of text (as gpt serve's does)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(
    binary: str, gguf: Path, parallel: int, threads: int, per_slot: int, extra: list[str]
) -> tuple[subprocess.Popen, str]:
    """llama-server on a free loopback port, `parallel` slots of `per_slot` tokens each."""
    port = free_port()
    command = [binary, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    command += ["--parallel", str(parallel), "-t", str(threads), "-c", str(parallel * per_slot)]
    command += extra
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"llama-server did not start (exit {proc.returncode})")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("llama-server did not become ready in 60 s")


def stream(
    client: httpx.Client, url: str, prompt: Prompt, tokens: int, start: float, out: dict
) -> None:
    """One greedy request to `gpt serve`'s /v1/completions, the prompt as text."""
    body = {"prompt": prompt.text, "max_tokens": tokens, "stream": True, "temperature": 0}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
    first = None
    received = 0
    with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                received = chunk["usage"]["completion_tokens"]
    out.update(first=first, end=time.perf_counter() - start, tokens=received)


def stream_llama(
    client: httpx.Client, url: str, prompt: Prompt, tokens: int, start: float, out: dict
) -> None:
    """The same request to llama-server's own /completion, the prompt as the same token ids
    (its tokenizer is not asked)."""
    body = {"prompt": prompt.ids, "n_predict": tokens, "stream": True, "temperature": 0}
    body |= {"ignore_eos": True, "cache_prompt": False}
    first = None
    received = 0
    with client.stream("POST", url + "/completion", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("content") and first is None:
                first = time.perf_counter() - start
            if chunk.get("stop"):
                received = chunk.get("tokens_predicted", 0)
    out.update(first=first, end=time.perf_counter() - start, tokens=received)


def round_of(target: Target, prompts: list[Prompt], tokens: int) -> dict[str, float]:
    results: list[dict] = [{} for _ in prompts]
    while len(target.clients) < len(prompts):  # one client each, kept (as a chat UI keeps its)
        target.clients.append(httpx.Client())
    start = time.perf_counter()
    threads = [
        threading.Thread(
            target=target.stream, args=(target.clients[i], target.url, p, tokens, start, results[i])
        )
        for i, p in enumerate(prompts)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r["tokens"] for r in results]
    if got != [tokens] * len(prompts):
        raise SystemExit(f"{target.name}: streams received {got} tokens, not {tokens} each")
    seconds = max(r["end"] for r in results)
    return {
        "tok_s": sum(got) / seconds,
        "ttft": statistics.median(r["first"] for r in results),
        "seconds": seconds,
    }


class Target:
    """A running server and how to send it one request."""

    def __init__(self, name: str, proc: subprocess.Popen, url: str, stream) -> None:  # type: ignore[no-untyped-def]
        self.name, self.proc, self.url, self.stream = name, proc, url, stream
        self.clients: list[httpx.Client] = []

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", choices=["auto", *LLAMA_TYPES])
    parser.add_argument(
        "--target", nargs="+", default=["gpt"], choices=["gpt", "llama-server"],
        help="the servers to measure, interleaved in each pass",
    )  # fmt: skip
    parser.add_argument("--llama-server", help="llama-server binary (default: on PATH)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="llama-server -t")
    parser.add_argument("--llama-args", default="", help="more llama-server flags")
    args = parser.parse_args()

    import torch
    from tokenizers import Tokenizer

    from gptcli.inference.precision import inference_dtype

    text = DATA.read_text(encoding="utf-8")
    texts = [text[i * 500 : i * 500 + 32] for i in range(max(args.levels))]  # 32 bytes:
    # about 32 tokens with the benchmark's byte-level tokenizer (one merge)
    dtype = str(inference_dtype(args.dtype, torch.device("cpu"))).removeprefix("torch.")
    print(f"# {machine()}; load average before: {load()}")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "gpt2-random"
        write_random_gpt2(model_dir, args.seed)
        write_full_vocab_tokenizer(model_dir)
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        prompts = [Prompt(t, tokenizer.encode(t).ids) for t in texts]
        try:
            if "gpt" in args.target:
                proc, url = start_server(model_dir, max(args.levels), args.dtype)
                targets.append(Target(f"gpt serve {dtype}", proc, url, stream))
            if "llama-server" in args.target:
                binary = args.llama_server or shutil.which("llama-server")
                if binary is None:
                    raise SystemExit("no llama-server: give --llama-server PATH")
                gguf = Path(tmp) / f"gpt2-{LLAMA_TYPES[dtype]}.gguf"
                write_gguf(model_dir, gguf, dtype)
                per_slot = max(256, 32 + args.tokens + 32)  # llama-server wants 256 or more
                proc, url = start_llama_server(
                    binary, gguf, max(args.levels), args.threads, per_slot, args.llama_args.split()
                )
                name = f"llama-server {LLAMA_TYPES[dtype]}"
                targets.append(Target(name, proc, url, stream_llama))
            for target in targets:
                round_of(target, prompts[:1], 4)  # warm-up
            rounds = {(t.name, level): [] for t in targets for level in args.levels}
            for _ in range(args.runs):  # interleaved, so a busy spell hits them all
                for level in args.levels:
                    for target in targets:
                        result = round_of(target, prompts[:level], args.tokens)
                        rounds[(target.name, level)].append(result)
        finally:
            for target in targets:
                target.stop()
    base, ours = args.levels[0], targets[0].name
    print(f"{'server':<22}{'streams':>8}{'aggregate tok/s':>17}{'speedup':>9}{'TTFT s':>8}"
          f"{'round s':>9}{'vs llama-server':>16}")  # fmt: skip
    for (name, level), runs in rounds.items():
        tok_s = statistics.median(r["tok_s"] for r in runs)
        speedup = statistics.median(
            r["tok_s"] / b["tok_s"] for r, b in zip(runs, rounds[(name, base)], strict=True)
        )
        ttft = statistics.median(r["ttft"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        versus = ""
        theirs = [v for (n, lv), v in rounds.items() if lv == level and n.startswith("llama")]
        if name == ours and theirs and not name.startswith("llama"):
            ratios = [r["tok_s"] / t["tok_s"] for r, t in zip(runs, theirs[0], strict=True)]
            versus = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"{name:<22}{level:>8}{tok_s:>17.2f}{speedup:>8.2f}x{ttft:>8.2f}{seconds:>9.1f}"
              f" {versus:>15}")  # fmt: skip
    print(f"# load average after: {load()}")


if __name__ == "__main__":
    main()
