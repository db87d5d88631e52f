"""`gpt generate`: continue a prompt, streaming text to stdout as it is produced."""

from __future__ import annotations

import random
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.console import info, print_json
from gptcli.cli.options import ModelOption, read_prompt
from gptcli.cli.sampling import (
    CudaGraphsOption,
    DeviceOption,
    DtypeOption,
    FrequencyPenaltyOption,
    MinPOption,
    PresencePenaltyOption,
    RepetitionPenaltyOption,
    SeedOption,
    TemperatureOption,
    ThreadsOption,
    TopKOption,
    TopPOption,
    sampling_settings,
)
from gptcli.errors import GptError
from gptcli.hardware import sleeping_omp_threads

if TYPE_CHECKING:
    from gptcli.checkpoint import LoadedModel
    from gptcli.sample import SamplingSettings

HELP = """Continue a prompt with a model (the default one unless -m).

The prompt comes from stdin when omitted or '-'. A prompt given as an argument is printed
before its continuation, one from stdin is not (only the new text comes out, as with llm and
ollama); --echo and --no-echo choose.

Example: gpt generate "Once upon a time" -n 200 --temperature 0.8
"""


def generate(
    prompt: Annotated[
        str | None, typer.Argument(help="Text to continue ('-' or omitted: stdin).")
    ] = None,
    model: ModelOption = None,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", help="Tokens to generate.")
    ] = 200,
    temperature: TemperatureOption = 0.8,
    top_k: TopKOption = None,
    top_p: TopPOption = None,
    min_p: MinPOption = 0.05,
    repetition_penalty: RepetitionPenaltyOption = 1.0,
    presence_penalty: PresencePenaltyOption = 0.0,
    frequency_penalty: FrequencyPenaltyOption = 0.0,
    seed: SeedOption = None,
    num_samples: Annotated[
        int, typer.Option(help="Number of continuations, generated as one batch.")
    ] = 1,
    stop: Annotated[
        list[str] | None, typer.Option(help="Stop before this text, never printed (repeatable).")
    ] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text.")
    ] = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    cuda_graphs: CudaGraphsOption = None,
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print text as it comes.")
    ] = True,
    stats: Annotated[
        bool, typer.Option("--stats", help="Token counts and prefill/decode speed on stderr.")
    ] = False,
    echo: Annotated[
        bool | None,
        typer.Option(
            "--echo/--no-echo",
            help="Print the prompt before the new text (default: for an argument prompt, not "
            "for one from stdin).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    log: Annotated[
        bool, typer.Option("--log", help="Keep the prompt and the text in the log (gpt logs).")
    ] = False,
) -> None:
    sleeping_omp_threads()
    settings = sampling_settings(locals())
    if max_new_tokens < 0:
        raise GptError("--max-new-tokens must be 0 or more")
    if num_samples < 1:
        raise GptError("--num-samples must be at least 1")
    text = read_prompt(prompt)
    if echo is None:
        echo = prompt is not None and prompt != "-"
    shown = text if echo else ""

    from gptcli.inference.loader import load
    from gptcli.inference.precision import use_cuda_graphs

    loaded = load(model, device, dtype, threads)
    tok = loaded.tokenizer
    ids = tok.encode(text)
    if not ids:
        if tok.eot_id is None:
            raise GptError("empty prompt, and the tokenizer has no end-of-text token to start from")
        ids = [tok.eot_id]
    context = loaded.model.config.block_size
    if len(ids) > context:
        info(
            f"warning: the prompt has {len(ids)} tokens, more than the model's context of "
            f"{context}: only the newest {context} are used"
        )
    graphs = use_cuda_graphs(cuda_graphs, next(loaded.model.parameters()).device)
    run = Run(
        loaded,
        ids,
        max_new_tokens,
        settings,
        num_samples,
        seed if seed is not None else random.randrange(2**62),
        stop_ids=frozenset() if ignore_eos or tok.eot_id is None else frozenset({tok.eot_id}),
        stops=stop or [],
        cuda_graphs=graphs,
    )
    live = stream and not json_out and num_samples == 1
    if live:
        sys.stdout.write(shown)
        sys.stdout.flush()
    completions = run.texts(live)
    if live:
        sys.stdout.write("\n")
        sys.stdout.flush()
    elif not json_out:
        sys.stdout.write("\n\n".join(shown + c for c in completions) + "\n")
        sys.stdout.flush()
    if stats:
        info(run.stats.summary())
    if log:
        from gptcli.chatrecorder import log_generation

        timings = {
            "prompt_tokens": run.stats.prompt_tokens,
            "prefill_seconds": round(run.stats.prefill_seconds, 6),
            "decode_seconds": round(run.stats.decode_seconds, 6),
            "sample_tokens": run.sample_tokens,
        }
        seeds = {"max_tokens": max_new_tokens, "seed": run.seed, "stop": stop or []}
        log_generation(loaded.name, text, completions, asdict(settings) | seeds, timings)
    if json_out:
        base: dict[str, Any] = {"model": loaded.name, "prompt": text}
        if num_samples == 1:
            print_json(base | {"text": completions[0]} | run.stats.to_dict())
        else:
            samples = [
                {"text": c, "generated_tokens": n}
                for c, n in zip(completions, run.sample_tokens, strict=True)
            ]
            print_json(base | {"samples": samples} | run.stats.to_dict())


class Run:
    """One `gpt generate`: a batch of samples from one prompt, turned into text as it comes."""

    def __init__(
        self,
        loaded: LoadedModel,
        ids: list[int],
        max_new_tokens: int,
        settings: SamplingSettings,
        num_samples: int,
        seed: int,
        stop_ids: frozenset[int],
        stops: list[str],
        cuda_graphs: bool,
    ) -> None:
        import torch

        from gptcli.inference.generate import GenerationStats
        from gptcli.inference.sequence import Sequence
        from gptcli.inference.text import TextStream

        self.loaded, self.ids, self.cuda_graphs = loaded, ids, cuda_graphs
        device = next(loaded.model.parameters()).device
        self.seqs = []
        for i in range(num_samples):  # sample i draws from its own generator, seeded seed + i:
            generator = torch.Generator(device=device)  # the same text as alone
            generator.manual_seed(seed + i)
            stream = TextStream(loaded.tokenizer, stops)
            self.seqs.append(Sequence(ids, settings, generator, stop_ids, max_new_tokens, stream))
        self.stats = GenerationStats()
        self.seed = seed

    @property
    def sample_tokens(self) -> list[int]:
        return [seq.generated for seq in self.seqs]

    def texts(self, live: bool) -> list[str]:
        """Each sample's completion; with `live`, the single sample is written as it comes."""
        from gptcli.inference.generate import decode

        pieces: list[list[str]] = [[] for _ in self.seqs]
        steps = decode(self.loaded.model, self.ids, self.seqs, self.stats, self.cuda_graphs)
        for _ in steps:
            for row, seq in enumerate(self.seqs):
                if seq.piece:
                    pieces[row].append(seq.piece)
                    seq.piece = ""
                    if live:
                        sys.stdout.write(pieces[row][-1])
                        sys.stdout.flush()
        for row, seq in enumerate(self.seqs):
            rest = seq.rest()
            pieces[row].append(rest)
            if live and rest:
                sys.stdout.write(rest)
        return ["".join(p) for p in pieces]
