"""B4: tokenize a large generated corpus, ours (streaming into a memmap) against `tokenizers`.

The corpus is Tiny Shakespeare repeated with numbered lines up to the requested size. The
reference reads the whole text and calls `encode_batch` on its lines; ours is
`read_corpus` + `build_corpus` (one checking/hashing pass, then block-wise `encode_batch` into
a token file). Each side runs in its own process so its peak memory (max RSS) is its own.

`--formats` adds rows for the same text as documents (paragraphs of the corpus) in one .txt
file, in JSONL compressed with zstd, and in Parquet: what reading a format costs beyond
plain text (each run `--repeat` times in turns, the fastest counting: on a busy machine).
`--write-jsonl-zst PATH --mb N` only writes such a JSONL.zst corpus (for
measuring `gpt train`'s memory on a big one) and exits.

    python benchmarks/data_speed.py [--mb 100] [--also-mb 25] [--formats]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

REFERENCE = """
import sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
start = time.perf_counter()
text = open(sys.argv[2], encoding="utf-8").read()
ids = tok.encode_batch(text.splitlines(keepends=True), add_special_tokens=False)
n = sum(len(e.ids) for e in ids)
print(n, time.perf_counter() - start)
"""

OURS = """
import sys, time
from collections.abc import Iterator
from pathlib import Path
from gptcli.data import build_corpus, read_corpus
from gptcli.tokenizer import Tokenizer
tok = Tokenizer.load(sys.argv[1])
start = time.perf_counter()
corpus = build_corpus(read_corpus([sys.argv[2]]), tok, 0.1, Path(sys.argv[3]))
print(len(corpus.train.tokens) + len(corpus.val.tokens), time.perf_counter() - start)
"""


def child(code: str, *args: str) -> tuple[int, float, float]:
    """Runs code in a fresh interpreter: (tokens, seconds, peak RSS in MB)."""
    script = (
        "import resource, atexit\n"
        "atexit.register(lambda: print('RSS', resource.getrusage("
        "resource.RUSAGE_SELF).ru_maxrss))\n" + code
    )
    out = subprocess.run(
        [sys.executable, "-c", script, *args], check=True, capture_output=True, text=True
    ).stdout.split()
    return int(out[0]), float(out[1]), int(out[3]) / 1024


def make_corpus(path: Path, megabytes: int) -> None:
    lines = DATA.read_text(encoding="utf-8").splitlines(keepends=True)
    target = megabytes << 20
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        copy = 0
        while written < target:
            for line in lines:
                piece = f"{copy}:{line}" if line.strip() else line
                f.write(piece)
                written += len(piece)
                if written >= target:
                    break
            copy += 1


def documents(megabytes: int) -> Iterator[str]:
    """The corpus of `make_corpus` cut into documents at its blank lines (speeches)."""
    speeches = DATA.read_text(encoding="utf-8").split("\n\n")
    target, written, copy = megabytes << 20, 0, 0
    while written < target:
        for speech in speeches:
            text = f"{copy}:{speech}\n"
            yield text
            written += len(text) + 1
            if written >= target:
                return
        copy += 1


def write_formats(work: Path, megabytes: int) -> dict[str, Path]:
    """The same documents as one .txt (a blank line between them), JSONL.zst and Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = {f: work / f"docs-{megabytes}.{f}" for f in ("txt", "jsonl.zst", "parquet")}
    with open(paths["txt"], "w", encoding="utf-8") as f:
        f.write("\n".join(documents(megabytes)))
    write_jsonl_zst(paths["jsonl.zst"], megabytes)
    batch: list[str] = []
    with pq.ParquetWriter(paths["parquet"], pa.schema([("text", pa.string())])) as writer:
        for text in documents(megabytes):
            batch.append(text)
            if len(batch) == 20_000:
                writer.write_table(pa.table({"text": batch}))
                batch = []
        if batch:
            writer.write_table(pa.table({"text": batch}))
    return paths


def write_jsonl_zst(path: Path, megabytes: int) -> None:
    import zstandard

    with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as f:
        lines: list[str] = []
        for i, text in enumerate(documents(megabytes)):
            lines.append(json.dumps({"id": i, "text": text}) + "\n")
            if len(lines) == 10_000:
                f.write("".join(lines).encode())
                lines = []
        f.write("".join(lines).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument(
        "--also-mb",
        type=int,
        default=25,
        help="a smaller size, to show that memory does not grow with the corpus (0: skip)",
    )
    parser.add_argument("--formats", action="store_true", help="rows for .txt, JSONL.zst, Parquet")
    parser.add_argument("--formats-only", action="store_true", help="only those rows")
    parser.add_argument(
        "--repeat", type=int, default=3, help="format runs each; the fastest counts"
    )
    parser.add_argument("--write-jsonl-zst", metavar="PATH", help="only write such a corpus")
    args = parser.parse_args()
    if args.write_jsonl_zst:
        write_jsonl_zst(Path(args.write_jsonl_zst), args.mb)
        return
    from gptcli.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok_path = work / "tokenizer.json"
        tok_path.write_text(Tokenizer.train_bpe([DATA.read_text()], 4096).to_json())
        rows = []
        for mb in [m for m in (args.also_mb, args.mb) if m and not args.formats_only]:
            corpus = work / f"corpus-{mb}.txt"
            make_corpus(corpus, mb)
            ref = child(REFERENCE, str(tok_path), str(corpus))
            ours = child(OURS, str(tok_path), str(corpus), str(work / f"cache-{mb}"))
            rows.append((mb, ref, ours))
            corpus.unlink()
        formats = []
        if args.formats or args.formats_only:
            written = write_formats(work, args.mb)
            runs: dict[str, list[tuple[int, float, float]]] = {name: [] for name in written}
            for attempt in range(args.repeat):  # in turns, so that a busy spell hits them all
                for name, path in written.items():
                    cache = str(work / f"cache-{name}-{attempt}")
                    runs[name].append(child(OURS, str(tok_path), str(path), cache))
            formats = [(name, min(found, key=lambda r: r[1])) for name, found in runs.items()]
    print(f"B4 on {platform.machine()}, {os.cpu_count()} cores, BPE vocab 4096")
    print(f"{'MB':>5} {'side':<22} {'tokens':>12} {'seconds':>8} {'peak MB':>8}")
    for mb, ref, ours in rows:
        print(
            f"{mb:>5} {'tokenizers encode_batch':<22} {ref[0]:>12,} {ref[1]:>8.1f} {ref[2]:>8.0f}"
        )
        print(f"{mb:>5} {'gptcli build_corpus':<22} {ours[0]:>12,} {ours[1]:>8.1f} {ours[2]:>8.0f}")
        print(
            f"{'':>5} ratio (ours / reference): time {ours[1] / ref[1]:.2f}x, "
            f"memory {ours[2] / ref[2]:.2f}x"
        )
    for name, (tokens, seconds, peak) in formats:
        ratio = seconds / formats[0][1][1]
        print(
            f"{args.mb:>5} {'gptcli ' + name:<22} {tokens:>12,} {seconds:>8.1f} {peak:>8.0f}"
            f"   {ratio:.2f}x the time of .txt"
        )
    print(json.dumps({"rows": rows, "formats": formats}))


if __name__ == "__main__":
    main()
