"""`gpt tokenize train|encode|decode`: build and inspect tokenizers."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from gptcli.cli.console import err, info, no_color, out, print_json
from gptcli.cli.options import complete_model_name
from gptcli.cli.trainflags import (
    SkipBadLines,
    TextField,
    TokenizerSample,
    Val,
    read_options,
    sample_size,
)
from gptcli.cli.usage import Command, Group
from gptcli.errors import GptError

if TYPE_CHECKING:
    from gptcli.tokenizer import Tokenizer

app = typer.Typer(
    help="Train a tokenizer, or see how text turns into tokens and back.\n\n"
    "Example: echo 'Once upon a time' | gpt tokenize encode -m stories",
    no_args_is_help=True,
    cls=Group,
)

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Use this model's tokenizer.", autocompletion=complete_model_name
    ),
]
TokenizerOption = Annotated[
    str | None,
    typer.Option("--tokenizer", "-t", help="A stored tokenizer name or a tokenizer.json path."),
]


def load_tokenizer(model: str | None, tokenizer: str | None) -> Tokenizer:
    from gptcli.store import ModelStore
    from gptcli.tokenizer import Tokenizer

    store = ModelStore()
    if model and tokenizer:
        raise GptError("give either -m MODEL or -t TOKENIZER, not both")
    if tokenizer:
        return Tokenizer.load(store.tokenizer_path(tokenizer))
    from gptcli import hf

    path = store.resolve(model)
    if hf.is_hf_dir(path):
        return hf.read_hf_tokenizer(path)
    return Tokenizer.load(path / "tokenizer.json")


@app.command(
    "train",
    cls=Command,
    help="Train a tokenizer on text (any format `gpt train` reads) and store it.\n\n"
    "Example: gpt tokenize train examples/stories --vocab-size 1024 --name stories",
)
def train_cmd(
    inputs: Annotated[list[str], typer.Argument(metavar="FILE_OR_DIR...")],
    name: Annotated[str, typer.Option(help="Name in the store.")],
    vocab_size: Annotated[
        int | None, typer.Option(help="BPE vocabulary size (default: suited to the corpus).")
    ] = None,
    char: Annotated[bool, typer.Option("--char", help="One token per character.")] = False,
    tokenizer_sample: TokenizerSample = None,
    text_field: TextField = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a tokenizer of the same name.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr.")] = False,
) -> None:
    from gptcli.data import read_corpus
    from gptcli.pretrain import prepare_tokenizer
    from gptcli.store import ModelStore, check_name, write_text_atomic

    store = ModelStore()
    target = store.tokenizers_dir / check_name(name) / "tokenizer.json"
    if target.exists() and not force:
        raise GptError(f"a tokenizer named {name!r} already exists (use --force to replace it)")
    if char and vocab_size is not None:
        raise GptError("--vocab-size does not apply to --char")
    choice = "char" if char else "bpe"
    log = lambda m: info(m, quiet)  # noqa: E731
    texts = read_corpus(inputs, read_options(text_field, False))
    tok = prepare_tokenizer(choice, vocab_size, texts, store, log, sample_size(tokenizer_sample))
    write_text_atomic(target, tok.to_json())
    summary = {"name": name, "kind": tok.kind, "vocab_size": tok.vocab_size, "path": str(target)}
    if json_out:
        print_json(summary)
    else:
        typer.echo(f"saved tokenizer {name}: {tok.kind}, {tok.vocab_size} tokens")


@app.command(
    "corpus",
    cls=Command,
    help="Tokenize training data once into a directory that `gpt train DIR` reads directly.\n\n"
    "The directory holds token shards, the tokenizer, and corpus.json saying what was read.\n\n"
    "Example: gpt tokenize corpus data/*.jsonl.zst -t stories --out prepared/",
)
def corpus_cmd(
    inputs: Annotated[list[str], typer.Argument(metavar="FILE_OR_DIR...")],
    out: Annotated[str, typer.Option("--out", metavar="DIR", help="The directory to write.")],
    tokenizer: Annotated[
        str, typer.Option("--tokenizer", "-t", help="A stored tokenizer or a tokenizer.json.")
    ],
    val: Val = None,
    val_fraction: Annotated[
        float, typer.Option(help="Fraction held out for validation, from the end.")
    ] = 0.1,
    text_field: TextField = None,
    skip_bad_lines: SkipBadLines = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a prepared corpus in DIR.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON summary on stdout.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No messages on stderr.")] = False,
) -> None:
    from pathlib import Path

    from gptcli.data import read_corpus
    from gptcli.prepared import write_prepared
    from gptcli.store import ModelStore
    from gptcli.tokenizer import Tokenizer

    if not 0.0 <= val_fraction < 1.0:
        raise GptError("--val-fraction must be in [0, 1)")
    tok = Tokenizer.load(ModelStore().tokenizer_path(tokenizer))
    texts = read_corpus(inputs, read_options(text_field, skip_bad_lines), val)
    for warning in texts.warnings:
        info(warning, quiet)
    meta = write_prepared(texts, tok, val_fraction, Path(out).expanduser(), force)
    summary = {"path": str(Path(out).expanduser().resolve())} | {
        k: meta[k] for k in ("documents", "bytes", "tokens", "key")
    }
    if json_out:
        print_json(summary)
    else:
        tokens = meta["tokens"]
        typer.echo(
            f"prepared {out}: {meta['documents']:,} documents, {tokens['train']:,} training "
            f"and {tokens['val']:,} validation tokens"
        )


@app.command(
    "encode",
    cls=Command,
    help="Text -> token ids (stdin when no text is given).\n\n"
    "Example: gpt tokenize encode 'Once upon a time' -m stories --json",
)
def encode_cmd(
    text: Annotated[
        str | None, typer.Argument(help="Text to encode ('-' or omitted: stdin).")
    ] = None,
    model: ModelOption = None,
    tokenizer: TokenizerOption = None,
    ids_only: Annotated[bool, typer.Option("--ids", help="Print only the ids.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON with ids and pieces.")] = False,
) -> None:
    from gptcli.cli.options import read_prompt

    tok = load_tokenizer(model, tokenizer)
    source = read_prompt(text)
    ids = tok.encode(source)
    if json_out:
        print_json({"ids": ids, "tokens": tok.pieces(ids), "count": len(ids)})
        return
    if ids_only or not out.is_terminal:
        typer.echo(" ".join(map(str, ids)))
        return
    from rich.text import Text

    view = Text()
    colours = ("on blue", "on magenta", "on dark_green", "on dark_orange3")
    for i, piece in enumerate(shown_pieces(tok, ids)):
        if i and no_color():  # without colours, a bar shows where one token ends
            view.append("|")
        view.append(piece.replace("\n", "\\n\n"), style=colours[i % len(colours)])
    out.print(view)
    err.print(f"[dim]{len(ids)} tokens: {' '.join(map(str, ids))}[/dim]")


def shown_pieces(tok: Tokenizer, ids: list[int]) -> list[str]:
    """Each token's text, with the bytes of a partial character (a multi-byte character split
    between tokens, as in Chinese with BPE) written \\xNN instead of U+FFFD."""
    pieces = []
    for token_id, piece in zip(ids, tok.pieces(ids), strict=True):
        raw = tok.token_bytes(token_id)
        pieces.append(raw.decode("utf-8", errors="backslashreplace") if raw else piece)
    return pieces


@app.command(
    "decode",
    help="Token ids -> text.\n\nExample: gpt tokenize decode 12 7 42 -m stories",
    cls=Command,
)
def decode_cmd(
    ids: Annotated[list[str] | None, typer.Argument(help="Token ids (stdin when omitted).")] = None,
    model: ModelOption = None,
    tokenizer: TokenizerOption = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON with the text.")] = False,
) -> None:
    from gptcli.cli.options import read_prompt

    tok = load_tokenizer(model, tokenizer)
    words = ids if ids else read_prompt(None).replace(",", " ").split()
    try:
        values = [int(w) for w in words]
    except ValueError:
        raise GptError("token ids must be whole numbers") from None
    bad = [v for v in values if not 0 <= v < tok.vocab_size]
    if bad:
        raise GptError(f"token id {bad[0]} is out of range (vocabulary: 0..{tok.vocab_size - 1})")
    text = tok.decode(values)
    if json_out:
        print_json({"text": text, "count": len(values)})
    else:
        sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
