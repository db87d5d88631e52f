"""A Chinese corpus works as an English one does: classical prose from SHARED_DATA."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import SHARED_DATA, TINY, run

from gptcli.tokenizer import StreamDecoder, Tokenizer, iter_chunks

GUWEN = SHARED_DATA / "guwenguanzhi.txt"
pytestmark = pytest.mark.shared_data("guwenguanzhi.txt")


@pytest.fixture(scope="module")
def guwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 10,000 characters (about 30 KB of UTF-8, three bytes a character)."""
    text = GUWEN.read_text(encoding="utf-8")[:10_000]
    path = tmp_path_factory.mktemp("guwen") / "guwen.txt"
    path.write_text(text, encoding="utf-8")
    return path


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_chinese_trains_streams_and_measures(home: Path, guwen: Path, tokenizer: str) -> None:
    extra = ["--vocab-size", "1024"] if tokenizer == "bpe" else []
    run("train", str(guwen), "--name", "guwen", "--tokenizer", tokenizer, "--max-steps", "60",
        *extra, *TINY)  # fmt: skip
    info = json.loads((home / "models/guwen/train.json").read_text())
    history = info["history"]
    assert history[-1]["val_loss"] < history[0]["val_loss"] - 0.5

    # greedy text streams whole characters: no U+FFFD from a character cut between tokens
    streamed = run("generate", "鄭伯", "-n", "30", "--temperature", "0").stdout
    assert streamed.startswith("鄭伯") and len(streamed) > 12 and "\ufffd" not in streamed
    as_json = json.loads(run("generate", "鄭伯", "-n", "30", "--temperature", "0", "--json").stdout)
    assert streamed == "鄭伯" + as_json["text"] + "\n"
    # a character the corpus never had still round-trips (byte fallback, byte-level BPE)
    assert run("generate", "龘", "-n", "3", "--temperature", "0").stdout.startswith("龘")

    row = json.loads(run("eval", "--json").stdout)
    vocab = json.loads((home / "models/guwen/config.json").read_text())["vocab_size"]
    uniform = math.log2(vocab) * row["tokens"] / row["bytes"]  # bits/byte of a blind guess
    assert row["bytes"] > 2 * row["tokens"]  # about three bytes a character
    assert 0.5 < row["bits_per_byte"] < uniform - 0.3
    shown = json.loads(run("models", "show", "--json").stdout)
    assert shown["tokenizer"] == tokenizer and shown["data"]["bytes"] == guwen.stat().st_size


def test_streaming_never_splits_a_chinese_character(guwen: Path) -> None:
    text = guwen.read_text(encoding="utf-8")
    tok = Tokenizer.train_bpe(iter_chunks(text), 600)
    sample = text[:3000]
    ids = tok.encode(sample)
    # with few merges, many characters are two or three byte tokens
    assert sum(not is_utf8(tok.token_bytes(i)) for i in ids) > 100
    stream = StreamDecoder(tok)
    pieces = [stream.push(i) for i in ids] + [stream.flush()]
    assert "".join(pieces) == sample
    assert not any("\ufffd" in piece for piece in pieces)


def test_char_tokenizer_keeps_each_character_one_token(guwen: Path) -> None:
    text = guwen.read_text(encoding="utf-8")
    tok = Tokenizer.train_char(iter_chunks(text))
    ids = tok.encode(text[:500])
    assert len(ids) == 500 and tok.decode(ids) == text[:500]
    assert b"".join(tok.token_bytes(i) for i in ids) == text[:500].encode()
