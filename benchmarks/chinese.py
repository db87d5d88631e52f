"""B3: a Chinese corpus, char against byte-level BPE, on the same time budget.

Both runs train on ../shared/data/guwenguanzhi.txt (classical Chinese prose, about 430 KB,
three UTF-8 bytes a character) with the default preset and settings, one after the other in a
fresh store, then `gpt eval` scores each on its validation split: the last 10% of the text by
characters, the same text for both, so bits per byte compare the two tokenizers fairly. A
greedy continuation of the first title shows what each has learned.

    python benchmarks/chinese.py [--max-time 60s | --max-steps N] [--vocab-size N]

`--max-steps` gives both runs the same number of steps, which compares the tokenizers without
depending on how busy the machine is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "guwenguanzhi.txt"
PROMPT = "鄭伯克段於鄢"


def gpt(*args: str, env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-m", "gptcli", *args], env=env, check=True, capture_output=True, text=True
    ).stdout


def measure(tokenizer: str, flags: list[str], env: dict[str, str]) -> dict:
    name = f"guwen-{tokenizer}"
    flags = ["--tokenizer", tokenizer, "--name", name, "--json", "--quiet", *flags]
    train = json.loads(gpt("train", str(DATA), *flags, env=env))
    score = json.loads(gpt("eval", name, "--json", "--quiet", env=env))
    shown = json.loads(gpt("models", "show", name, "--json", env=env))
    sample = json.loads(
        gpt("generate", PROMPT, "-m", name, "-n", "40", "--temperature", "0", "--json", env=env)
    )
    return {
        "tokenizer": tokenizer,
        "vocab": shown["vocab_size"],
        "params": train["params"],
        "steps": train["steps"],
        "seconds": train["seconds"],
        "tok_per_s": train["tokens"] / train["seconds"],
        "bytes_per_token": score["bytes"] / score["tokens"],
        "loss": score["loss"],
        "bpb": score["bits_per_byte"],
        "sample": PROMPT + sample["text"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", default="60s")
    parser.add_argument("--max-steps", help="a step budget instead of the time budget")
    parser.add_argument("--vocab-size", help="BPE vocabulary (default: suited to the corpus)")
    args = parser.parse_args()
    bpe = ["--vocab-size", args.vocab_size] if args.vocab_size else []
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GPTCLI_HOME": home}
        budget = (
            ["--max-steps", args.max_steps] if args.max_steps else ["--max-time", args.max_time]
        )
        rows = [measure("char", budget, env), measure("bpe", budget + bpe, env)]
    print(
        f"B3 on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {DATA.name}"
    )
    print(
        f"{'tokenizer':<10} {'vocab':>6} {'params':>9} {'steps':>6} {'train s':>7} {'tok/s':>7} "
        f"{'bytes/tok':>9} {'loss':>7} {'bits/byte':>9}"
    )
    for r in rows:
        print(
            f"{r['tokenizer']:<10} {r['vocab']:>6,} {r['params']:>9,} {r['steps']:>6} "
            f"{r['seconds']:>7.0f} "
            f"{r['tok_per_s']:>7,.0f} {r['bytes_per_token']:>9.2f} {r['loss']:>7.4f} "
            f"{r['bpb']:>9.4f}"
        )
    for r in rows:
        print(f"{r['tokenizer']}: {r['sample']}".replace("\n", " ⏎ "))


if __name__ == "__main__":
    main()
