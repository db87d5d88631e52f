"""`gpt finetune`: a stored model trained further on text, conversations or labelled texts.

The same loop as `gpt train` (`train.train_model`). BASE is never modified: the result is a new
model in the store. Tasks:
- text: more plain text with the base's tokenizer (domain adaptation);
- chat: JSONL conversations through the chat template, loss on assistant turns only;
- classify: JSONL {"text", "label"}, GPT-1 style: a linear head on the last token (an appended
  `<|classify|>` token), loss = classification + aux_lm_weight x LM loss on the same text.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gptcli.config import TrainConfig
from gptcli.data import Batches, build_corpus, find_text_files, read_corpus, read_jsonl
from gptcli.errors import GptError
from gptcli.monitor import monitor_for, new_run_id, prompt_from
from gptcli.store import ModelStore
from gptcli.tokenizer import Tokenizer
from gptcli.train import (
    CheckpointWriter,
    Distributed,
    TrainObserver,
    TrainState,
    make_optimizers,
    micro_batch_size,
    model_lock,
    overrides,
    pick_device,
    run_and_store,
)

TASKS = ("text", "chat", "classify")
CLASSIFY_TOKEN = "<|classify|>"
# Fine-tuning moves a trained model gently: lower learning rates, a short warmup.
FINETUNE_DEFAULTS: dict[str, Any] = {
    "lr": 3e-4,
    "muon_lr": 0.005,
    "warmup_steps": 10,
    "max_steps": 300,
    "eval_every": 50,
    "cooldown": 0.3,
}


@dataclass
class FinetuneRequest:
    base: str
    inputs: list[str]
    name: str
    cfg: TrainConfig
    task: str | None = None  # None: from the data (.txt -> text, JSONL -> by its keys)
    lora_rank: int | None = None
    aux_lm_weight: float = 0.5
    force: bool = False
    resume: bool = False
    config: dict[str, Any] | None = None  # the command's settings, as --print-config shows them


def detect_task(files: list[Path]) -> str:
    """text for .txt data; for JSONL, chat if lines hold messages/prompt, classify if labels."""
    if all(f.suffix != ".jsonl" for f in files):
        return "text"
    for _, record in read_jsonl(files[0]):
        if "messages" in record or "prompt" in record:
            return "chat"
        if "label" in record:
            return "classify"
        break
    raise GptError(f"{files[0]}: cannot tell the task from its lines: pass --task chat|classify")


def conversation(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    from gptcli.chat import check_messages

    if "messages" in record:
        return check_messages(record["messages"], where)
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str):
        raise GptError(f"{where}: needs 'messages', or string 'prompt' and 'completion'")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


@dataclass
class Example:
    ids: list[int]
    targets: list[int]  # next-token targets, -100 where not trained
    cls_position: int | None = None
    label: int | None = None


def chat_examples(files: list[Path], tokenizer: Tokenizer, block_size: int) -> list[Example]:
    from gptcli.chat import ChatTemplate

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


def read_labelled(files: list[Path]) -> list[tuple[str, str, str]]:
    """(text, label, "file:line") for each line {"text": ..., "label": ...}."""
    records = []
    for path in files:
        for number, record in read_jsonl(path):
            text, label = record.get("text"), record.get("label")
            if not isinstance(text, str) or not text:
                raise GptError(f"{path}:{number}: needs a non-empty string 'text'")
            if not isinstance(label, (str, int)) or isinstance(label, bool):
                raise GptError(f"{path}:{number}: needs a 'label' (a string)")
            records.append((text, str(label), f"{path}:{number}"))
    if not records:
        raise GptError("no labelled lines in " + ", ".join(str(f) for f in files))
    return records


def classify_examples(
    files: list[Path], tokenizer: Tokenizer, block_size: int, labels: list[str] | None = None
) -> tuple[list[Example], list[str]]:
    """Labelled texts -> examples; the label set is given (resume) or taken from the data."""
    records = read_labelled(files)
    labels = labels or sorted({label for _, label, _ in records})
    if len(labels) < 2:
        raise GptError("classification needs at least two different labels in the data")
    index = {label: i for i, label in enumerate(labels)}
    cls_id = classify_token_id(tokenizer)
    examples = []
    for text, label, where in records:
        if label not in index:
            raise GptError(f"{where}: label {label!r} is not one of the model's labels")
        ids = classify_ids(tokenizer, text, block_size, cls_id)
        targets = [*ids[1:-1], -100]  # the LM does not learn to predict the classify token
        examples.append(Example(ids, targets, len(ids) - 1, index[label]))
    return examples, labels


def classify_token_id(tokenizer: Tokenizer) -> int:
    token = tokenizer.hf.token_to_id(CLASSIFY_TOKEN)
    if token is None:
        raise GptError(f"the tokenizer has no {CLASSIFY_TOKEN} token: not a classifier model")
    return token


def classify_ids(tokenizer: Tokenizer, text: str, block_size: int, cls_id: int) -> list[int]:
    """The text's ids (their last block_size - 1) followed by the classify token."""
    return [*tokenizer.encode(text)[-(block_size - 1) :], cls_id]


class ExampleBatches:
    """Random batches of whole examples, padded on the right (padding is never scored)."""

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        device: torch.device,
        seed: int,
        rank: int = 0,
        world: int = 1,
        aux_lm_weight: float = 0.5,
    ) -> None:
        if not examples:
            raise GptError("no training examples in the data")
        self.examples = examples
        self.batch_size = batch_size
        self.block_size = max(len(e.ids) for e in examples)
        self.device = device
        self.rank, self.world = rank, world
        self.aux_lm_weight = aux_lm_weight
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, generator: torch.Generator | None = None) -> dict[str, Any]:
        picks = torch.randint(
            len(self.examples),
            (self.batch_size * self.world,),
            generator=generator or self.generator,
        )
        mine = picks[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        return self.collate([self.examples[int(i)] for i in mine])

    def collate(self, chosen: list[Example]) -> dict[str, Any]:
        length = max(len(e.ids) for e in chosen)
        idx = np.zeros((len(chosen), length), dtype=np.int64)
        targets = np.full((len(chosen), length), -100, dtype=np.int64)
        for row, e in enumerate(chosen):
            idx[row, : len(e.ids)] = e.ids
            targets[row, : len(e.targets)] = e.targets
        batch: dict[str, Any] = {
            "idx": torch.from_numpy(idx).to(self.device),
            "targets": torch.from_numpy(targets).to(self.device),
        }
        if chosen[0].label is not None:
            batch["cls_positions"] = torch.tensor(
                [e.cls_position for e in chosen], device=self.device
            )
            batch["labels"] = torch.tensor([e.label for e in chosen], device=self.device)
            batch["aux_lm_weight"] = self.aux_lm_weight
        return batch

    def fixed(self, count: int, seed: int) -> Iterator[dict[str, Any]]:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(count):
            yield self.sample(generator)


def split_examples(examples: list[Example], val_fraction: float) -> tuple[list, list]:
    """The last val_fraction of the examples (at least one, when there are a few) for validation."""
    n_val = int(len(examples) * val_fraction)
    if val_fraction > 0 and n_val == 0 and len(examples) >= 5:
        n_val = 1
    if n_val == 0:
        return examples, []
    return examples[:-n_val], examples[-n_val:]


def add_classifier(model: nn.Module, labels: list[str]) -> None:
    model.config.labels = list(labels)
    head = nn.Linear(model.config.n_embd, len(labels))
    nn.init.normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    model.classifier = head.to(next(model.parameters()))


def finetune(
    request: FinetuneRequest,
    store: ModelStore,
    observer: TrainObserver | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Holds the new model's lock around `run_finetune`."""
    with model_lock(store, request.name, "gpt finetune"):
        return run_finetune(request, store, observer, log)


def run_finetune(
    request: FinetuneRequest,
    store: ModelStore,
    observer: TrainObserver | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Loads BASE, adapts it to the task, trains it with the common loop, stores it as NAME."""
    from gptcli.chat import ChatTemplate, add_chat_tokens
    from gptcli.checkpoint import load_model, load_train_state
    from gptcli.lora import apply_lora

    dist = Distributed()
    cfg = request.cfg
    aux_lm_weight = request.aux_lm_weight
    base_dir = store.resolve(request.base)
    target = store.model_dir(request.name)
    if target.resolve() == base_dir.resolve():
        raise GptError("--name must differ from the base model: the base is never modified")
    exists = store.exists(request.name)
    if request.resume and not exists:
        raise GptError(f"no model named {request.name!r} to resume (drop --resume to start one)")
    if exists and not (request.force or request.resume):
        raise GptError(
            f"a model named {request.name!r} already exists "
            "(use --resume to continue it, or --force to replace it)"
        )
    if request.resume and request.lora_rank:
        raise GptError("--resume is not supported with --lora (adapters are merged when saved)")
    if request.lora_rank is not None and request.lora_rank < 1:
        raise GptError("--lora must be at least 1")
    files = find_text_files(request.inputs)
    task = request.task or detect_task(files)
    if task not in TASKS:
        raise GptError(f"unknown task {task!r} (choose from {', '.join(TASKS)})")
    device = dist.setup(pick_device(cfg.device))
    loaded = load_model(target if request.resume else base_dir, device)
    model, tokenizer = loaded.model, loaded.tokenizer
    info = loaded.info if request.resume else {}
    if request.resume:  # the stored run's settings and budget, unless a new budget is given
        stored = info.get("train", {})
        cfg = TrainConfig.from_dict({**stored, **overrides(request.cfg)})
        aux_lm_weight = stored.get("aux_lm_weight", aux_lm_weight)
    else:  # the classifier head and new token rows start the same in every process
        torch.manual_seed(cfg.seed)
    block_size = model.config.block_size
    extra_files: dict[str, str] = {}
    data_info: dict[str, Any] = {"files": [str(f.resolve()) for f in files]}

    sample_prompt = None  # samples while training: plain text only
    if task == "text":
        texts = read_corpus([str(f) for f in files])
        corpus = build_corpus(texts, tokenizer, cfg.val_fraction, store.data_dir)
        if len(corpus.train.tokens) < 2:
            raise GptError("the fine-tuning text is too small (fewer than 2 tokens)")
        train_batches: Any = Batches(
            corpus.train.tokens,
            micro_batch_size(cfg, dist),
            block_size,
            device,
            cfg.seed,
            dist.rank,
            dist.world,
        )
        val_batches: Any = None
        if len(corpus.val.tokens) >= 2:
            val_batches = Batches(
                corpus.val.tokens, cfg.batch_size, block_size, device, cfg.seed + 1
            )
        data_info = corpus.describe() | {"val_fraction": cfg.val_fraction}
        sample_prompt = prompt_from(texts, cfg)
    else:
        if task == "chat":
            template = ChatTemplate()
            if not request.resume:
                add_chat_tokens(tokenizer, template)
            extra_files["chat_template.json"] = json.dumps(template.to_dict(), indent=2)
            examples = chat_examples(files, tokenizer, block_size)
            if not any(t != -100 for e in examples for t in e.targets):
                raise GptError("the conversations have no assistant turns to learn from")
        else:
            if not request.resume:
                tokenizer.hf.add_special_tokens([CLASSIFY_TOKEN])
            examples, labels = classify_examples(
                files, tokenizer, block_size, model.config.labels if request.resume else None
            )
            data_info["labels"] = labels
        model.grow_vocab(tokenizer.vocab_size)
        if task == "classify" and not request.resume:
            add_classifier(model, labels)
        train_ex, val_ex = split_examples(examples, cfg.val_fraction)
        train_batches = ExampleBatches(
            train_ex,
            micro_batch_size(cfg, dist),
            device,
            cfg.seed,
            dist.rank,
            dist.world,
            aux_lm_weight,
        )
        val_batches = (
            ExampleBatches(
                val_ex, cfg.batch_size, device, cfg.seed + 1, aux_lm_weight=aux_lm_weight
            )
            if val_ex
            else None
        )
        data_info |= {"train_examples": len(train_ex), "val_examples": len(val_ex)}
    log(
        f"fine-tuning {loaded.name} for {task}: {model.num_params() / 1e6:.2f}M parameters "
        f"on {device.type}"
    )
    if request.lora_rank:
        grown = task != "text"  # new token rows (and the classifier) must still learn
        apply_lora(model, request.lora_rank)
        for module in (model.transformer["wte"], model.lm_head, getattr(model, "classifier", None)):
            if module is not None and (grown or module is getattr(model, "classifier", None)):
                module.requires_grad_(True)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"LoRA rank {request.lora_rank}: training {trainable:,} parameters")
    optimizer_cfg = (
        cfg if not request.lora_rank else TrainConfig(**{**cfg.to_dict(), "optimizer": "adamw"})
    )
    optimizers = make_optimizers(model, optimizer_cfg, device)
    state = TrainState()
    if request.resume:
        state = TrainState(
            **load_train_state(
                target / "train_state.safetensors", optimizers, train_batches.generator
            )
        )
        log(f"resuming at step {state.step}")
    base_info = {
        "kind": "finetune",
        "task": task,
        "run": info.get("run") or new_run_id(),
        "created": info.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": info.get("config") if request.resume else request.config,
        "base": info.get("base") or {"name": loaded.name, "path": str(base_dir)},
        "train": cfg.to_dict() | {"lora": request.lora_rank, "aux_lm_weight": aux_lm_weight},
        "tokenizer": tokenizer.kind,
        "data": data_info,
    }
    claimed = False  # live metrics in train.json and samples: see gptcli.monitor
    if dist.is_main:
        sampling = None if sample_prompt is None else (model, tokenizer, sample_prompt)
        observer, claimed = monitor_for(
            observer, store, request.name, base_info, state.history, cfg, sampling
        )
    saver = CheckpointWriter(
        store,
        request.name,
        tokenizer,
        base_info,
        replace=request.force or request.resume or claimed,
        extra_files=extra_files,
    )
    run_and_store(
        model,
        train_batches,
        val_batches,
        optimizer_cfg,
        observer,
        state,
        optimizers,
        saver,
        dist,
        discard=target if claimed else None,
    )
    return {"name": request.name, "path": str(target), "task": task, **saver.last}
