"""B2: decode speed on this machine's CPU, `gpt generate` against `transformers` `generate`.

A 124M GPT-2-shaped model (12 layers x 768, vocab 50257, context 1024) gets random weights from
a fixed seed in `transformers` and is saved with `save_pretrained`; ours loads that directory
through gptcli.hf, as `gpt generate -m DIR` does, so both sides run the same weights. Batch 1,
greedy, a 32-token prompt, 128 new tokens, end-of-text ignored. In each run, back to back in this
one process and with the thread settings `gpt generate` makes (torch's thread count, OpenMP
threads that sleep while they wait; see `sleeping_omp_threads`):

- `transformers`: `GPT2LMHeadModel.generate`, float32, its default attention (SDPA);
- `gpt default`: our engine as `gpt generate` runs it by default (`--dtype auto`);
- `gpt float32`: the same with `--dtype float32`.

Prefill tok/s = prompt tokens / time to the first new token; decode tok/s = 127 / (time for 128
new tokens - time for 1), for both sides alike. Ratios are taken within each run (the machine
is shared and noisy) and summarised as min / median / max.

`--eval-model NAME_OR_DIR` also measures what the default dtype costs in quality, in float32 and
in the default dtype: `gpt eval`'s loss on `--eval-text` (default: the last 10% of
tinyshakespeare), and the loss of its first tokens fed one at a time through the KV cache (the
decode path: single-row products, the cache, windows past the context).

    python benchmarks/generate_speed.py [--runs 5] [--new-tokens 128] [--eval-model NAME]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptcli.cli.generate import sleeping_omp_threads

sleeping_omp_threads()  # as gpt generate does, before torch loads: for both sides alike
import torch  # noqa: E402

from gptcli.checkpoint import load_model  # noqa: E402
from gptcli.generate import (  # noqa: E402
    GenerationStats,
    generate_tokens,
    inference_dtype,
    prepare_for_inference,
)
from gptcli.sample import SamplingSettings  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
GREEDY = SamplingSettings(temperature=0)


def write_random_gpt2(directory: Path, seed: int) -> None:
    """A random 124M GPT-2 saved by transformers, with a byte-level tokenizer our loader reads."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    model.save_pretrained(directory)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))} | {"<|endoftext|>": 50256}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(directory / "tokenizer.json"))


class Transformers:
    name = "transformers"

    def __init__(self, directory: Path) -> None:
        import transformers

        self.model = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
        self.model.generation_config.eos_token_id = None  # like --ignore-eos
        self.model.generation_config.pad_token_id = 0

    def tokens(self, prompt: list[int], n: int) -> list[int]:
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False
            )
        return out[0, len(prompt) :].tolist()


class Ours:
    def __init__(self, directory: Path, dtype: str) -> None:
        self.model = load_model(directory).model
        self.dtype = inference_dtype(dtype, torch.device("cpu"))
        prepare_for_inference(self.model, self.dtype)
        self.name = f"gpt {'default' if dtype == 'auto' else dtype}"
        self.stats = GenerationStats()

    def tokens(self, prompt: list[int], n: int) -> list[int]:
        self.stats = GenerationStats()
        return list(generate_tokens(self.model, prompt, n, GREEDY, stats=self.stats))


def timed(side: Transformers | Ours, prompt: list[int], n: int) -> tuple[float, list[int]]:
    start = time.perf_counter()
    tokens = side.tokens(prompt, n)
    seconds = time.perf_counter() - start
    if len(tokens) != n:
        raise SystemExit(f"{side.name} generated {len(tokens)} tokens, not {n}")
    return seconds, tokens


def spread(values: list[float], digits: int = 1) -> str:
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def streamed_loss(model: torch.nn.Module, ids: list[int]) -> float:
    """Mean loss of ids[1:] fed one token at a time through the KV cache, as generation runs
    (the windows past the context as generate_batch makes them)."""
    import torch.nn.functional as F

    context = model.config.block_size
    cache = model.new_cache(1)
    total = 0.0
    with torch.inference_mode():
        logits, _ = model(torch.tensor([ids[:1]]), cache=cache, last_only=True)
        for i in range(1, len(ids)):
            total += float(F.cross_entropy(logits[0, -1:].float(), torch.tensor(ids[i : i + 1])))
            if cache.pos >= context and not model.rotary:
                cache.reset()
                window = torch.tensor([ids[i + 1 - context // 2 : i + 1]])
                logits, _ = model(window, cache=cache, last_only=True)
            else:
                logits, _ = model(torch.tensor([ids[i : i + 1]]), cache=cache, last_only=True)
    return total / (len(ids) - 1)


def eval_losses(ref: str, text_path: Path, stream_tokens: int) -> None:
    from gptcli.data import encode_text
    from gptcli.evaluate import score_text
    from gptcli.store import ModelStore

    text = text_path.read_text(encoding="utf-8")
    if text_path == DATA:
        text = text[int(len(text) * 0.9) :]  # the validation split
    rows = {}
    for dtype in ("float32", "auto"):
        loaded = load_model(ModelStore().resolve(ref))
        weights = inference_dtype(dtype, torch.device("cpu"))
        prepare_for_inference(loaded.model, weights)
        ids = [int(i) for i in encode_text(loaded.tokenizer, text)[: stream_tokens + 1]]
        rows[str(weights).removeprefix("torch.")] = (
            score_text(loaded.model, loaded.tokenizer, text).loss,
            streamed_loss(loaded.model, ids),
        )
    print(f"\nloss of {ref} on {text_path.name} ({len(text):,} characters); `gpt eval`, and")
    print(f"the first {stream_tokens} tokens fed one by one through the KV cache:")
    base = rows["float32"]
    for name, (windowed, streamed) in rows.items():
        print(
            f"  {name:<9} gpt eval {windowed:.5f} ({(windowed - base[0]) / base[0]:+.3%})   "
            f"streamed {streamed:.5f} ({(streamed - base[1]) / base[1]:+.3%})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-model", help="also compare eval loss in float32 and the default")
    parser.add_argument("--eval-text", type=Path, default=DATA)
    parser.add_argument("--stream-tokens", type=int, default=1000)
    args = parser.parse_args()

    n, p = args.new_tokens, args.prompt_tokens
    prompt = torch.randint(0, 50256, (p,), generator=torch.Generator().manual_seed(1)).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "gpt2-random"
        write_random_gpt2(directory, args.seed)
        sides = [Transformers(directory), Ours(directory, "auto"), Ours(directory, "float32")]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; default dtype "
        f"{str(sides[1].dtype).removeprefix('torch.')}; prompt {p} tokens, {n} new, greedy"
    )
    for side in sides:  # warm-up
        timed(side, prompt, 8)
    prefill: dict[str, list[float]] = {s.name: [] for s in sides}
    decode: dict[str, list[float]] = {s.name: [] for s in sides}
    outputs: dict[str, list[int]] = {}
    for run in range(args.runs):
        for side in sides:
            first, _ = timed(side, prompt, 1)
            full, outputs[side.name] = timed(side, prompt, n)
            prefill[side.name].append(p / first)
            decode[side.name].append((n - 1) / (full - first))
        row = "  ".join(f"{name} {decode[name][-1]:6.1f}" for name in decode)
        print(f"run {run + 1}: decode tok/s  {row}", flush=True)

    reference = "transformers"
    print(f"\n{'':<14}{'prefill tok/s':>22}{'decode tok/s':>22}{'decode vs transformers':>26}")
    for name in decode:
        ratios = [d / r for d, r in zip(decode[name], decode[reference], strict=True)]
        print(
            f"{name:<14}{spread(prefill[name]):>22}{spread(decode[name]):>22}"
            f"{spread(ratios, 2) + 'x':>26}"
        )
    print("(min / median / max over runs; ratios within each run)")
    ours_fp32 = outputs["gpt float32"]
    same = sum(a == b for a, b in zip(ours_fp32, outputs[reference], strict=True))
    pairs = enumerate(zip(outputs["gpt default"], ours_fp32, strict=True))
    agree = next((i for i, (a, b) in pairs if a != b), n)
    print(f"greedy tokens: gpt float32 = transformers on {same}/{n}; ", end="")
    print(f"gpt default = gpt float32 for the first {agree}/{n}")
    if args.eval_model:
        eval_losses(args.eval_model, args.eval_text, args.stream_tokens)


if __name__ == "__main__":
    main()
