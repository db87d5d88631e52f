"""B5: `gpt serve` under concurrent streams: aggregate tokens/s and time to first token.

The 124M GPT-2 shape with random weights from a fixed seed, built and saved as
benchmarks/generate_speed.py does (through `transformers`), is served by a real `gpt serve`
subprocess on a free loopback port, with its defaults (`--dtype auto`, torch's thread count).
For 1, 4 and 8 concurrent clients, each streams one /v1/completions request of 64 tokens
(a different 32-token prompt each, default sampling with its own seed, end-of-text ignored so
every stream gets all 64) over raw HTTP; all the clients of a round start together.

- aggregate tok/s = all tokens received / (last stream's end - the round's start);
- time to first token = from the round's start to a stream's first text, median over streams;
- speedup = aggregate tok/s at N / at 1 in the same pass (the machine may be shared).

`--runs` passes over the levels, interleaved (after one warm-up request); the table shows
medians over the passes.

    python benchmarks/serve_speed.py [--runs 3] [--tokens 64] [--levels 1 4 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import httpx  # noqa: E402
from generate_speed import DATA, write_random_gpt2  # noqa: E402


def write_full_vocab_tokenizer(directory: Path) -> None:
    """generate_speed's tokenizer knows the 256 bytes only, and ids past them decode to no text;
    here every id decodes to some (`t1234`), so each streamed token is a chunk the client sees."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab |= {f"t{i}": i for i in range(len(alphabet), 50256)} | {"<|endoftext|>": 50256}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))


def start_server(model_dir: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    env = os.environ | {"PYTHONPATH": str(HERE.parent / "src"), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "gptcli", "serve", "-m", str(model_dir), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--max-batch", str(max_batch)], stderr=subprocess.PIPE, env=env, text=True
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"on (http://127\.0\.0\.1:\d+) ", line)
        if found:
            return proc, found.group(1)
    raise SystemExit(f"gpt serve did not start (exit {proc.wait()})")


def stream(url: str, prompt: str, tokens: int, seed: int, start: float, out: dict) -> None:
    body = {"prompt": prompt, "max_tokens": tokens, "stream": True, "seed": seed}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
    first = None
    received = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"] and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                received = chunk["usage"]["completion_tokens"]
    out.update(first=first, end=time.perf_counter() - start, tokens=received)


def round_of(url: str, prompts: list[str], tokens: int, seed: int) -> dict[str, float]:
    results = [{} for _ in prompts]
    start = time.perf_counter()
    threads = [
        threading.Thread(target=stream, args=(url, p, tokens, seed + i, start, results[i]))
        for i, p in enumerate(prompts)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = [r["tokens"] for r in results]
    if got != [tokens] * len(prompts):
        raise SystemExit(f"streams received {got} tokens, not {tokens} each")
    seconds = max(r["end"] for r in results)
    return {
        "tok_s": sum(got) / seconds,
        "ttft": statistics.median(r["first"] for r in results),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    text = DATA.read_text(encoding="utf-8")
    prompts = [text[i * 500 : i * 500 + 32] for i in range(max(args.levels))]  # 32 bytes:
    # 32 tokens with the benchmark's byte-level tokenizer (no merges)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; load "
          f"average before: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "gpt2-random"
        write_random_gpt2(model_dir, args.seed)
        write_full_vocab_tokenizer(model_dir)
        proc, url = start_server(model_dir, max(args.levels))
        try:
            round_of(url, prompts[:1], 4, 0)  # warm-up
            rounds: dict[int, list[dict[str, float]]] = {level: [] for level in args.levels}
            for r in range(args.runs):  # levels interleaved, so a busy spell hits them all
                for level in args.levels:
                    rounds[level].append(round_of(url, prompts[:level], args.tokens, 1000 * r))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    base = args.levels[0]
    print(f"{'streams':>7} {'aggregate tok/s':>16} {'speedup':>8} {'TTFT s':>7} {'round s':>8}")
    for level, runs in rounds.items():
        tok_s = statistics.median(r["tok_s"] for r in runs)
        speedup = statistics.median(
            r["tok_s"] / b["tok_s"] for r, b in zip(runs, rounds[base], strict=True)
        )
        ttft = statistics.median(r["ttft"] for r in runs)
        seconds = statistics.median(r["seconds"] for r in runs)
        print(f"{level:>7} {tok_s:>16.2f} {speedup:>7.2f}x {ttft:>7.2f} {seconds:>8.1f}")
    print(f"# load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
