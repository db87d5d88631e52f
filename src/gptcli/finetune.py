"""`gpt finetune`: a stored model trained further on text, conversations or labelled texts.

The same pipeline as `gpt train` (`run.execute`, `loop.train_model`). BASE is never modified:
the result is a new model in the store. The tasks (text, chat, classify) live in `tasks/`,
one module each; this module loads the base, hands it to the task, and adds LoRA adapters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from gptcli.checkpoint import load_model
from gptcli.config import TrainConfig
from gptcli.data import find_text_files
from gptcli.datasources import find_files
from gptcli.datasources.base import ReadOptions
from gptcli.datasources.hf import is_dataset
from gptcli.datasources.shards import wants_shards
from gptcli.errors import GptError
from gptcli.lora import apply_lora
from gptcli.record import continued
from gptcli.run import Log, Prepared, check_target, resumed_config
from gptcli.runtime import Distributed
from gptcli.store import ModelStore
from gptcli.tasks import detect_task, task_named
from gptcli.tasks.base import TaskInputs

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
    """`gpt finetune`'s job for `run.execute`."""

    command: ClassVar[str] = "gpt finetune"
    base: str
    inputs: list[str]
    name: str
    cfg: TrainConfig
    task: str | None = None  # None: from the data (.txt -> text, JSONL -> by its keys)
    val: list[str] = field(default_factory=list)  # --task text: validation inputs (--val)
    read: ReadOptions = field(default_factory=ReadOptions)  # --task text: how records are read
    lora_rank: int | None = None
    aux_lm_weight: float = 0.5
    force: bool = False
    resume: bool = False
    config: dict[str, Any] | None = None  # the command's settings, as --print-config shows them
    files: list[Path] = field(default_factory=list, init=False)  # found by check()

    def check(self, store: ModelStore) -> None:
        base_dir = store.resolve(self.base)
        if store.model_dir(self.name).resolve() == base_dir.resolve():
            raise GptError("--name must differ from the base model: the base is never modified")
        check_target(store, self.name, self.force, self.resume)
        if self.resume and self.lora_rank:
            raise GptError("--resume is not supported with --lora (adapters are merged when saved)")
        if self.lora_rank is not None and self.lora_rank < 1:
            raise GptError("--lora must be at least 1")
        # --task text reads every supported format (a directory: all of them); otherwise a
        # directory means its .txt files, and JSONL is a chat or classify set
        if self.task == "text" and wants_shards(self.inputs):
            self.files = [Path(p).expanduser() for p in self.inputs]  # read by the task
        elif self.task == "text":  # datasets (hf:NAME, save_to_disk directories) stay whole
            self.files = [
                f
                for raw in self.inputs
                for f in ([Path(raw)] if is_dataset(raw) else find_files([raw]))
            ]
        else:
            self.files = find_text_files(self.inputs)
        self.task = self.task or detect_task(self.files)
        task_named(self.task)

    def prepare(
        self, store: ModelStore, device: torch.device, dist: Distributed, log: Log
    ) -> Prepared:
        """Loads BASE (or the model being resumed) and adapts it to the task."""
        assert self.task is not None  # set by check()
        base_dir = store.resolve(self.base)
        loaded = load_model(store.model_dir(self.name) if self.resume else base_dir, device)
        model, tokenizer = loaded.model, loaded.tokenizer
        info = loaded.info if self.resume else {}
        cfg, aux_lm_weight = self.cfg, self.aux_lm_weight
        if self.resume:  # the stored run's settings and budget, unless a new budget is given
            stored = info.get("train", {})
            cfg = resumed_config(stored, self.cfg)
            aux_lm_weight = stored.get("aux_lm_weight", aux_lm_weight)
        else:  # the classifier head and new token rows start the same in every process
            torch.manual_seed(cfg.seed)
        inputs = TaskInputs(
            files=self.files,
            model=model,
            tokenizer=tokenizer,
            cfg=cfg,
            resume=self.resume,
            cache_dir=store.data_dir,
            device=device,
            dist=dist,
            aux_lm_weight=aux_lm_weight,
            val=self.val,
            read=self.read,
        )
        data = task_named(self.task).prepare(inputs)
        for warning in data.warnings:
            log(warning)
        log(
            f"fine-tuning {loaded.name} for {self.task}: {model.num_params() / 1e6:.2f}M "
            f"parameters on {device.type}"
        )
        if self.lora_rank:
            grown = self.task != "text"  # new token rows (and the classifier) must still learn
            apply_lora(model, self.lora_rank)
            classifier = getattr(model, "classifier", None)
            for module in (model.transformer["wte"], model.lm_head, classifier):
                if module is not None and (grown or module is classifier):
                    module.requires_grad_(True)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log(f"LoRA rank {self.lora_rank}: training {trainable:,} parameters")
        loop_cfg = cfg
        if self.lora_rank:
            loop_cfg = TrainConfig(**{**cfg.to_dict(), "optimizer": "adamw"})
        record = continued(
            "finetune",
            info,
            self.resume,
            task=self.task,
            config=self.config,
            base=info.get("base") or {"name": loaded.name, "path": str(base_dir)},
            train=cfg.to_dict() | {"lora": self.lora_rank, "aux_lm_weight": aux_lm_weight},
            tokenizer=tokenizer.kind,
            data=data.data,
        )
        return Prepared(
            model,
            tokenizer,
            data.train,
            data.val,
            loop_cfg,
            record,
            sample_prompt=data.sample_prompt,
            extra_files=data.extra_files,
            summary={"task": self.task},
        )
