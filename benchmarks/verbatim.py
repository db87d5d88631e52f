"""Does a model copy its corpus? The longest stretch of each sample found verbatim in the text.

Generates samples from a stored model with `gpt generate` (the README quick start's prompt by
default, default sampling settings, seeds 1, 2, 3, ...), and for each one reports the longest
run of characters, prompt included, that occurs exactly in the corpus. The quick start passes
when the median over three 150-token samples is under 60 characters.

    python benchmarks/verbatim.py examples/stories [-m stories] [--samples 3] [--tokens 150]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

LIMIT = 60  # characters: the quick start's bar for the median


def corpus_text(inputs: list[str]) -> str:
    """The training text as the corpus has it: files in order (directories: every .txt)."""
    files: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        files.extend(sorted(path.rglob("*.txt")) if path.is_dir() else [path])
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def longest_copied(sample: str, corpus: str) -> str:
    """The longest substring of `sample` that occurs in `corpus`."""
    best = ""
    for start in range(len(sample)):
        length = len(best) + 1
        while start + length <= len(sample) and sample[start : start + length] in corpus:
            best = sample[start : start + length]
            length += 1
    return best


def sample(model: str | None, prompt: str, tokens: int, seed: int) -> str:
    args = ["generate", prompt, "-n", str(tokens), "--seed", str(seed), "--json"]
    args += ["-m", model] if model else []
    out = subprocess.run(
        [sys.executable, "-m", "gptcli", *args], check=True, capture_output=True, text=True
    )
    return prompt + json.loads(out.stdout)["text"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="the training text (files or directories)")
    parser.add_argument("-m", "--model", default=None, help="stored model (default: default)")
    parser.add_argument("--prompt", default="Once upon a time")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=150)
    args = parser.parse_args()
    corpus = corpus_text(args.inputs)
    lengths = []
    for seed in range(1, args.samples + 1):
        text = sample(args.model, args.prompt, args.tokens, seed)
        copied = longest_copied(text, corpus)
        lengths.append(len(copied))
        print(f"--- seed {seed}: longest verbatim stretch {len(copied)} chars: {copied!r}")
        print(text)
    median = statistics.median(lengths)
    verdict = "pass" if median < LIMIT else "FAIL"
    print(f"median longest verbatim stretch: {median:g} chars ({verdict}: under {LIMIT} passes)")


if __name__ == "__main__":
    main()
