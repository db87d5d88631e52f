"""B2: decode speed on this machine's CPU, `gpt generate` against `transformers` and llama.cpp.

A 124M GPT-2-shaped model (12 layers x 768, vocab 50257, context 1024) gets random weights from
a fixed seed in `transformers` and is saved with `save_pretrained`; ours loads that directory
through gptcli.hf, as `gpt generate -m DIR` does, so every side runs the same weights. Batch 1,
greedy, a 32-token prompt, 128 new tokens, end-of-text ignored. In each run, interleaved, with
the thread settings `gpt generate` makes (torch's thread count, OpenMP threads that sleep while
they wait; see `sleeping_omp_threads`):

- `transformers`: `GPT2LMHeadModel.generate`, float32, its default attention (SDPA);
- `gpt float32`, `gpt bfloat16`, `gpt int8`: our engine as `gpt generate --dtype ...` runs it
  (`auto` is bfloat16 on CPUs with native bfloat16, float32 elsewhere): the prefill in torch,
  then one native step a token (gptcli.kernels); with `--torch-path` also `gpt ... torch`, the
  same with one-token steps on torch's kernels (where no C compiler is found);
- llama.cpp, where a `llama-bench` binary is on PATH or given with `--llama-bench`: the same
  weights written to GGUF here by `gpt models export`'s writer (gptcli.gguf_export) as f32, bf16
  and q8_0, each measured by `llama-bench -p 32 -n 128 -t THREADS -r 1` once per run, next to
  its pair on our side. It runs with its own OpenMP defaults, as users run it (threads that spin
  a while before they sleep), unless the caller set OMP_WAIT_POLICY or GOMP_SPINCOUNT;
  `--llama-omp ours` gives it our setting (sleeping threads) instead. Sleeping costs llama.cpp
  about half its speed on an idle Firecracker VM (q8_0: 38 against 76 tok/s), where a wake-up
  takes about 150 us; spinning costs it most of its speed on busy cores (f32 decode at load 12:
  0.5 tok/s against 7).

Prefill tok/s = prompt tokens / time to the first new token; decode tok/s = 127 / (time for 128
new tokens - time for 1) on our side and transformers'; llama-bench's pp32 and tg128. Ratios are
taken within each run (the machine is shared and noisy) and summarised as min / median / max;
the load average is printed before and after. The memory limit is printed too: a plain
streaming read (torch summing 1 GiB of float32 on the same threads, best of 5), against which
each side's decode rate in GB/s (tok/s x its GGUF file's bytes) says how close it is.

`--eval-model NAME_OR_DIR` also measures what each dtype costs in quality: `gpt eval`'s loss on
`--eval-text` (default: the last 10% of tinyshakespeare) in float32, the default dtype and int8,
and the loss of its first tokens fed one at a time through the KV cache (the decode path).

    python benchmarks/generate_speed.py [--runs 5] [--llama-bench PATH] [--eval-model NAME]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gptcli.hardware import sleeping_omp_threads

# what the caller set, before we set what `gpt generate` sets (llama.cpp gets only the former)
INHERITED = {name for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if name in os.environ}
sleeping_omp_threads()  # as gpt generate does, before torch loads
import torch  # noqa: E402

from gptcli.checkpoint import load_model  # noqa: E402
from gptcli.inference.generate import GenerationStats, generate_tokens  # noqa: E402
from gptcli.inference.precision import inference_dtype, prepare_for_inference  # noqa: E402
from gptcli.kernels import unavailable  # noqa: E402
from gptcli.kernels.step import NativeDecodeStep  # noqa: E402
from gptcli.sample import SamplingSettings  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
GREEDY = SamplingSettings(temperature=0)


def machine() -> str:
    """The CPU's model and vendor (from /proc/cpuinfo where there is one) and its count."""
    from gptcli.hardware import cpu_flags

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    vendor = cpu_flags()[0] or "vendor unknown"
    return f"{name} ({vendor}), {os.cpu_count()} CPUs"


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
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab |= {"Ġt": len(vocab), "<|endoftext|>": 50256}  # one merge: llama.cpp wants some
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "t")]))
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
    """`gpt generate`'s engine; `native=False` keeps one-token steps on torch's kernels (what
    runs where the native step cannot be built), to show what the native step changes."""

    def __init__(self, directory: Path, dtype: str, native: bool = True) -> None:
        self.model = load_model(directory).model
        self.dtype = inference_dtype(dtype, torch.device("cpu"))
        prepare_for_inference(self.model, self.dtype)
        self.native = native
        self.name = f"gpt {str(self.dtype).removeprefix('torch.')}" + ("" if native else " torch")
        self.stats = GenerationStats()

    def tokens(self, prompt: list[int], n: int) -> list[int]:
        self.stats = GenerationStats()
        if self.native:
            return list(generate_tokens(self.model, prompt, n, GREEDY, stats=self.stats))
        keep = NativeDecodeStep.for_model
        NativeDecodeStep.for_model = staticmethod(lambda *args: None)  # type: ignore[method-assign]
        try:
            return list(generate_tokens(self.model, prompt, n, GREEDY, stats=self.stats))
        finally:
            NativeDecodeStep.for_model = keep  # type: ignore[method-assign]


# -- llama.cpp -------------------------------------------------------------------------------
LLAMA_TYPES = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0"}  # our dtype -> GGUF's
EXPORT_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "int8": "q8_0"}  # for gguf_export


def write_gguf(directory: Path, path: Path, dtype: str) -> None:
    """The model in `directory` as llama.cpp GGUF, as `gpt models export NAME FILE.gguf --dtype`
    writes it: matrices in `dtype`'s GGUF pair, vectors and positions in f32."""
    from gptcli.chat import load_template
    from gptcli.gguf_export import write_gguf as export

    loaded = load_model(directory)
    template = load_template(directory, loaded.tokenizer)
    export(path, loaded.model, loaded.tokenizer, "gpt2-random", EXPORT_DTYPES[dtype], template)


class LlamaBench:
    """One llama-bench run per call: pp (prompt tokens) and tg (new tokens) tokens/s."""

    def __init__(
        self, binary: str, gguf_path: Path, dtype: str, threads: int, env: dict[str, str]
    ) -> None:
        self.binary, self.path, self.threads, self.env = binary, gguf_path, threads, env
        self.extra: list[str] = []  # --llama-args
        self.name = f"llama.cpp {LLAMA_TYPES[dtype]}"

    def measure(self, prompt: int, new: int) -> tuple[float, float]:
        command = [self.binary, "-m", str(self.path), "-p", str(prompt), "-n", str(new)]
        command += ["-t", str(self.threads), "-r", "1", "-o", "json", *self.extra]
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=self.env)
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        rows = json.loads(done.stdout)
        pp = next(r["avg_ts"] for r in rows if r["n_prompt"] and not r["n_gen"])
        tg = next(r["avg_ts"] for r in rows if r["n_gen"] and not r["n_prompt"])
        return pp, tg


def find_llama_bench(given: str | None) -> str | None:
    if given:
        if not Path(given).is_file():
            raise SystemExit(f"--llama-bench {given}: no such file")
        return given
    return shutil.which("llama-bench")


def read_bandwidth(threads: int, gib: int = 1, tries: int = 5) -> float:
    """A plain multi-threaded streaming read on this machine, GB/s: torch summing `gib` GiB of
    float32 on `threads` threads, the best of `tries` (the memory limit a decode step can reach,
    which reads every weight once a token)."""
    torch.set_num_threads(threads)
    data = torch.ones(gib * 2**28)
    best = 0.0
    for _ in range(tries):
        start = time.perf_counter()
        data.sum()
        best = max(best, data.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


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
    them (the native step where it can run; the windows past the context as generate_batch
    makes them)."""
    import torch.nn.functional as F

    context = model.config.block_size
    cache = model.new_cache(1)
    native = NativeDecodeStep.for_model(model, cache)  # what generation runs, where it can

    def last(chunk: list[int]) -> torch.Tensor:  # (V,) float32 logits after the chunk
        tokens = torch.tensor([chunk])
        if native is not None:
            return native(tokens)[0]
        return model(tokens, cache=cache, last_only=True)[0][0, -1].float()

    total = 0.0
    with torch.inference_mode():
        logits = last(ids[:1])
        for i in range(1, len(ids)):
            total += float(F.cross_entropy(logits[None], torch.tensor(ids[i : i + 1])))
            if cache.pos >= context and not model.rotary:
                cache.reset()
                logits = last(ids[i + 1 - context // 2 : i + 1])
            else:
                logits = last(ids[i : i + 1])
    return total / (len(ids) - 1)


def eval_losses(ref: str, text_path: Path, stream_tokens: int) -> None:
    from gptcli.data import encode_text
    from gptcli.evaluate import score_text
    from gptcli.store import ModelStore

    text = text_path.read_text(encoding="utf-8")
    if text_path == DATA:
        text = text[int(len(text) * 0.9) :]  # the validation split
    rows = {}
    for dtype in ("float32", "auto", "int8"):
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
    parser.add_argument("--llama-bench", help="llama-bench binary (default: on PATH)")
    parser.add_argument("--no-transformers", action="store_true", help="skip that side")
    parser.add_argument(
        "--llama-args", default="",
        help="more llama-bench flags, e.g. '--repack 0' where a -DGGML_NATIVE=ON build uses AMX "
        "that the CPU lists but its hypervisor does not enable (illegal instruction)",
    )  # fmt: skip
    parser.add_argument("--dtypes", default="float32,bfloat16,int8", help="our side's dtypes")
    parser.add_argument("--eval-model", help="also compare eval loss in each dtype")
    parser.add_argument("--eval-text", type=Path, default=DATA)
    parser.add_argument("--stream-tokens", type=int, default=1000)
    parser.add_argument(
        "--torch-path", action="store_true", help="also our dtypes without the native step"
    )
    parser.add_argument(
        "--llama-omp",
        choices=["own", "ours"],
        default="own",
        help="llama.cpp's OpenMP settings: its own defaults (as users run it) or ours",
    )
    args = parser.parse_args()

    n, p = args.new_tokens, args.prompt_tokens
    threads = torch.get_num_threads()
    prompt = torch.randint(0, 50256, (p,), generator=torch.Generator().manual_seed(1)).tolist()
    llama = find_llama_bench(args.llama_bench)
    dtypes = args.dtypes.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "gpt2-random"
        write_random_gpt2(directory, args.seed)
        ours = [Ours(directory, dtype) for dtype in dtypes]
        sides: list[Transformers | Ours] = [] if args.no_transformers else [Transformers(directory)]
        if args.torch_path:
            sides += [Ours(directory, dtype, native=False) for dtype in dtypes]
        sides += ours
        llama_env = dict(os.environ)
        if args.llama_omp == "own":
            for name in {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"} - INHERITED:
                llama_env.pop(name, None)
        pairs: dict[str, LlamaBench] = {}  # our side's name -> its llama.cpp pair
        if llama is None:
            print("llama.cpp: skipped (no llama-bench on PATH; see --llama-bench and the README)")
        else:
            for side, dtype in zip(ours, dtypes, strict=True):
                path = Path(tmp) / f"gpt2-{LLAMA_TYPES[dtype]}.gguf"
                write_gguf(directory, path, dtype)
                pairs[side.name] = LlamaBench(llama, path, dtype, threads, llama_env)
                pairs[side.name].extra = args.llama_args.split()
        print(
            f"{machine()}, torch "
            f"{torch.__version__}, {threads} threads, OMP_WAIT_POLICY="
            f"{os.environ.get('OMP_WAIT_POLICY')} (llama.cpp: "
            f"{llama_env.get('OMP_WAIT_POLICY', 'unset')}); native step: "
            f"{unavailable() or 'yes'}; auto = "
            f"{str(inference_dtype('auto', torch.device('cpu'))).removeprefix('torch.')}; "
            f"prompt {p} tokens, {n} new, greedy; load average {load()}"
        )
        sizes = {b.name: b.path.stat().st_size for b in pairs.values()}  # bytes read a token
        sizes |= {name: sizes[b.name] for name, b in pairs.items()}  # (the same weights)
        bandwidth = read_bandwidth(threads)
        print(
            f"streaming read: {bandwidth:.1f} GB/s (torch sum of 1 GiB float32, {threads} threads)"
        )
        for side in sides:  # warm-up
            timed(side, prompt, 8)
        names = [s.name for s in sides] + [b.name for b in pairs.values()]
        prefill: dict[str, list[float]] = {name: [] for name in names}
        decode: dict[str, list[float]] = {name: [] for name in names}
        outputs: dict[str, list[int]] = {}
        for run in range(args.runs):
            for side in sides:
                first, _ = timed(side, prompt, 1)
                full, outputs[side.name] = timed(side, prompt, n)
                prefill[side.name].append(p / first)
                decode[side.name].append((n - 1) / (full - first))
                if side.name in pairs:
                    bench = pairs[side.name]
                    pp, tg = bench.measure(p, n)
                    prefill[bench.name].append(pp)
                    decode[bench.name].append(tg)
            row = "  ".join(f"{name} {decode[name][-1]:.1f}" for name in names)
            print(f"run {run + 1}: decode tok/s  {row}  (load {load()})", flush=True)

    head = f"{'':<17}{'prefill tok/s':>22}{'decode tok/s':>22}{'decode vs llama.cpp':>22}"
    print(f"\n{head}{'GB/s read':>11}")
    for name in names:
        pair = pairs.get(name)
        ratio = ""
        if pair is not None:
            ratios = [a / b for a, b in zip(decode[name], decode[pair.name], strict=True)]
            ratio = spread(ratios, 2) + "x"
        rate = f"{statistics.median(decode[name]) * sizes[name] / 1e9:.1f}" if name in sizes else ""
        print(
            f"{name:<17}{spread(prefill[name]):>22}{spread(decode[name]):>22}{ratio:>22}{rate:>11}"
        )
    print(f"(min / median / max over {args.runs} runs; ratios within each run; load {load()})")
    if sizes:
        print(
            f"GB/s read = median decode tok/s x the GGUF file's bytes (every weight once a "
            f"token), against a streaming read of {bandwidth:.1f} GB/s: where llama.cpp's is "
            f"0.95x of that or more, it is at the memory limit"
        )
    if "gpt float32" in outputs and "transformers" in outputs:
        same = sum(
            a == b for a, b in zip(outputs["gpt float32"], outputs["transformers"], strict=True)
        )
        print(f"greedy tokens: gpt float32 = transformers on {same}/{n}")
    for name in outputs:
        if name.startswith("gpt ") and name != "gpt float32" and "gpt float32" in outputs:
            pairs_ = enumerate(zip(outputs[name], outputs["gpt float32"], strict=True))
            agree = next((i for i, (a, b) in pairs_ if a != b), n)
            print(f"greedy tokens: {name} = gpt float32 for the first {agree}/{n}")
    if args.eval_model:
        eval_losses(args.eval_model, args.eval_text, args.stream_tokens)


if __name__ == "__main__":
    main()
