"""lm-evaluation-harness in-process: `gpt eval --harness TASK[,TASK...]`.

`HarnessModel` answers lm-eval's three kinds of request on a model loaded by
`gptcli.inference.load`: `loglikelihood` (a continuation given a context: summed log-probability
and whether greedy decoding would give it), `loglikelihood_rolling` (a whole text, in windows
of the context, each token predicted once) and `generate_until` (text up to a stop string,
through the same text loop as `gpt generate`). Contexts and continuations are split into tokens
as lm-eval's own transformers model splits them, so scores are comparable with its `--model hf`.

`run_harness` builds the tasks (lm-eval's, and local YAMLs from `--include-path`) and returns
lm-eval's results. `lm-eval` is an optional extra, imported only here and only when called.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gptcli.checkpoint import LoadedModel
from gptcli.errors import GptError

HINT = 'gpt eval --harness needs lm-evaluation-harness: pip install "gptcli[harness]"'
LOGITS_BUDGET = 1 << 24  # floats of logits per forward pass
MAX_ROWS = 32


def import_lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.api.model
    except ImportError:
        raise GptError(HINT) from None
    return lm_eval


def split_pair(tokenizer: Any, context: str, continuation: str, eot: int | None) -> tuple:
    """(context ids, continuation ids) as lm-eval's HFLM splits them: trailing spaces of the
    context go with the continuation, and the continuation is what encoding both together adds
    after the context's own tokens. An empty context starts from end-of-text."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if not context:
        if eot is None:
            raise GptError("an empty context needs an end-of-text token, and this model has none")
        return [eot], tokenizer.encode(continuation)
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


@torch.inference_mode()
def score_rows(model: Any, rows: list[tuple[list[int], int]]) -> list[tuple[float, bool]]:
    """For each (ids, n): summed log-probability of the last n ids given the ones before, and
    whether each was the likeliest token; rows go through the model in padded batches."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
    done = 0
    while done < len(order):
        length = len(rows[order[done]][0]) - 1
        batch = order[done : done + max(1, min(MAX_ROWS, LOGITS_BUDGET // (length * vocab)))]
        x = torch.zeros(len(batch), length, dtype=torch.long)
        for r, i in enumerate(batch):
            ids = rows[i][0]
            x[r, : len(ids) - 1] = torch.tensor(ids[:-1])
        logits, _ = model(x.to(device))
        for r, i in enumerate(batch):
            ids, n = rows[i]
            span = logits[r, len(ids) - 1 - n : len(ids) - 1].float()
            target = torch.tensor(ids[-n:], device=device)
            logprobs = F.log_softmax(span, dim=-1)
            total = logprobs.gather(1, target[:, None]).double().sum().item()
            greedy = bool((span.argmax(dim=-1) == target).all())
            results[i] = (total, greedy)
        done += len(batch)
    return results


def make_model(loaded: LoadedModel, on_progress: Callable[[str, int], None] | None = None) -> Any:
    """An lm-eval `LM` over a loaded model (built here: lm-eval is imported only when needed)."""
    lm_eval = import_lm_eval()
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    from gptcli.inference.api import Model

    class HarnessModel(lm_eval.api.model.LM):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            super().__init__()
            self.loaded = loaded
            self.model, self.tokenizer = loaded.model, loaded.tokenizer
            self.context = loaded.model.config.block_size
            self.eot = loaded.tokenizer.eot_id

        def _window(self, context: list[int], continuation: list[int]) -> tuple[list[int], int]:
            if not continuation:
                raise GptError("an empty continuation cannot be scored")
            if len(continuation) > self.context:
                raise GptError(
                    f"a continuation of {len(continuation)} tokens is longer than the model's "
                    f"context ({self.context})"
                )
            ids = (context + continuation)[-(self.context + 1) :]
            return ids, len(continuation)

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            rows = []
            for request in requests:
                context, continuation = request.args
                rows.append(
                    self._window(*split_pair(self.tokenizer, context, continuation, self.eot))
                )
            if on_progress:
                on_progress("loglikelihood", len(rows))
            return score_rows(self.model, rows)

        def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
            results = []
            for request in requests:
                (text,) = request.args
                ids = self.tokenizer.encode(text)
                prefix = self.eot if self.eot is not None else (ids[0] if ids else 0)
                scored = ids if self.eot is not None else ids[1:]
                windows = [
                    make_disjoint_window(w)
                    for w in get_rolling_token_windows(
                        token_list=scored,
                        prefix_token=prefix,
                        max_seq_len=self.context,
                        context_len=1,
                    )
                ]
                rows = [(list(ctx) + list(cont), len(cont)) for ctx, cont in windows if cont]
                results.append(sum(ll for ll, _ in score_rows(self.model, rows)))
            if on_progress:
                on_progress("loglikelihood_rolling", len(requests))
            return results

        def generate_until(self, requests: list[Any]) -> list[str]:
            api = Model(self.loaded)
            outputs = []
            for request in requests:
                context, kwargs = request.args
                kwargs = dict(kwargs or {})
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_tokens = int(kwargs.pop("max_gen_toks", 256))
                sample = bool(kwargs.pop("do_sample", False))
                temperature = float(kwargs.pop("temperature", 0.0)) if sample else 0.0
                text = api.generate(
                    context, max_tokens, stop=until, seed=1234, temperature=temperature
                )
                outputs.append(text)
            if on_progress:
                on_progress("generate_until", len(requests))
            return outputs

    return HarnessModel()


def run_harness(
    loaded: LoadedModel,
    tasks: list[str],
    limit: float | None,
    num_fewshot: int | None,
    include_path: list[Path],
) -> dict[str, Any]:
    """lm-eval's results for `tasks` on a loaded model (its `results`, `n-shot`, `versions`,
    `configs`... as `simple_evaluate` returns them)."""
    lm_eval = import_lm_eval()
    from lm_eval.tasks import TaskManager

    for path in include_path:
        if not path.exists():
            raise GptError(f"{path}: no such file or directory (--include-path)")
    manager = TaskManager(include_path=[str(p) for p in include_path] or None)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise GptError(
            f"no lm-evaluation-harness task named {unknown[0]!r} (see `lm-eval ls tasks`; "
            "a local task YAML needs --include-path DIR)"
        )
    lm = make_model(loaded)
    try:
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            bootstrap_iters=0,
        )
    except GptError:
        raise
    except Exception as exc:  # datasets: offline and not cached, a bad data file, ...
        if not data_error(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GptError(
            f"the data of {', '.join(tasks)} could not be loaded ({type(exc).__name__}: "
            f"{first}); offline, only data already in the Hugging Face datasets cache or local "
            "files (a task YAML under --include-path) can be used"
        ) from None
    if results is None:
        raise GptError("lm-evaluation-harness returned no results")
    return results


def data_error(exc: Exception) -> bool:
    """Whether an exception comes from fetching or reading a task's data."""
    module = type(exc).__module__.split(".")[0]
    return isinstance(exc, OSError | ConnectionError) or module in (
        "datasets",
        "huggingface_hub",
        "requests",
        "httpx",
        "httpx2",
        "fsspec",
        "pyarrow",
    )
