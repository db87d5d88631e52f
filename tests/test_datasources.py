"""Training data in the shapes people have: JSONL, JSON arrays, Parquet, compressed files,
directories of them, an explicit validation set.

The same documents in any format give exactly the tokens of a directory of .txt files holding
one document each (sorted the same way); bad input is one line naming the file and line (or
row), exit 1, and nothing written.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import lzma
import random
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run, snapshot

from gptcli.data import build_corpus, read_corpus
from gptcli.datasources.base import ReadOptions
from gptcli.tokenizer import EOT, Tokenizer, iter_chunks

DOCUMENTS = [
    "Once upon a time there was a cat.\nIt sat on the mat.",
    "",  # an empty document: no text, no end-of-text of its own (as an empty file)
    "The dog ran fast. Ünïcödé and 漢字 too.",
    "Another story here\n\nwith blank lines\n",
    "The end.",
] * 6
CHARS = "".join(sorted(set("".join(DOCUMENTS))))


def zstd(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return zstandard.ZstdCompressor().compress(data)


def jsonl(documents: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(documents)).encode()


def write_parquet(path: Path, documents: list[str], field: str = "text") -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"id": list(range(len(documents))), field: documents})
    pq.write_table(table, path, row_group_size=7)  # several row groups
    return path


def txt_dir(folder: Path, documents: list[str]) -> Path:
    folder.mkdir()
    for i, text in enumerate(documents):
        (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    return folder


def tokens(inputs: list[Path], cache: Path, val: list[Path] | None = None, **options: str) -> list:
    tokenizer = Tokenizer.train_char([CHARS])
    texts = read_corpus(
        [str(p) for p in inputs], ReadOptions(**options), [str(p) for p in val or []]
    )
    corpus = build_corpus(texts, tokenizer, 0.1, cache)
    return [corpus.train.tokens.tolist(), corpus.val.tokens.tolist()]


MAKERS = {
    "a.jsonl": lambda p: p.write_bytes(jsonl(DOCUMENTS)),
    "a.ndjson": lambda p: p.write_bytes(jsonl(DOCUMENTS)),
    "a.json": lambda p: p.write_text(json.dumps([{"text": d} for d in DOCUMENTS])),
    "a.jsonl.gz": lambda p: p.write_bytes(gzip.compress(jsonl(DOCUMENTS))),
    "a.jsonl.bz2": lambda p: p.write_bytes(bz2.compress(jsonl(DOCUMENTS))),
    "a.jsonl.xz": lambda p: p.write_bytes(lzma.compress(jsonl(DOCUMENTS))),
    "a.jsonl.zst": lambda p: p.write_bytes(zstd(jsonl(DOCUMENTS))),
    "a.parquet": lambda p: write_parquet(p, DOCUMENTS),
}


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_format_gives_the_tokens_of_a_directory_of_text_files(
    tmp_path: Path, name: str
) -> None:
    val = tmp_path / "val.txt"
    val.write_text("A held-out story about a cat.")
    path = tmp_path / name
    MAKERS[name](path)
    expected = tokens([txt_dir(tmp_path / "txt", DOCUMENTS)], tmp_path / "c1", [val])
    assert tokens([path], tmp_path / "c2", [val]) == expected
    tokenizer = Tokenizer.train_char([CHARS])
    train = expected[0]
    assert train.count(tokenizer.eot_id) == sum(1 for d in DOCUMENTS if d) - 1
    assert tokenizer.decode(train) == EOT.join(d for d in DOCUMENTS if d)


LINES = [
    "It's a line, ending in a word.",
    "trailing spaces   ",
    "  indented, after a line of spaces",
    "windows line\r",
    "tabs\tand 42 numbers, 3.14!",
    "Ünïcödé and 漢字 lines; \u00a0nbsp",
    "",
    "'quoted' (brackets) [and] {braces} -> arrows",
]


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_long_documents_cut_shorter_keep_their_ids(tmp_path: Path, kind: str) -> None:
    """Long documents are encoded in pieces of about 1,000 characters, cut only at line ends
    that no token crosses: the ids are those of the pieces of 4,096 characters they had."""
    pick = random.Random(0).choice  # cut points fall after lines of every kind
    documents = ["\n".join(pick(LINES) for _ in range(600)) for _ in range(3)]
    text = "\n".join(documents)
    tokenizer = Tokenizer.train_bpe([text], 1000) if kind == "bpe" else Tokenizer.train_char([text])
    expected: list[int] = []
    for n, document in enumerate(documents):
        pieces = tokenizer.encode_batch(list(iter_chunks(document, 4096)))
        expected += ([tokenizer.eot_id] if n else []) + [i for piece in pieces for i in piece]
    val = tmp_path / "val.txt"
    val.write_text("held out")
    (tmp_path / "a.jsonl").write_bytes(jsonl(documents))
    for n, inputs in enumerate([[txt_dir(tmp_path / "txt", documents)], [tmp_path / "a.jsonl"]]):
        texts = read_corpus([str(p) for p in inputs], val=[str(val)])
        corpus = build_corpus(texts, tokenizer, 0.1, tmp_path / f"cache{n}")
        assert corpus.train.tokens.tolist() == expected


EDGES = [
    "ends in spaces   ",
    "'s starts with an apostrophe",
    "\n\nstarts with blank lines and ends with one\n",
    "   ",  # blank, not empty: a document of its own
    "holds <|endoftext|> as text, which is the token as in any document",
    "Ünïcödé 漢字 and \u00a0 nbsp\r\n",
    "",
    "x",
    "tabs\tand 42 numbers, 3.14!" * 200,  # longer than a joined text
]


def unjoinable(spec: dict, kind: str) -> None:
    """A tokenizer.json changed so that documents joined by the end-of-text text would not
    keep their ids."""
    if kind == "eot-takes-spaces":
        for token in spec["added_tokens"]:
            token["lstrip"] = token["rstrip"] = True
    elif kind == "token-inside-eot":  # matched before the end-of-text token (not normalized)
        added = {"content": "|>", "single_word": False, "lstrip": False, "rstrip": False}
        added |= {"normalized": False, "special": True, "id": spec["added_tokens"][-1]["id"] + 1}
        spec["added_tokens"].append(added)
        spec["added_tokens"][0]["normalized"] = True
    elif kind == "truncation":
        spec["truncation"] = {"direction": "Right", "max_length": 5, "strategy": "LongestFirst"}
        spec["truncation"] |= {"stride": 0}


@pytest.mark.parametrize(
    "kind", ["bpe", "char", "eot-takes-spaces", "token-inside-eot", "truncation"]
)
def test_documents_encoded_together_keep_their_ids(tmp_path: Path, kind: str) -> None:
    """Short documents are encoded joined by the end-of-text token's text: each keeps the ids
    it has encoded alone, an end-of-text token between. Tokenizers for which that would not
    hold are not joined, and give the same ids too."""
    from gptcli.tokenwriter import joins_documents

    pick = random.Random(1).choice
    documents = [pick(EDGES) + pick(EDGES) for _ in range(300)]
    text = "".join(documents)
    tokenizer = Tokenizer.train_char([text]) if kind == "char" else Tokenizer.train_bpe([text], 600)
    if kind not in ("bpe", "char"):
        spec = json.loads(tokenizer.to_json())
        unjoinable(spec, kind)
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps(spec))
        tokenizer = Tokenizer.load(path)
    assert joins_documents(tokenizer) == (kind in ("bpe", "char"))
    expected: list[int] = []
    for document in (d for d in documents if d):
        pieces = tokenizer.encode_batch(list(iter_chunks(document, 4096)))
        expected += ([tokenizer.eot_id] if expected else []) + [i for p in pieces for i in p]
    val = tmp_path / "val.txt"
    val.write_text("held out")
    (tmp_path / "a.jsonl").write_bytes(jsonl(documents))
    texts = read_corpus([str(tmp_path / "a.jsonl")], val=[str(val)])
    corpus = build_corpus(texts, tokenizer, 0.1, tmp_path / "cache")
    assert corpus.train.tokens.tolist() == expected


def test_a_failure_while_encoding_stops_the_run_and_leaves_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches are encoded on a thread of their own: what fails there fails the run, as it
    would in the reading thread, and the half-written token files are removed."""
    documents = [f"document {i}: " + "some words here " * 40 for i in range(6000)]
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(documents))
    tokenizer = Tokenizer.train_char(["".join(documents)])
    calls = []
    encode = Tokenizer.encode_batch

    def failing(self: Tokenizer, texts: list[str]) -> list[list[int]]:
        calls.append(len(texts))
        if len(calls) == 2:
            raise RuntimeError("the tokenizer broke")
        return encode(self, texts)

    monkeypatch.setattr(Tokenizer, "encode_batch", failing)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="the tokenizer broke"):
        build_corpus(read_corpus([str(path)]), tokenizer, 0.1, cache)
    assert len(calls) >= 2
    assert list(cache.iterdir()) == []


def test_a_first_line_of_only_a_byte_order_mark_is_blank(tmp_path: Path) -> None:
    for n, first in enumerate([b"\xef\xbb\xbf", b"\xef\xbb\xbf  \r"]):
        path = tmp_path / f"{n}.jsonl"
        path.write_bytes(first + b'\n{"text": "hello"}\n{"text": "world"}\n')
        source = read_corpus([str(path)]).files[0]
        assert (source.documents, source.n_bytes, source.skipped) == (2, 10, 0)


def test_compressed_text_and_mixed_directories(tmp_path: Path) -> None:
    """A directory means every supported file under it, sorted, compressed or not; other
    files are left out. A compressed .txt is one document, as the plain one."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "1.txt.gz").write_bytes(gzip.compress(DOCUMENTS[0].encode()))
    (mixed / "2.jsonl.zst").write_bytes(zstd(jsonl(DOCUMENTS[1:4])))
    (mixed / "3.txt").write_text(DOCUMENTS[4])
    (mixed / "notes.md").write_text("not training data")
    texts = read_corpus([str(mixed)])
    assert [f.path.name for f in texts.files] == ["1.txt.gz", "2.jsonl.zst", "3.txt"]
    assert texts.documents == 5
    val = tmp_path / "val.txt"
    val.write_text("held out")
    expected = tokens([txt_dir(tmp_path / "txt", DOCUMENTS[:5])], tmp_path / "c1", [val])
    assert tokens([mixed], tmp_path / "c2", [val]) == expected


def test_plain_text_keeps_its_cache_key(tmp_path: Path) -> None:
    """The key of a .txt corpus is what it always was: existing token caches stay valid."""
    path = tmp_path / "a.txt"
    path.write_text("some text\n" * 100)
    tokenizer = Tokenizer.train_char(["some text\n"])
    corpus = build_corpus(read_corpus([str(path)]), tokenizer, 0.1, tmp_path / "cache")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    old = json.dumps([2, tokenizer.digest, 0.1, [sha]])
    assert corpus.key == hashlib.sha256(old.encode()).hexdigest()[:32]
    assert corpus.describe()["files"] == [
        {"path": str(path.resolve()), "bytes": 1000, "sha256": sha}
    ]


def test_the_split_falls_between_documents(tmp_path: Path) -> None:
    """Without --val, the last tenth of the bytes, at the nearest document boundary."""
    documents = [f"document number {i:02d} " * 3 for i in range(20)]  # 57 bytes each
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(documents))
    parquet = write_parquet(tmp_path / "a.parquet", documents)  # 3 row groups: cut in the last
    tokenizer = Tokenizer.train_char(["".join(documents)])
    for n, source in enumerate([path, parquet]):
        corpus = build_corpus(read_corpus([str(source)]), tokenizer, 0.1, tmp_path / f"c{n}")
        assert tokenizer.decode(corpus.train.tokens.tolist()) == EOT.join(documents[:18])
        assert tokenizer.decode(corpus.val.tokens.tolist()) == EOT.join(documents[18:])
        assert (corpus.train.n_bytes, corpus.val.n_bytes) == (18 * 57, 2 * 57)


def test_bytes_are_counted_in_utf8(tmp_path: Path) -> None:
    """Documents outside ASCII are counted in their UTF-8 bytes, not in characters."""
    documents = [f"café número {i:02d}, 東京 " * 3 for i in range(20)]
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(documents))
    tokenizer = Tokenizer.train_char(["".join(documents)])
    corpus = build_corpus(read_corpus([str(path)]), tokenizer, 0.1, tmp_path / "cache")
    size = len(documents[0].encode())
    assert size > len(documents[0])
    assert (corpus.train.n_bytes, corpus.val.n_bytes) == (18 * size, 2 * size)


def test_text_field_picks_another_field(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(DOCUMENTS[:5], field="content"))
    parquet = write_parquet(tmp_path / "a.parquet", DOCUMENTS[:5], field="content")
    val = tmp_path / "val.txt"
    val.write_text("held out")
    expected = tokens([txt_dir(tmp_path / "txt", DOCUMENTS[:5])], tmp_path / "c1", [val])
    assert tokens([path], tmp_path / "c2", [val], text_field="content") == expected
    assert tokens([parquet], tmp_path / "c3", [val], text_field="content") == expected


def test_train_on_jsonl_zst_and_parquet_like_text(home: Path, tmp_path: Path) -> None:
    """`gpt train` on JSONL.zst and on Parquet, same --val and tokenizer: the same tokens as
    the directory of .txt files, so the same model."""
    val = tmp_path / "val.txt"
    val.write_text(" ".join(DOCUMENTS[:3]))
    stories = txt_dir(tmp_path / "txt", DOCUMENTS)
    (tmp_path / "a.jsonl.zst").write_bytes(zstd(jsonl(DOCUMENTS)))
    write_parquet(tmp_path / "a.parquet", DOCUMENTS)
    run("tokenize", "train", str(stories), "--char", "--name", "chars", "--quiet")
    losses = []
    for name, data in (
        ("txt", stories),
        ("zst", tmp_path / "a.jsonl.zst"),
        ("pq", tmp_path / "a.parquet"),
    ):
        result = run(
            "train",
            str(data),
            "-t",
            "chars",
            "--val",
            str(val),
            "--name",
            name,
            "--max-steps",
            "3",
            "--json",
            *TINY,
        )
        losses.append(json.loads(result.stdout)["val_loss"])
        info = json.loads((home / "models" / name / "train.json").read_text())
        assert info["data"]["train_tokens"] == len("".join(DOCUMENTS)) + 23  # 24 documents
    assert losses[0] == losses[1] == losses[2]
    described = info["data"]["files"]
    assert described[0]["format"] == "parquet" and described[0]["documents"] == len(DOCUMENTS)
    assert described[-1]["val"] is True


def test_finetune_task_text_reads_jsonl(base_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "more.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(["the cat sat on the mat. " * 20] * 10)))
    run("finetune", "tiny", str(path), "--task", "text", "--name", "ft", "--max-steps", "2", "-q")
    info = json.loads((base_home / "models/ft/train.json").read_text())
    assert info["data"]["files"][0]["documents"] == 10


def test_a_text_file_of_json_lines_is_text_with_a_warning(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "records.txt"
    path.write_bytes(jsonl(DOCUMENTS))
    result = run("train", str(path), "--tokenizer", "char", "--max-steps", "1", "--preset", "tiny")
    said = " ".join(result.stderr.split())  # as one line, however the terminal wraps it
    assert f"warning: {path}: its lines are JSON objects" in said and ".jsonl" in said


def test_finetune_task_text_warns_as_train_does(base_home: Path, tmp_path: Path) -> None:
    path = tmp_path / "records.txt"
    path.write_bytes(jsonl(["the cat sat on the mat. " * 20] * 10))
    result = run(
        "finetune", "tiny", str(path), "--task", "text", "--name", "ft", "--max-steps", "1"
    )
    said = " ".join(result.stderr.split())
    assert said.count("its lines are JSON objects") == 1
    assert f"warning: {path}: its lines are JSON objects" in said and ".jsonl" in said


def test_skip_bad_lines_counts_them(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "some-bad.jsonl"
    good = jsonl(DOCUMENTS[:5]).decode()
    path.write_text(good + '{"messages": []}\nnot json\n' + good)
    result = run(
        "train",
        str(path),
        "--skip-bad-lines",
        "--tokenizer",
        "char",
        "--max-steps",
        "1",
        "--preset",
        "tiny",
    )
    said = " ".join(result.stderr.split())
    assert f"skipped 2 bad records of {path}" in said and f"{path}:6" in said
    info = json.loads((home / "models/some-bad/train.json").read_text())
    assert info["data"]["files"][0]["skipped"] == 2


def bad_inputs(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what its one-line error must say)."""
    made: dict[str, tuple[Path, str]] = {}

    def add(name: str, data: bytes, says: str) -> None:
        path = folder / name
        path.write_bytes(data)
        made[name] = (path, says.format(path=path))

    add(
        "chat.jsonl",
        b'{"messages": [{"role": "user", "content": "hi"}], "id": 1}\n',
        '{path}:1: no "text" field (fields: messages, id)',
    )
    add(
        "number.jsonl",
        b'{"text": "ok"}\n\n{"text": 3}\n',
        '{path}:3: "text" is a number, not a string',
    )
    add("broken.jsonl", b'{"text": "ok"}\n{"text": "no end\n', "{path}:2: not valid JSON")
    add(
        "two.jsonl",
        b'{"text": "ok"}\r\n{"text": "a"} {"text": "b"}\r\n',
        "{path}:2: not valid JSON (Extra data)",
    )
    add("latin1.jsonl", '{"text": "caf\xe9"}\n'.encode("latin-1"), "{path}:1: not UTF-8")
    add("list.jsonl", b'["a", "b"]\n', "{path}:1: each record must be a JSON object")
    add(
        "cut.jsonl.gz",
        gzip.compress(jsonl(DOCUMENTS * 20))[:200],
        "{path}: truncated or corrupt gzip",
    )
    add(
        "cut.jsonl.xz",
        lzma.compress(jsonl(DOCUMENTS * 20))[:200],
        "{path}: truncated or corrupt xz",
    )
    add("cut.jsonl.zst", zstd(jsonl(DOCUMENTS * 20))[:100], "{path}: truncated zstd data")
    add("fake.gz", b"plain text, not gzip", "{path}: not gzip data")
    add("broken.parquet", b"PAR1 not really parquet", "{path}: not a readable Parquet file")
    pq_path = write_parquet(folder / "columns.parquet", ["a", "b"], field="body")
    made["columns.parquet"] = (pq_path, f'{pq_path}: no column "text" (columns: id, body)')
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), folder / "ints.parquet")
    made["ints.parquet"] = (folder / "ints.parquet", 'column "text" holds int64, not text')
    pq.write_table(pa.table({"text": ["a", None]}), folder / "null.parquet")
    made["null.parquet"] = (folder / "null.parquet", 'row 2: "text" is null')
    return made


def test_bad_input_is_one_line_naming_the_place_and_writes_nothing(
    home: Path, tmp_path: Path
) -> None:
    chars = tmp_path / "chars.txt"
    chars.write_text(CHARS)
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")
    before = snapshot(home)
    for name, (path, says) in bad_inputs(tmp_path).items():
        result = run("train", str(path), "-t", "c", "--max-steps", "1", "--preset", "tiny", code=1)
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and says in lines[-1], (name, result.stderr)
        assert [line for line in lines if line.startswith("error")] == lines[-1:]
        assert snapshot(home) == before, name


def test_a_directory_without_data_names_the_formats(home: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("x")
    result = run("train", str(tmp_path), code=1)
    assert "no training data in this directory" in result.stderr and ".jsonl" in result.stderr


def llmc_shard(path: Path, ids: list[int], version: int = 1) -> Path:
    """A shard in llm.c's format: 256 int32 of header, then the ids."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = [20240520, version, len(ids)]
    dtype = np.uint16 if version == 1 else np.uint32
    path.write_bytes(header.tobytes() + np.asarray(ids, dtype=dtype).tobytes())
    return path


def test_token_shards_train_on_their_ids(home: Path, tmp_path: Path) -> None:
    """nanoGPT's train.bin/val.bin and llm.c shards hold the ids of a directory of .txt files:
    training on them sees exactly those tokens; bits per byte is unavailable."""
    chars = tmp_path / "chars.txt"
    chars.write_text(CHARS)
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")
    val = tmp_path / "val.txt"
    val.write_text("A held-out story about a cat.")
    stories = txt_dir(tmp_path / "txt", DOCUMENTS)
    text_train, text_val = tokens([stories], tmp_path / "c1", [val])
    nanogpt = tmp_path / "nanogpt"
    nanogpt.mkdir()
    np.asarray(text_train, dtype=np.uint16).tofile(nanogpt / "train.bin")
    np.asarray(text_val, dtype=np.uint16).tofile(nanogpt / "val.bin")
    llmc = tmp_path / "llmc"
    llmc.mkdir()
    half = len(text_train) // 2
    llmc_shard(llmc / "data_train_000001.bin", text_train[:half])
    llmc_shard(llmc / "data_train_000002.bin", text_train[half:], version=2)
    llmc_shard(llmc / "data_val_000000.bin", text_val)
    losses = {}
    for name, data, val_args in (
        ("text", stories, ["--val", str(val)]),
        ("nanogpt", nanogpt / "train.bin", []),
        ("llmc", llmc, []),
    ):
        result = run(
            "train",
            str(data),
            *val_args,
            "-t",
            "c",
            "--name",
            name,
            "--max-steps",
            "3",
            "--json",
            *TINY,
        )
        losses[name] = json.loads(result.stdout)["val_loss"]
        data_info = json.loads((home / "models" / name / "train.json").read_text())["data"]
        assert (data_info["train_tokens"], data_info["val_tokens"]) == (
            len(text_train),
            len(text_val),
        )
    assert losses["text"] == losses["nanogpt"] == losses["llmc"]
    assert data_info["shards"] is True and data_info["val_bytes"] is None
    row = json.loads(run("eval", "llmc", "--json").stdout)
    assert row["bits_per_byte"] is None and row["tokens"] > 0
    table = run("eval", "nanogpt").stdout
    assert "unavailable" in table


def test_bad_token_shards(home: Path, tmp_path: Path) -> None:
    chars = tmp_path / "chars.txt"
    chars.write_text("abc")
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")
    before = snapshot(home)
    big = llmc_shard(tmp_path / "big.bin", [1, 2, 5000])
    cut = tmp_path / "cut.bin"
    cut.write_bytes(llmc_shard(tmp_path / "whole.bin", [1, 2, 3]).read_bytes()[:-2])
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"abc")
    cases = [
        ([str(big), "-t", "c"], f"{big}: token 2 is id 5,000, beyond the tokenizer's vocabulary"),
        ([str(cut), "-t", "c"], f"{cut}: truncated llm.c shard: its header says 3 tokens"),
        ([str(odd), "-t", "c"], f"{odd}: not a token shard"),
        ([str(big)], "token shards need --tokenizer NAME|PATH"),
        ([str(big), str(chars), "-t", "c"], "cannot be mixed with text"),
    ]
    for args, says in cases:
        result = run("train", *args, "--max-steps", "1", "--preset", "tiny", code=1)
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and says in lines[-1], result.stderr
        assert snapshot(home) == before, args


def test_the_tokenizer_sample_is_spread_across_a_big_corpus(home: Path, tmp_path: Path) -> None:
    """Beyond --tokenizer-sample, BPE learns from an even sample: here the corpus's halves
    differ, and merges of both halves are learned from a sample of a quarter of it."""
    from gptcli.datasources.sample import parse_size, sampled

    assert [parse_size(s) for s in ("100MB", "2G", "1KiB", "512")] == [10**8, 2 * 10**9, 1024, 512]
    units = [f"{i:04d}" * 25 for i in range(400)]  # 100 bytes each
    chosen = list(sampled(units, 40_000, 10_000))
    assert len(chosen) == 100 and chosen[:2] == [units[1], units[5]]  # every fourth unit
    assert list(sampled(units, 40_000, 40_000)) == units
    first = ["the quick brown fox jumps over the lazy dog. " * 4] * 200
    second = ["sphinx of black quartz, judge my vow! " * 4] * 200
    path = tmp_path / "halves.jsonl"
    path.write_bytes(jsonl(first + second))
    result = run(
        "tokenize",
        "train",
        str(path),
        "--name",
        "sampled",
        "--vocab-size",
        "600",
        "--tokenizer-sample",
        "20KB",
    )
    said = " ".join(result.stderr.split())
    assert "on a sample of" in said
    vocab = json.loads((home / "tokenizers/sampled/tokenizer.json").read_text())["model"]["vocab"]
    assert "Ġfox" in vocab and "Ġquartz" in vocab


def test_a_prepared_corpus_trains_like_its_data(home: Path, tmp_path: Path) -> None:
    """`gpt tokenize corpus` once; `gpt train DIR` then trains on exactly the tokens (same
    content key) that `gpt train DATA` would, and `models show` says what it saw."""
    data = tmp_path / "data.jsonl.gz"
    data.write_bytes(gzip.compress(jsonl(DOCUMENTS)))
    chars = tmp_path / "chars.txt"
    chars.write_text(CHARS)
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")
    out = tmp_path / "prepared"
    said = json.loads(
        run("tokenize", "corpus", str(data), "-t", "c", "--out", str(out), "--json").stdout
    )
    assert said["documents"] == len(DOCUMENTS)
    assert sorted(p.name for p in out.iterdir()) == [
        "corpus.json",
        "tokenizer.json",
        "train.bin",
        "val.bin",
    ]
    results = {}
    for name, source in (("direct", data), ("prepared", out)):
        args = ["train", str(source), "--name", name, "--max-steps", "3", "--json", *TINY]
        results[name] = json.loads(run(*args, *(["-t", "c"] if name == "direct" else [])).stdout)
    assert results["direct"]["val_loss"] == results["prepared"]["val_loss"]
    infos = {n: json.loads((home / "models" / n / "train.json").read_text()) for n in results}
    assert infos["direct"]["data"]["cache_key"] == infos["prepared"]["data"]["cache_key"]
    shown = json.loads(run("models", "show", "prepared", "--json").stdout)["data"]
    assert shown["prepared"] == str(out.resolve()) and shown["documents"] == len(DOCUMENTS)
    assert shown["formats"] == ["jsonl"]
    again = run("tokenize", "corpus", str(data), "-t", "c", "--out", str(out), code=1)
    assert "--force" in again.stderr
    stray = tmp_path / "stray"
    stray.mkdir()
    refused = run(
        "tokenize", "corpus", str(data), "-t", "c", "--out", str(stray), "--force", code=1
    )
    assert "not a prepared corpus" in refused.stderr


def test_two_nodes_read_one_prepared_corpus(home: Path, tmp_path: Path) -> None:
    """Two `torchrun` nodes on loopback, each with its own store, read one prepared directory
    (as over shared storage) and train the model one process trains."""
    import os
    import socket
    import subprocess
    import sys

    data = tmp_path / "data.jsonl"
    data.write_bytes(jsonl(DOCUMENTS * 20))
    chars = tmp_path / "chars.txt"
    chars.write_text(CHARS)
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")
    out = tmp_path / "prepared"
    run("tokenize", "corpus", str(data), "-t", "c", "--out", str(out), "-q")
    common = [str(out), "--max-steps", "6", "--json", "--device", "cpu", *TINY]
    single = json.loads(run("train", *common, "--name", "single").stdout)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GPTCLI_HOME": str(tmp_path / f"node{rank}")}
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            f"--node-rank={rank}",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            "-m",
            "gptcli",
            "train",
            *common,
            "--name",
            "two",
        ]
        nodes.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr[-3000:]
    lines = [line for line in outputs[0][0].splitlines() if line.startswith("{")]
    two = json.loads(lines[0])
    assert two["steps"] == single["steps"] == 6
    assert two["val_loss"] == pytest.approx(single["val_loss"], rel=2e-3)
    assert (tmp_path / "node0/models/two/model.safetensors").is_file()
    assert not list((tmp_path / "node1").rglob("*.bin"))  # nothing re-tokenized on node 1


def test_hugging_face_datasets_saved_to_disk(tmp_path: Path) -> None:
    """A dataset saved with `save_to_disk` (named hf:DIR, or the directory itself), and a
    DatasetDict's split by @SPLIT: the tokens of the directory of .txt files."""
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    saved, split = tmp_path / "saved", tmp_path / "splits"
    datasets.Dataset.from_dict({"text": DOCUMENTS, "id": list(range(len(DOCUMENTS)))}).save_to_disk(
        str(saved)
    )
    held_out = ["A held-out story about a cat."]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": DOCUMENTS}),
            "validation": datasets.Dataset.from_dict({"text": held_out}),
        }
    ).save_to_disk(str(split))
    val = tmp_path / "val.txt"
    val.write_text(held_out[0])
    expected = tokens([txt_dir(tmp_path / "txt", DOCUMENTS)], tmp_path / "c1", [val])
    assert tokens([Path(f"hf:{saved}")], tmp_path / "c2", [val]) == expected
    assert tokens([saved], tmp_path / "c3", [val]) == expected
    assert (
        tokens([Path(f"hf:{split}")], tmp_path / "c4", [Path(f"hf:{split}@validation")]) == expected
    )


def cached_dataset(cache: Path, repo: str, documents: list[str]) -> None:
    """A dataset in the `datasets` cache as if downloaded by name once (no network)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from datasets.packaged_modules.parquet.parquet import Parquet

    source = cache.parent / "source.parquet"
    pq.write_table(pa.table({"text": documents}), source)
    org, name = repo.split("/")
    builder = Parquet(
        cache_dir=str(cache), dataset_name=name, data_files={"train": str(source)}, hash="0" * 8
    )
    builder.download_and_prepare()
    (config,) = (cache / name).iterdir()
    config.rename(cache / name / "default")
    (cache / name).rename(cache / f"{org}___{name}")


def test_hugging_face_dataset_by_name_offline(home: Path, tmp_path: Path) -> None:
    """Offline, hf:ORG/NAME is read from the datasets cache (not streamed); a name that is not
    there is one line, exit 1, and nothing written."""
    import os
    import subprocess
    import sys

    pytest.importorskip("datasets")
    cache = tmp_path / "hf-datasets"
    cached_dataset(cache, "someorg/stories", DOCUMENTS)
    env = {
        **os.environ,
        "GPTCLI_HOME": str(home),
        "HF_DATASETS_CACHE": str(cache),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    val = tmp_path / "val.txt"
    val.write_text("A held-out story about a cat.")

    def gpt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gptcli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    chars = tmp_path / "chars.txt"
    chars.write_text(CHARS)
    run("tokenize", "train", str(chars), "--char", "--name", "c", "-q")  # in `home`
    trained = gpt(
        "train",
        "hf:someorg/stories",
        "--val",
        str(val),
        "-t",
        "c",
        "--name",
        "byname",
        "--max-steps",
        "1",
        *TINY,
    )
    assert trained.returncode == 0, trained.stderr
    data = json.loads((home / "models/byname/train.json").read_text())["data"]
    expected = tokens([txt_dir(tmp_path / "txt", DOCUMENTS)], tmp_path / "c1", [val])
    assert data["train_tokens"] == len(expected[0])
    assert data["files"][0]["path"] == "hf:someorg/stories"
    before = snapshot(home)
    missing = gpt("train", "hf:someorg/absent", "-t", "c", "--max-steps", "1")
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        .splitlines()[-1]
        .startswith("error: hf:someorg/absent: not in the datasets cache")
    )
    assert snapshot(home) == before


def test_a_second_run_checks_record_files_by_their_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What checking a JSONL/Parquet file found is kept by the file's hash: the second time,
    the file is hashed, not parsed (and a changed file is parsed again)."""
    from gptcli.datasources.records import RecordsReader

    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(zstd(jsonl(DOCUMENTS)))
    cache = tmp_path / "cache"
    first = read_corpus([str(path)], cache_dir=cache)
    assert len(list(cache.glob("*.scan.json"))) == 1

    def no_parsing(self: RecordsReader):  # type: ignore[no-untyped-def]
        raise AssertionError("parsed again")

    monkeypatch.setattr(RecordsReader, "batches", no_parsing)
    monkeypatch.setattr(RecordsReader, "pieces", no_parsing)
    second = read_corpus([str(path)], cache_dir=cache)
    assert [f.describe() for f in second.files] == [f.describe() for f in first.files]
    path.write_bytes(zstd(jsonl(DOCUMENTS[:3])))
    with pytest.raises(AssertionError, match="parsed again"):
        read_corpus([str(path)], cache_dir=cache)


def test_a_second_run_reuses_the_bpe_tokenizer(home: Path, tmp_path: Path) -> None:
    """A BPE tokenizer trained on some text is kept in the token cache by the text's key: the
    same text trains no new one."""
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl(DOCUMENTS))
    args = ["tokenize", "train", str(path), "--name", "t", "--vocab-size", "300", "--force"]
    first = run(*args)
    assert "training a BPE tokenizer" in first.stderr
    tokenizer = (home / "tokenizers/t/tokenizer.json").read_text()
    second = run(*args)
    assert "as trained on this text before" in " ".join(second.stderr.split())
    assert (home / "tokenizers/t/tokenizer.json").read_text() == tokenizer


def test_reading_reports_the_bytes_it_takes_from_disk(tmp_path: Path) -> None:
    """The progress display hears each pass over the data with its total, and the compressed
    bytes read, so that a bar can show bytes, rate and ETA."""
    from gptcli.datasources import progress

    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(DOCUMENTS * 50)))
    heard: list[tuple[str, int]] = []

    class Display:
        def start(self, label: str, total: int) -> None:
            heard.append((label, total))

        def advance(self, n_bytes: int) -> None:
            heard.append(("+", n_bytes))

    with progress.showing(Display()):
        texts = read_corpus([str(path)])
        build_corpus(texts, Tokenizer.train_char([CHARS]), 0.1, tmp_path / "cache")
    size = path.stat().st_size
    starts = [i for i, (label, _) in enumerate(heard) if label != "+"]
    assert [heard[i] for i in starts] == [("checking the data", size), ("tokenizing", size)]
    assert sum(n for label, n in heard[starts[0] + 1 : starts[1]]) == size
    assert sum(n for label, n in heard[starts[1] + 1 :]) == size


def test_finetune_task_text_reads_a_saved_dataset(base_home: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": ["the cat sat on the mat. " * 20] * 10}).save_to_disk(
        str(saved)
    )
    run("finetune", "tiny", f"hf:{saved}", "--task", "text", "--name", "ft", "--max-steps", "1")
    info = json.loads((base_home / "models/ft/train.json").read_text())
    assert info["data"]["files"][0]["path"] == f"hf:{saved}"
    assert info["data"]["files"][0]["documents"] == 10


@pytest.mark.parametrize(
    ("module", "name", "hint"),
    [
        ("pyarrow", "a.parquet", 'pip install "gptcli[parquet]"'),
        ("zstandard", "a.jsonl.zst", 'pip install "gptcli[zstd]"'),
        ("datasets", "hf:someorg/stories", 'pip install "gptcli[datasets]"'),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str, name: str, hint: str
) -> None:
    if name == "a.parquet":
        write_parquet(tmp_path / name, DOCUMENTS)
    elif name == "a.jsonl.zst":
        (tmp_path / name).write_bytes(zstd(jsonl(DOCUMENTS)))
    for loaded in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)  # import fails, as when not installed
    source = name if name.startswith("hf:") else str(tmp_path / name)
    result = run("train", source, "--max-steps", "1", code=1)
    assert result.stderr.strip().splitlines()[-1].endswith(hint), result.stderr
