"""B1: time to quality on this machine's CPU, our default against nanoGPT's CPU recipe.

Both runs train on ../shared/data/tinyshakespeare.txt with a char tokenizer and the default
validation split (last 10%), one after the other in a fresh store, and both are scored by
`gpt eval` over the whole validation split. The nanoGPT recipe is expressed as our
`nanogpt-cpu` preset (GPT-2 layout, 4 layers x 128, block 64) with its training settings:
batch 12, AdamW lr 1e-3 (beta2 0.99, weight decay 0.1), 100 warmup steps, cosine decay to 1e-4
over 2000 steps, no dropout. `gptcli-context-64` is the default before the context grew to
256 (4 x 128, context 64, batch 32, no sequence warmup), to show what the longer context costs.

On a busy machine time budgets measure the load more than the recipe: `--max-steps N` gives our
runs a step budget instead (N = the steps an idle machine makes in the time, e.g. 430 in 45 s),
which compares the recipes per step, not per second. The load average is printed with the table.
Where the machine's speed varies from run to run (a shared VM), `--runs N` repeats our sides N
times, interleaved, and prints each side's median and range.

    python benchmarks/train_speed.py [--max-time 45s | --max-steps 430] [--runs 3]
        [--skip-reference] [--skip-old]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
REFERENCE = [
    "--preset",
    "nanogpt-cpu",
    "--batch-size",
    "12",
    "--max-steps",
    "2000",
    "--optimizer",
    "adamw",
    "--lr",
    "1e-3",
    "--schedule",
    "cosine",
    "--min-lr-ratio",
    "0.1",
    "--warmup-steps",
    "100",
    "--weight-decay",
    "0.1",
    "--eval-every",
    "500",
]


def gpt(*args: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "gptcli", *args], env=env, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(name: str, flags: list[str], env: dict[str, str], run: int = 0) -> dict:
    start = time.perf_counter()
    stored = f"{name}-{run}"
    train = gpt(
        "train",
        str(DATA),
        "--tokenizer",
        "char",
        "--name",
        stored,
        "--json",
        "--quiet",
        *flags,
        env=env,
    )
    wall = time.perf_counter() - start
    score = gpt("eval", stored, "--json", env=env)
    return {
        "run": name,
        "wall_s": round(wall, 1),
        "train_s": train["seconds"],
        "steps": train["steps"],
        "threads": train.get("threads", "-"),
        "params": train["params"],
        "val_loss": round(score["loss"], 4),
    }


OLD_DEFAULT = ["--preset", "mini", "--block-size", "64", "--batch-size", "32"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-time", default="45s")
    parser.add_argument("--max-steps", type=int, default=None, help="instead of --max-time")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-old", action="store_true", help="no gptcli-context-64 row")
    parser.add_argument(
        "--runs", type=int, default=1, help="runs of our sides, interleaved, with their medians"
    )
    args = parser.parse_args()
    budget = ["--max-time", args.max_time]
    if args.max_steps:
        budget = ["--max-steps", str(args.max_steps)]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GPTCLI_HOME": home}
        rows = []
        for run in range(args.runs):
            rows.append(measure("gptcli-default", budget, env, run))
            if not args.skip_old:
                rows.append(measure("gptcli-context-64", [*budget, *OLD_DEFAULT], env, run))
        if not args.skip_reference:  # once: its 2,000 steps give the same loss every time
            rows.append(measure("nanogpt-cpu-recipe", REFERENCE, env))
    print(
        f"B1 on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads default; load average {load[0]:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; budget {' '.join(budget)}"
    )
    print(
        f"{'run':<20} {'wall s':>8} {'train s':>8} {'steps':>6} {'threads':>7} {'params':>9} "
        f"{'val loss':>9}"
    )
    for r in rows:
        print(
            f"{r['run']:<20} {r['wall_s']:>8} {r['train_s']:>8} {r['steps']:>6} "
            f"{r['threads']:>7} {r['params']:>9,} {r['val_loss']:>9}"
        )
    if args.runs > 1:  # this machine's speed may vary from run to run: medians, and the range
        for name in dict.fromkeys(r["run"] for r in rows if r["run"] != "nanogpt-cpu-recipe"):
            mine = [r for r in rows if r["run"] == name]
            losses = sorted(r["val_loss"] for r in mine)
            steps = sorted(r["steps"] for r in mine)
            print(
                f"median of {len(mine)} {name}: val loss {statistics.median(losses)} "
                f"({losses[0]} to {losses[-1]}), steps {statistics.median(steps):g} "
                f"({steps[0]} to {steps[-1]})"
            )


if __name__ == "__main__":
    main()
