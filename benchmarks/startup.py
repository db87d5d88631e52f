"""B3: start-up on this machine, `gpt --help` and `gpt generate -n 1` against bare imports.

Each round runs, one after the other in fresh processes: `python -c pass`, `python -c "import
torch"`, `gpt --help` and `gpt generate "Once" -n 1` on a tiny stored model (2 layers x 64,
char tokenizer, written to a temporary store). `gpt` is `python -m gptcli` from this checkout.
Wall times are summarised as min / median / max; the cost of `gpt generate` beyond torch is
taken within each round. Targets: `gpt --help` <= 0.3 s, `gpt generate -n 1` <= bare torch
import + 0.5 s.

    python benchmarks/startup.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def write_tiny_model(home: Path) -> None:
    sys.path.insert(0, str(SRC))
    import torch

    from gptcli.checkpoint import write_model_dir
    from gptcli.config import ModelConfig
    from gptcli.model import GPT
    from gptcli.tokenizer import Tokenizer

    torch.manual_seed(0)
    tokenizer = Tokenizer.train_char(["Once upon a time, a fox counted the stars."])
    config = ModelConfig.from_preset("tiny", vocab_size=tokenizer.vocab_size)
    write_model_dir(home / "models" / "tiny", GPT(config), tokenizer)


def wall(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{low:.2f} / {mid:.2f} / {high:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "store"
        write_tiny_model(home)
        env = os.environ | {"GPTCLI_HOME": str(home), "PYTHONPATH": str(SRC)}
        py = sys.executable
        gpt = [py, "-m", "gptcli"]
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "python -c 'import torch'": [py, "-c", "import torch"],
            "gpt --help": [*gpt, "--help"],
            "gpt generate -n 1": [*gpt, "generate", "Once", "-n", "1", "-m", "tiny"],
        }
        for command in commands.values():  # warm the file cache
            wall(command, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.rounds):
            for name, command in commands.items():
                times[name].append(wall(command, env))

    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"{'':<28}{'seconds (min / median / max)':>30}")
    for name, values in times.items():
        print(f"{name:<28}{spread(values):>30}")
    extra = [
        g - t
        for g, t in zip(times["gpt generate -n 1"], times["python -c 'import torch'"], strict=True)
    ]
    print(f"{'generate - import torch':<28}{spread(extra):>30}")
    print(f"over {args.rounds} rounds; targets: --help <= 0.30, generate - import torch <= 0.50")


if __name__ == "__main__":
    main()
