"""Chat fine-tuning: the loss is taken on the assistant's turns only, and the new chat tokens'
rows start at the mean of the old rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run
from safetensors.torch import load_file

from gptcli.chat import add_chat_tokens
from gptcli.tasks.chat import chat_examples
from gptcli.tokenizer import Tokenizer

CONVERSATION = {
    "messages": [
        {"role": "system", "content": "be kind"},
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "and now"},
        {"role": "assistant", "content": "bye now"},
    ]
}


def test_chat_targets_are_the_assistant_turns_only(tmp_path: Path) -> None:
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(CONVERSATION) + "\n")
    tokenizer = Tokenizer.train_char(["abcdefghijklmnopqrstuvwxyz \n"])
    add_chat_tokens(tokenizer)
    (example,) = chat_examples([data], tokenizer, block_size=200)
    assert len(example.targets) == len(example.ids)
    # target i is token i+1 where it is trained
    assert all(t in (-100, n) for t, n in zip(example.targets, [*example.ids[1:], -1], strict=True))
    trained = [t for t in example.targets if t != -100]
    assert tokenizer.decode(trained) == "hello<|end|>bye now<|end|>"


def test_new_chat_token_rows_start_at_the_mean(
    trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    home = tmp_path / "store"
    shutil.copytree(trained["home"], home)
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps(CONVERSATION) + "\n")
    # one step at a vanishing learning rate: the rows are (almost exactly) where they started
    run(
        "finetune",
        "tiny",
        str(data),
        "--name",
        "talk",
        "--max-steps",
        "1",
        "--lr",
        "1e-12",
        "--muon-lr",
        "1e-12",
        "--batch-size",
        "1",
        "--quiet",
    )
    base = load_file(str(home / "models/tiny/model.safetensors"))
    tuned = load_file(str(home / "models/talk/model.safetensors"))
    for key in ("transformer.wte.weight", "lm_head.weight"):
        old = base[key]
        new = tuned[key]
        assert new.shape[0] == old.shape[0] + 4
        mean = old.mean(0)
        for row in new[old.shape[0] :]:
            torch.testing.assert_close(row, mean, atol=1e-6, rtol=0)
        assert not torch.allclose(old[0], mean, atol=1e-3)  # the mean is no ordinary row
        torch.testing.assert_close(new[: old.shape[0]], old, atol=1e-6, rtol=0)
