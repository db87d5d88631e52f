"""The chat task: JSONL conversations through the chat template, loss on assistant turns only.

A line is `{"messages": [...]}` or `{"prompt": ..., "completion": ...}`. The tokenizer gains the
template's special tokens (and the model their embedding rows); the model directory gains
`chat_template.json`, which marks it as chat-tuned for `gpt chat`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli.chat import TEMPLATE_FILE, ChatTemplate, Message, add_chat_tokens, check_messages
from gptcli.data import read_jsonl
from gptcli.errors import GptError
from gptcli.tasks.base import TaskData, TaskInputs
from gptcli.tasks.examples import Example, example_batches
from gptcli.tokenizer import Tokenizer

NAME = "chat"


def recognises(files: list[Path], first: dict[str, Any] | None) -> bool:
    return first is not None and ("messages" in first or "prompt" in first)


def conversation(record: dict[str, Any], where: str) -> list[Message]:
    if "messages" in record:
        return check_messages(record["messages"], where)
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise GptError(f"{where}: needs 'messages', or string 'prompt' and 'completion'")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def chat_examples(files: list[Path], tokenizer: Tokenizer, block_size: int) -> list[Example]:
    template = ChatTemplate()
    examples = []
    for path in files:
        for number, record in read_jsonl(path):
            messages = conversation(record, f"{path}:{number}")
            ids, mask = template.render_ids(tokenizer, messages)
            ids, mask = ids[: block_size + 1], mask[: block_size + 1]
            targets = [t if m else -100 for t, m in zip(ids[1:], mask[1:], strict=True)]
            examples.append(Example(ids[:-1], targets))
    return examples


def prepare(inputs: TaskInputs) -> TaskData:
    model, tokenizer = inputs.model, inputs.tokenizer
    template = ChatTemplate()
    if not inputs.resume:
        add_chat_tokens(tokenizer, template)
    examples = chat_examples(inputs.files, tokenizer, model.config.block_size)
    if not any(t != -100 for e in examples for t in e.targets):
        raise GptError("the conversations have no assistant turns to learn from")
    model.grow_vocab(tokenizer.vocab_size)
    train, val, counts = example_batches(
        examples, inputs.cfg, inputs.device, inputs.dist, inputs.aux_lm_weight
    )
    return TaskData(
        train,
        val,
        {"files": [str(f.resolve()) for f in inputs.files]} | counts,
        extra_files={TEMPLATE_FILE: json.dumps(template.to_dict(), indent=2)},
    )
