"""A prepared corpus: the corpus tokenized once, into a directory any run can read.

`gpt tokenize corpus DATA... -t TOKENIZER --out DIR` writes `train.bin` and `val.bin` (llm.c
shards), the tokenizer (`tokenizer.json`) and `corpus.json`: what was read (files, documents,
bytes), the split, and the same content key the token cache would use, so that `gpt train DIR`
trains on exactly the tokens `gpt train DATA...` would, without reading text again; on every
node of a `torchrun` run over shared storage, each process maps the shards it needs. The
directory appears whole or not at all. Reading it is `datasources.shards`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli.data import Texts, corpus_key, encode_corpus
from gptcli.datasources.shards import PREPARED, open_shard
from gptcli.errors import GptError
from gptcli.store import ModelStore, write_json_atomic, write_text_atomic
from gptcli.tokenizer import Tokenizer

FORMAT = "gptcli-corpus"


def write_prepared(
    texts: Texts, tokenizer: Tokenizer, val_fraction: float, out: Path, force: bool
) -> dict[str, Any]:
    """Tokenizes `texts` into `out`; returns its description (corpus.json)."""
    if out.exists():
        if not (out / PREPARED).is_file():
            raise GptError(f"{out}: exists and is not a prepared corpus; choose another --out")
        if not force:
            raise GptError(f"{out}: a prepared corpus is already there (--force replaces it)")
    key, described = corpus_key(texts, tokenizer, val_fraction)
    with ModelStore().staged(out, force) as staging:
        paths = {side: staging / f"{side}.bin" for side in ("train", "val")}
        n_bytes = encode_corpus(texts, tokenizer, val_fraction, paths, header=True)
        write_text_atomic(staging / "tokenizer.json", tokenizer.to_json())
        meta = {
            "format": FORMAT,
            "version": 1,
            "key": key,
            "tokenizer": {
                "kind": tokenizer.kind,
                "vocab_size": tokenizer.vocab_size,
                "sha256": tokenizer.digest,
            },
            "documents": texts.documents + sum(f.documents for f in texts.val_files),
            "bytes": n_bytes,
            "tokens": {side: open_shard(path).n_tokens for side, path in paths.items()},
            "val_fraction": None if texts.val_files else val_fraction,
            "files": described,
            "shards": {side: [path.name] for side, path in paths.items()},
        }
        write_json_atomic(staging / PREPARED, meta)
        readable(staging)
    return meta


def readable(folder: Path) -> None:
    """Files as the umask allows (staged files are private): other users and nodes read them."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)
