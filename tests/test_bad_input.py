"""Every command against empty, huge, binary, non-UTF-8, malformed and out-of-range input.

Each case must print one line `error: ...` naming the problem, exit 1, and leave every file in
the store as it was. Usage errors (unknown flags, wrong types) exit 2.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLES, run, snapshot

HUGE = str(10**12)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("inputs")
    made = {
        "empty": "",
        "blank": "   \n\t\n",
        "latin1": "caf\xe9 cr\xe8me".encode("latin-1"),
        "binary": bytes(range(256)) * 8,
        "bad_jsonl": '{"text": "ok", "label": "a"}\n{oops\n',
        "no_label": '{"text": "ok"}\n',
        "bad_choice": '{"context": "a", "choices": [], "label": 0}\n',
        "label_range": '{"context": "a", "choices": ["x", "y"], "label": 5}\n',
        "text": "ordinary words for the model to read. " * 40,
    }
    paths = {}
    for name, content in made.items():
        path = folder / (
            name
            + (
                ".jsonl"
                if "jsonl" in name or name in ("no_label", "bad_choice", "label_range")
                else ".txt"
            )
        )
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        paths[name] = str(path)
    paths["missing"] = str(folder / "missing.txt")
    paths["dir"] = str(folder / "emptydir")
    Path(paths["dir"]).mkdir()
    return paths


CASES = [
    # train
    (["train", "{missing}"], "no such file"),
    (["train", "{empty}"], "empty"),
    (["train", "{blank}"], "empty"),
    (["train", "{latin1}"], "not UTF-8"),
    (["train", "{binary}"], "binary"),
    (["train", "{dir}"], "no training data in this directory"),
    (["train", "{text}", "--block-size", HUGE], "block_size"),
    (["train", "{text}", "--vocab-size", HUGE], "--vocab-size"),
    (["train", "{text}", "--batch-size", HUGE], "--batch-size"),
    (["train", "{text}", "--dropout", "1.5"], "dropout"),
    (["train", "{text}", "--max-time", "-5s"], "duration"),
    (["train", "{text}", "--save-every", "0"], "--save-every"),
    (["train", "{text}", "--name", ""], "invalid name"),
    (["train", "{text}", "--name", "tiny"], "already exists"),
    (["train", "{text}", "--name", "tiny", "--resume", "--force"], "do not go together"),
    # finetune
    (["finetune", "tiny", "{bad_jsonl}", "--name", "x"], "bad_jsonl.jsonl:2"),
    (["finetune", "tiny", "{no_label}", "--name", "x", "--task", "classify"], "'label'"),
    (["finetune", "tiny", "{latin1}", "--name", "x"], "not UTF-8"),
    (["finetune", "tiny", "{text}", "--name", "x", "--aux-lm-weight", "-1"], "aux-lm-weight"),
    (["finetune", "missing-model", "{text}", "--name", "x"], "unknown model"),
    # generate and chat
    (["generate", "hi", "--temperature", "-1"], "--temperature"),
    (["generate", "hi", "--top-p", "2"], "--top-p"),
    (["generate", "hi", "--num-samples", "0"], "--num-samples"),
    (["generate", "hi", "--repetition-penalty", "0"], "--repetition-penalty"),
    (["chat", "-m", "missing-model"], "unknown model"),
    (["chat", "--temperature", "-2"], "--temperature"),
    # eval and classify
    (["eval", "--data", "{binary}"], "binary"),
    (["eval", "--data", "{missing}"], "no such file"),
    (["eval", "--stride", "0"], "--stride"),
    (["eval", "--task", "choice"], "--data"),
    (["eval", "--task", "choice", "--data", "{bad_choice}"], "bad_choice.jsonl:1"),
    (["eval", "--task", "choice", "--data", "{label_range}"], "label_range.jsonl:1"),
    (["eval", "--task", "classify", "--data", "{bad_jsonl}"], "not a classifier"),
    (["classify", "hello"], "not a classifier"),
    # tokenize and models
    (["tokenize", "train", "{empty}", "--name", "t"], "empty"),
    (["tokenize", "train", "{text}", "--name", "t", "--vocab-size", "5"], "--vocab-size"),
    (["tokenize", "encode", "hi", "-t", "missing-tokenizer"], "unknown tokenizer"),
    (["tokenize", "decode", "99999999", "-m", "tiny"], "out of range"),
    (["models", "show", "missing-model"], "unknown model"),
    (["models", "rm", "../etc"], "invalid name"),
    (["models", "import", "{dir}", "--name", "x"], "config.json"),
    (["models", "export", "tiny", "{dir}/tiny.gguf"], "llama.cpp has no architecture"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    trained: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    args: list[str],
    message: str,
) -> None:
    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    before = snapshot(home)
    result = run(*(a.format(**files) for a in args), code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert snapshot(home) == before


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--max-steps", "many", "x.txt"],
        ["generate", "--top-k", "1.5"],
        ["eval", "--no-such-flag"],
        ["models", "frobnicate"],
    ],
)
def test_usage_errors_exit_2(home: Path, args: list[str]) -> None:
    result = run(*args, code=2)
    assert "Traceback" not in result.output


def test_examples_parse(home: Path) -> None:
    """The bundled JSONL sets are valid for their tasks (a guard for edits to examples/)."""
    from gptcli.data import read_jsonl
    from gptcli.evaluate import read_choice_file
    from gptcli.tasks.classify import read_labelled

    assert len(read_labelled([EXAMPLES / "sentiment.jsonl"])) == 120
    assert len(read_choice_file(EXAMPLES / "choice.jsonl")) == 30
    assert len(list(read_jsonl(EXAMPLES / "chat.jsonl"))) == 60
