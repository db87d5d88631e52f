"""Tokenizers round-trip any Unicode exactly, and streamed decoding never splits a character."""

from __future__ import annotations

import pytest

from gptcli.inference.text import TextStream
from gptcli.tokenizer import StreamDecoder, Tokenizer, iter_chunks

SAMPLES = [
    "Once upon a time, a fox counted the stars.\n\nThe end.",
    "emoji 😀🦊👩‍👩‍👧 and flags 🇫🇷",
    "漢字とかな、한국어, 古文觀止：天下之大",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937",
    "tabs\tand  spaces   \r\n windows line \u00a0nbsp \u200b zero-width",
    "<|endoftext|> special in the middle <|endoftext|>",
    "",
]
TRAINING_TEXT = "\n".join(SAMPLES[:4]) + "\nplain words repeat plain words repeat " * 20


@pytest.fixture(scope="module", params=["bpe", "char"])
def tokenizer(request: pytest.FixtureRequest) -> Tokenizer:
    if request.param == "bpe":
        return Tokenizer.train_bpe([TRAINING_TEXT], vocab_size=300)
    return Tokenizer.train_char([TRAINING_TEXT])


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unseen_characters_round_trip(tokenizer: Tokenizer) -> None:
    text = "Ωμέγα ✓ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 never seen in training"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_is_one_id(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("a<|endoftext|>b")
    assert tokenizer.eot_id in ids


def test_save_and_load_identical(tokenizer: Tokenizer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "tokenizer.json"
    path.write_text(tokenizer.to_json())
    loaded = Tokenizer.load(path)
    assert loaded.kind == tokenizer.kind and loaded.digest == tokenizer.digest
    assert loaded.encode(SAMPLES[1]) == tokenizer.encode(SAMPLES[1])


@pytest.mark.parametrize("text", SAMPLES[:5])
def test_stream_decoder_matches_full_decode(tokenizer: Tokenizer, text: str) -> None:
    decoder = StreamDecoder(tokenizer)
    pieces = [decoder.push(i) for i in tokenizer.encode(text)]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


def test_text_stream_never_shows_a_stop_string(tokenizer: Tokenizer) -> None:
    stream = TextStream(tokenizer, ["\nUser:", "😀"])
    pieces = []
    for token in tokenizer.encode("emoji and\nUse more\nUser: hidden"):
        pieces.append(stream.push(token))
        assert "\nUser" not in "".join(pieces)
    assert stream.stopped and stream.flush() == ""
    assert "".join(pieces) == "emoji and\nUse more"
    unfinished = TextStream(tokenizer, ["\nUser:"])
    pieces = [unfinished.push(t) for t in tokenizer.encode("ends in\nUs")]
    assert "".join(pieces) == "ends in" and unfinished.flush() == "\nUs"
    assert not unfinished.stopped


def test_chunks_cover_text_and_keep_bpe_tokens() -> None:
    text = ("word " * 50 + "\n\n  indented\n") * 200
    chunks = list(iter_chunks(text, size=300))
    assert "".join(chunks) == text and len(chunks) > 10
    tok = Tokenizer.train_bpe([text], vocab_size=300)
    whole = tok.encode(text)
    assert [i for chunk in tok.encode_batch(chunks) for i in chunk] == whole


def test_char_vocabulary_is_characters_plus_bytes() -> None:
    tok = Tokenizer.train_char(["abcab"])
    assert tok.kind == "char"
    assert tok.vocab_size == 3 + 256 + 1
    assert tok.encode("abc") == [0, 1, 2]


@pytest.mark.parametrize("text", SAMPLES)
def test_token_bytes_join_to_the_text(tokenizer: Tokenizer, text: str) -> None:
    # bits per byte count the bytes of the scored tokens; they must add up to the text's
    ids = tokenizer.encode(text)
    joined = b"".join(tokenizer.token_bytes(i) for i in ids)
    assert joined == text.replace("<|endoftext|>", "").encode()
    if tokenizer.eot_id is not None:
        assert tokenizer.token_bytes(tokenizer.eot_id) == b""
