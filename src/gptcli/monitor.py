"""What a training run shows as it goes, wrapped around the caller's observer.

- live metrics: after each evaluation, train.json in the model's directory gets the history
  so far (one record per evaluation: step, tokens, seconds, train and validation loss,
  learning rate) through `record.RunDirectory`, so `gpt models show NAME` draws the loss curve
  of a run still in progress.
- `Sampler`: every `sample_every` steps, a short continuation of a fixed prompt with a fixed
  seed, handed to the observer's `on_sample(step, text)`, so a person sees the model learn.
- `RunMonitor`: the observer `train_model` is given; it forwards to the caller's observer and
  does the two above in between, and hands each step to the run's `tracking.Recorder`
  (metrics.jsonl and the trackers). It runs on the main process only, like any observer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gptcli.config import TrainConfig
from gptcli.data import Texts
from gptcli.inference.generate import stream_text
from gptcli.inference.sequence import Sequence
from gptcli.inference.text import TextStream
from gptcli.model import GPT
from gptcli.record import RunDirectory
from gptcli.sample import SamplingSettings
from gptcli.tokenizer import Tokenizer

SAMPLE_TOKENS = 48
# Budgets below these get no samples unless --sample-every asks: they end before there is
# much to see, and each sample costs a moment of a short run.
TINY_STEPS = 1000
TINY_SECONDS = 120.0


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
        ids = self.tokenizer.encode(self.prompt)
        if not ids:
            if self.tokenizer.eot_id is None:
                return ""
            ids = [self.tokenizer.eot_id]
        device = next(self.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        stop = frozenset() if self.tokenizer.eot_id is None else frozenset({self.tokenizer.eot_id})
        seq = Sequence(
            ids, SamplingSettings(temperature=0.8), generator, stop, SAMPLE_TOKENS,
            TextStream(self.tokenizer),
        )
        was_training = self.model.training
        self.model.eval()
        try:
            return self.prompt + "".join(stream_text(self.model, ids, seq))
        finally:
            self.model.train(was_training)


class RunMonitor:
    """The observer handed to `train_model`: writes metrics, takes samples, forwards the rest."""

    def __init__(
        self,
        observer: Any,
        metrics: RunDirectory | None = None,
        sampler: Sampler | None = None,
        recorder: Any = None,
    ) -> None:
        self.observer = observer
        self.metrics = metrics
        self.sampler = sampler
        self.recorder = recorder  # a tracking.Recorder, or None

    def on_step(self, stats: Any) -> None:
        if self.recorder is not None:
            self.recorder.on_step(stats)
        if self.observer is not None:
            self.observer.on_step(stats)
        self._maybe_sample(stats)

    def on_eval(self, stats: Any) -> None:
        if self.recorder is not None:
            self.recorder.on_eval(stats)
        if self.metrics is not None:
            self.metrics.record_live(stats)
        if self.observer is not None:
            self.observer.on_eval(stats)
        self._maybe_sample(stats)

    def _maybe_sample(self, stats: Any) -> None:
        show = getattr(self.observer, "on_sample", None)
        if self.sampler is not None and show is not None and self.sampler.due(stats):
            show(stats.step, self.sampler.sample())


def prompt_from(texts: Texts, cfg: TrainConfig) -> str:
    """The sample prompt: --sample-prompt, else the opening words of the corpus."""
    if cfg.sample_prompt is not None:
        return cfg.sample_prompt
    first = next(iter(texts.iter_text()), "")
    return default_sample_prompt(first[:4096])


def prompt_from_tokens(tokens: Any, tokenizer: Tokenizer, cfg: TrainConfig) -> str:
    """The sample prompt for token shards: --sample-prompt, else the opening words of the ids."""
    if cfg.sample_prompt is not None:
        return cfg.sample_prompt
    return default_sample_prompt(tokenizer.decode(tokens[:256].tolist()))


def monitor_for(
    observer: Any,
    run_dir: RunDirectory,
    cfg: TrainConfig,
    sampling: tuple[GPT, Tokenizer, str] | None,
    recorder: Any = None,
) -> RunMonitor:
    """The monitor of one run (main process): live metrics in `run_dir`, samples, and the
    points of `recorder` (a tracking.Recorder)."""
    sampler = None
    every = sample_every(cfg)
    if sampling is not None and every != 0:
        model, tokenizer, prompt = sampling
        sampler = Sampler(model, tokenizer, prompt, every, cfg.seed)
    return RunMonitor(observer, run_dir, sampler, recorder)
