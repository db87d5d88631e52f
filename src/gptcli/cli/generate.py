"""`gpt generate`: continue a prompt, streaming text to stdout as it is produced."""

from __future__ import annotations

import random
import sys
from typing import Annotated

import typer

from gptcli.cli.console import info, print_json
from gptcli.cli.options import ModelOption

HELP = """Continue a prompt with a model (the default one unless -m).

The prompt comes from stdin when omitted or '-'.

Example: gpt generate "Once upon a time" -n 200 --temperature 0.8
"""


# Sampling flags, shared with `gpt chat`.
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")]
TopKOption = Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")]
TopPOption = Annotated[
    float | None,
    typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1]."),
]
MinPOption = Annotated[
    float | None,
    typer.Option(help="Drop tokens below this fraction of the top token's probability."),
]
RepetitionPenaltyOption = Annotated[float, typer.Option(help="Penalty > 1 discourages repeats.")]
SeedOption = Annotated[int | None, typer.Option(help="Random seed: same seed, same text.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")]


def read_prompt(prompt: str | None) -> str:
    """The argument, or all of stdin when it is omitted or '-'."""
    from gptcli.errors import GptError

    if prompt is not None and prompt != "-":
        return prompt
    if sys.stdin.isatty():
        raise GptError("no prompt: give one as an argument or pipe it through stdin")
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise GptError("the prompt on stdin is not UTF-8 text") from None


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
    min_p: MinPOption = None,
    repetition_penalty: RepetitionPenaltyOption = 1.0,
    seed: SeedOption = None,
    num_samples: Annotated[int, typer.Option(help="Number of continuations.")] = 1,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this text (repeatable).")] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text.")
    ] = False,
    device: DeviceOption = "auto",
    stream: Annotated[
        bool, typer.Option("--stream/--no-stream", help="Print text as it comes.")
    ] = True,
    stats: Annotated[bool, typer.Option("--stats", help="Timings on stderr.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    from gptcli.errors import GptError
    from gptcli.sample import SamplingSettings

    settings = SamplingSettings(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        repetition_penalty=repetition_penalty,
    )
    if max_new_tokens < 0:
        raise GptError("--max-new-tokens must be 0 or more")
    if num_samples < 1:
        raise GptError("--num-samples must be at least 1")
    text = read_prompt(prompt)

    import torch

    from gptcli.checkpoint import load_model
    from gptcli.generate import GenerationStats, TextStream, generate_tokens
    from gptcli.store import ModelStore
    from gptcli.train import pick_device

    loaded = load_model(ModelStore().resolve(model), pick_device(device))
    tok = loaded.tokenizer
    ids = tok.encode(text)
    if not ids:
        if tok.eot_id is None:
            raise GptError("empty prompt, and the tokenizer has no end-of-text token to start from")
        ids = [tok.eot_id]
    stop_ids = frozenset() if ignore_eos or tok.eot_id is None else frozenset({tok.eot_id})
    stops = stop or []
    live = stream and not json_out
    base_seed = seed if seed is not None else random.randrange(2**62)
    results = []
    for index in range(num_samples):
        generator = torch.Generator(device=next(loaded.model.parameters()).device)
        generator.manual_seed(base_seed + index)
        run = GenerationStats()
        stream_text = TextStream(tok, stops)
        pieces: list[str] = []
        if live:
            if index:
                sys.stdout.write("\n\n")
            sys.stdout.write(text)
            sys.stdout.flush()
        for token in generate_tokens(
            loaded.model, ids, max_new_tokens, settings, generator, stop_ids, run
        ):
            pieces.append(stream_text.push(token))
            if live and pieces[-1]:
                sys.stdout.write(pieces[-1])
                sys.stdout.flush()
            if stream_text.stopped:
                break
        pieces.append(stream_text.flush())
        if live and pieces[-1]:
            sys.stdout.write(pieces[-1])
        completion = "".join(pieces)
        if live:
            sys.stdout.write("\n")
            sys.stdout.flush()
        elif not json_out:
            sys.stdout.write(("\n\n" if index else "") + text + completion + "\n")
        results.append({"text": completion} | run.to_dict())
        if stats:
            info(run.summary())
    if json_out:
        base = {"model": loaded.name, "prompt": text}
        print_json(base | results[0] if num_samples == 1 else base | {"samples": results})
