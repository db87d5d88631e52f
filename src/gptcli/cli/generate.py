"""`gpt generate`: continue a prompt, streaming text to stdout as it is produced."""

from __future__ import annotations

import os
import random
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from gptcli.cli.console import info, print_json
from gptcli.cli.options import ModelOption
from gptcli.errors import GptError

if TYPE_CHECKING:
    from gptcli.checkpoint import LoadedModel
    from gptcli.sample import SamplingSettings

HELP = """Continue a prompt with a model (the default one unless -m).

The prompt comes from stdin when omitted or '-'. A prompt given as an argument is printed
before its continuation, one from stdin is not (only the new text comes out, as with llm and
ollama); --echo and --no-echo choose.

Example: gpt generate "Once upon a time" -n 200 --temperature 0.8
"""


# Sampling and inference flags, shared with `gpt chat`.
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopKOption = Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")]
TopPOption = Annotated[
    float | None,
    typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1]."),
]
MinPOption = Annotated[
    float | None,
    typer.Option(help="Drop tokens below this fraction of the top token's probability; 0 = off."),
]
RepetitionPenaltyOption = Annotated[
    float, typer.Option(help="Above 1 discourages tokens already in the prompt or the text.")
]
PresencePenaltyOption = Annotated[
    float, typer.Option(help="Subtracted once from each generated token's logit, in [-2, 2].")
]
FrequencyPenaltyOption = Annotated[
    float,
    typer.Option(help="Subtracted per occurrence from a generated token's logit, in [-2, 2]."),
]
SeedOption = Annotated[int | None, typer.Option(help="Random seed: same seed, same text.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]
DtypeOption = Annotated[
    str,
    typer.Option(
        help="Weights: auto (bfloat16 on CUDA and on CPUs with native bfloat16, else float32), "
        "float32, bfloat16, or int8 (weight-only, per-row scales: fastest on a CPU)."
    ),
]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads (default: one per physical core).", min=1)
]
CudaGraphsOption = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graphs/--no-cuda-graphs",
        help="Replay each decode step as a CUDA graph (default: on with CUDA).",
        show_default=False,
    ),
]


def sleeping_omp_threads(only_when_busy: bool = False) -> None:
    """Has OpenMP threads sleep while they wait instead of spinning; runs before torch loads.

    Spinning threads look busy to the kernel, so on a machine shared with other work they lose
    their core, and each of the hundreds of parallel regions of a torch decode step waits for
    one: steps get ten to fifty times slower. Sleeping costs a wake-up per region instead
    (about 150 us on a Firecracker VM), which the native CPU step (gptcli.kernels) pays once
    a token: its threads wait for each other on barriers of its own. Training
    (`only_when_busy`) has many more regions per second, so sleeping costs more there: on two
    idle cores 150 steps of the nanogpt-cpu preset took 15 s spinning and 26 s sleeping, while
    on cores shared with other work a mini step took 8.4 s spinning and 0.4 to 1.2 s sleeping.
    So training sleeps only when the load average already fills every core. OMP_WAIT_POLICY
    set in the environment wins.
    """
    if only_when_busy and os.getloadavg()[0] < (os.cpu_count() or 1):
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def read_prompt(prompt: str | None) -> str:
    """The argument, or all of stdin when it is omitted or '-'."""
    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin.isatty():
        raise GptError("no prompt: give one as an argument or pipe it through stdin")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GptError("the prompt on stdin is not UTF-8 text") from None


def load_for_inference(
    model: str | None, device: str, dtype: str, threads: int | None
) -> LoadedModel:
    """The model, on its device, in eval mode, with weights in the chosen dtype."""
    import torch

    from gptcli.checkpoint import load_model
    from gptcli.generate import inference_dtype, prepare_for_inference
    from gptcli.runtime import pick_device
    from gptcli.store import ModelStore

    if threads is not None:  # else torch's default: one per physical core
        torch.set_num_threads(threads)
    where = pick_device(device)
    loaded = load_model(ModelStore().resolve(model), where)
    prepare_for_inference(loaded.model, inference_dtype(dtype, where))
    return loaded


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
) -> None:
    sleeping_omp_threads()
    from gptcli.sample import SamplingSettings

    settings = SamplingSettings(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
    )
    if max_new_tokens < 0:
        raise GptError("--max-new-tokens must be 0 or more")
    if num_samples < 1:
        raise GptError("--num-samples must be at least 1")
    text = read_prompt(prompt)
    if echo is None:
        echo = prompt is not None and prompt != "-"
    shown = text if echo else ""

    from gptcli.generate import use_cuda_graphs

    loaded = load_for_inference(model, device, dtype, threads)
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

        from gptcli.generate import GenerationStats

        self.loaded, self.ids, self.max_new_tokens = loaded, ids, max_new_tokens
        self.settings, self.stop_ids, self.stops = settings, stop_ids, stops
        self.cuda_graphs = cuda_graphs
        device = next(loaded.model.parameters()).device
        # sample i draws from its own generator, seeded seed + i: the same text as alone
        self.generators = [torch.Generator(device=device) for _ in range(num_samples)]
        for i, generator in enumerate(self.generators):
            generator.manual_seed(seed + i)
        self.stats = GenerationStats()
        self.sample_tokens = [0] * num_samples

    def texts(self, live: bool) -> list[str]:
        """Each sample's completion; with `live`, the single sample is written as it comes."""
        from gptcli.generate import TextStream, generate_batch

        streams = [TextStream(self.loaded.tokenizer, self.stops) for _ in self.generators]
        pieces: list[list[str]] = [[] for _ in self.generators]
        done = [False] * len(streams)  # shared with generate_batch: set at a stop string
        steps = generate_batch(
            self.loaded.model,
            self.ids,
            self.max_new_tokens,
            self.settings,
            self.generators,
            self.stop_ids,
            self.stats,
            self.cuda_graphs,
            done,
        )
        for tokens in steps:
            for row, token in enumerate(tokens):
                if token is None:
                    continue
                self.sample_tokens[row] += 1
                piece = streams[row].push(token)
                done[row] = streams[row].stopped
                if piece:
                    pieces[row].append(piece)
                    if live:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
        for row, stream in enumerate(streams):
            rest = stream.flush()
            pieces[row].append(rest)
            if live and rest:
                sys.stdout.write(rest)
        return ["".join(p) for p in pieces]
