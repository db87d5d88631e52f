"""Training inputs: an end-of-text token between files, glob patterns expanded to their files."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TINY, run

from gptcli.data import build_corpus, read_corpus
from gptcli.tokenizer import EOT, Tokenizer


def three_files(tmp_path: Path) -> Path:
    folder = tmp_path / "texts"
    folder.mkdir()
    for name, text in (("a.txt", "aaaa aa"), ("b.txt", "bbb b"), ("c.txt", "cc cccc")):
        (folder / name).write_text(text)
    (folder / "notes.md").write_text("zzzz")  # not matched by *.txt
    return folder


def test_an_end_of_text_token_at_each_file_boundary(tmp_path: Path) -> None:
    folder = three_files(tmp_path)
    texts = read_corpus([str(folder / "*.txt")])
    assert [f.path.name for f in texts.files] == ["a.txt", "b.txt", "c.txt"]
    tokenizer = Tokenizer.train_char(["abcz "])
    corpus = build_corpus(texts, tokenizer, 0.0, tmp_path / "cache")
    ids = [int(t) for t in corpus.train.tokens]
    assert ids.count(tokenizer.eot_id) == 2
    assert tokenizer.decode(ids) == f"aaaa aa{EOT}bbb b{EOT}cc cccc"


def test_train_takes_a_glob(home: Path, tmp_path: Path, corpus: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    text = corpus.read_text()
    for i in range(3):
        (folder / f"part{i}.txt").write_text(text[i * 5000 : (i + 1) * 5000])
    (folder / "skip.md").write_text(text[:5000])
    run(
        "train",
        str(folder / "part*.txt"),
        "--tokenizer",
        "char",
        "--max-steps",
        "2",
        "--name",
        "glob",
        *TINY,
    )
    info = json.loads((home / "models/glob/train.json").read_text())
    files = [Path(f["path"]).name for f in info["data"]["files"]]
    assert files == ["part0.txt", "part1.txt", "part2.txt"]
    data = info["data"]
    # one token a character (the text is ASCII) and one end-of-text at each of two boundaries
    assert text[:15000].isascii()
    assert data["train_tokens"] + data["val_tokens"] == 15000 + 2
