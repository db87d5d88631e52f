"""What a training run records and shows as it goes, wrapped around the caller's observer.

- `MetricsWriter`: after each evaluation, train.json in the model's directory gets the history
  so far (one record per evaluation: step, tokens, seconds, train and validation loss,
  learning rate), so `gpt models show NAME` draws the loss curve of a run still in progress.
- `Sampler`: every `sample_every` steps, a short continuation of a fixed prompt with a fixed
  seed, handed to the observer's `on_sample(step, text)`, so a person sees the model learn.
- `RunMonitor`: the observer `train_model` is given; it forwards to the caller's observer and
  does the two above in between. It runs on the main process only, like any observer.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gptcli.config import TrainConfig
from gptcli.errors import GptError
from gptcli.model import GPT
from gptcli.store import ModelStore, read_json, write_json_atomic
from gptcli.tokenizer import Tokenizer

SAMPLE_TOKENS = 48
# Budgets below these get no samples unless --sample-every asks: they end before there is
# much to see, and each sample costs a moment of a short run.
TINY_STEPS = 1000
TINY_SECONDS = 120.0


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class MetricsWriter:
    """Rewrites NAME/train.json (atomically) after each evaluation, while the directory is this
    run's: one it created for a new model, or one whose train.json carries this run's id (a
    resumed model, or a replaced one once its first checkpoint is in place). A model that
    `--force` will replace is left untouched until then."""

    def __init__(self, store: ModelStore, name: str, info: dict[str, Any], history: list) -> None:
        self.directory = store.model_dir(name)
        self.info = info  # carries "run", this run's id
        self.history = history  # the loop's TrainState.history, appended to in place

    def claim(self) -> bool:
        """Makes the directory this run's if no model is stored there yet (a crashed run's
        leftover without weights counts as none). True when it did: the first checkpoint must
        then replace it."""
        if (self.directory / "config.json").is_file():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._write({"steps": 0, "stopped": "running"})
        return True

    def owns(self) -> bool:
        path = self.directory / "train.json"
        try:
            return path.is_file() and read_json(path).get("run") == self.info["run"]
        except (GptError, AttributeError):
            return False

    def record(self, stats: Any) -> None:
        if self.owns():
            self._write(
                {
                    "steps": stats.step,
                    "tokens": stats.tokens,
                    "train_loss": stats.train_loss,
                    "val_loss": stats.val_loss,
                    "seconds": round(stats.seconds, 3),
                    "stopped": "running",
                }
            )

    def _write(self, result: dict[str, Any]) -> None:
        write_json_atomic(
            self.directory / "train.json",
            self.info | {"result": result, "history": self.history},
        )


def discard_unsaved(directory: Path) -> None:
    """Removes a run's directory if no model was saved in it (only its metrics are there)."""
    if directory.is_dir() and not (directory / "config.json").is_file():
        shutil.rmtree(directory, ignore_errors=True)


def default_sample_prompt(text: str) -> str:
    """The opening words of the corpus: four words of its first line, or eight characters of
    it in a script written without spaces (Chinese, Japanese)."""
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    words = line.split()
    if len(words) > 1:
        return " ".join(words[:4])[:40]
    return line[:8]


def sample_every(cfg: TrainConfig) -> int | None:
    """Steps between samples: the flag's, 0 for none; None means ten times over the budget."""
    if cfg.sample_every is not None:
        return cfg.sample_every
    tiny_steps = cfg.max_steps is not None and cfg.max_steps < TINY_STEPS
    tiny_time = cfg.max_time is not None and cfg.max_time < TINY_SECONDS
    return 0 if tiny_steps or tiny_time else None


@dataclass
class Sampler:
    """A short continuation of one prompt, with one seed, so the samples differ by the model."""

    model: GPT
    tokenizer: Tokenizer
    prompt: str
    every: int | None  # steps; 0 never; None at each tenth of the budget
    seed: int = 1337
    last_tenth: int = 0

    def due(self, stats: Any) -> bool:
        if self.every == 0 or stats.step == 0:
            return False
        if self.every is not None:
            return stats.step % self.every == 0
        tenth = min(int(stats.progress * 10 + 1e-9), 10)
        if tenth > self.last_tenth:
            self.last_tenth = tenth
            return True
        return False

    def sample(self) -> str:
        from gptcli.generate import TextStream, generate_tokens
        from gptcli.sample import SamplingSettings

        ids = self.tokenizer.encode(self.prompt)
        if not ids:
            if self.tokenizer.eot_id is None:
                return ""
            ids = [self.tokenizer.eot_id]
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        stop = frozenset() if self.tokenizer.eot_id is None else frozenset({self.tokenizer.eot_id})
        stream = TextStream(self.tokenizer)
        was_training = self.model.training
        self.model.eval()
        try:
            pieces = [
                stream.push(token)
                for token in generate_tokens(
                    self.model,
                    ids,
                    SAMPLE_TOKENS,
                    SamplingSettings(temperature=0.8),
                    generator,
                    stop,
                )
            ]
        finally:
            self.model.train(was_training)
        return self.prompt + "".join(pieces) + stream.flush()


class RunMonitor:
    """The observer handed to `train_model`: writes metrics, takes samples, forwards the rest."""

    def __init__(
        self,
        observer: Any,
        metrics: MetricsWriter | None = None,
        sampler: Sampler | None = None,
    ) -> None:
        self.observer = observer
        self.metrics = metrics
        self.sampler = sampler

    def on_step(self, stats: Any) -> None:
        if self.observer is not None:
            self.observer.on_step(stats)
        self._maybe_sample(stats)

    def on_eval(self, stats: Any) -> None:
        if self.metrics is not None:
            self.metrics.record(stats)
        if self.observer is not None:
            self.observer.on_eval(stats)
        self._maybe_sample(stats)

    def _maybe_sample(self, stats: Any) -> None:
        show = getattr(self.observer, "on_sample", None)
        if self.sampler is not None and show is not None and self.sampler.due(stats):
            show(stats.step, self.sampler.sample())


def prompt_from(texts: Any, cfg: TrainConfig) -> str:
    """The sample prompt: --sample-prompt, else the opening words of the corpus."""
    if cfg.sample_prompt is not None:
        return cfg.sample_prompt
    first = next(iter(texts.iter_text()), "")
    return default_sample_prompt(first[:4096])


def monitor_for(
    observer: Any,
    store: ModelStore,
    name: str,
    info: dict[str, Any],
    history: list,
    cfg: TrainConfig,
    sampling: tuple[GPT, Tokenizer, str] | None,
) -> tuple[RunMonitor, bool]:
    """The monitor of one run (main process), and whether it claimed the model's directory."""
    metrics = MetricsWriter(store, name, info, history)
    claimed = metrics.claim()
    sampler = None
    every = sample_every(cfg)
    if sampling is not None and every != 0:
        model, tokenizer, prompt = sampling
        sampler = Sampler(model, tokenizer, prompt, every, cfg.seed)
    return RunMonitor(observer, metrics, sampler), claimed
