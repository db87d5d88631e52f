"""`gpt generate`: continue a prompt, streaming text to stdout as it is produced."""

from __future__ import annotations

import random
import sys
from typing import Annotated

import typer

from gptcli.cli.console import err, print_json

HELP = """Continue a prompt with a model (the default one unless -m).

The prompt comes from stdin when omitted or '-'.

Example: gpt generate "Once upon a time" -n 200 --temperature 0.8
"""

ModelOption = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model name or directory (default: the store's default, the last trained).",
    ),
]


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
    temperature: Annotated[float, typer.Option(help="Sampling temperature; 0 = greedy.")] = 0.8,
    top_k: Annotated[int | None, typer.Option(help="Sample from the k most likely tokens.")] = None,
    top_p: Annotated[
        float | None,
        typer.Option(help="Nucleus sampling: smallest set with this probability mass, in (0, 1]."),
    ] = None,
    min_p: Annotated[
        float | None,
        typer.Option(help="Drop tokens below this fraction of the top token's probability."),
    ] = None,
    repetition_penalty: Annotated[
        float, typer.Option(help="Penalty > 1 discourages repeats.")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Random seed: same seed, same text.")] = None,
    num_samples: Annotated[int, typer.Option(help="Number of continuations.")] = 1,
    stop: Annotated[list[str] | None, typer.Option(help="Stop at this text (repeatable).")] = None,
    ignore_eos: Annotated[
        bool, typer.Option("--ignore-eos", help="Do not stop at end-of-text.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
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
    from gptcli.generate import GenerationStats, generate_tokens
    from gptcli.store import ModelStore
    from gptcli.tokenizer import StreamDecoder
    from gptcli.train import pick_device

    loaded = load_model(ModelStore().resolve(model), pick_device(device))
    tok = loaded.tokenizer
    ids = tok.encode(text)
    if not ids:
        if tok.eot_id is None:
            raise GptError("empty prompt, and the tokenizer has no end-of-text token to start from")
        ids = [tok.eot_id]
    stop_ids = frozenset() if ignore_eos or tok.eot_id is None else frozenset({tok.eot_id})
    stops = [s for s in (stop or []) if s]
    live = stream and not json_out
    base_seed = seed if seed is not None else random.randrange(2**62)
    results = []
    for index in range(num_samples):
        generator = torch.Generator(device=next(loaded.model.parameters()).device)
        generator.manual_seed(base_seed + index)
        run = GenerationStats()
        decoder = StreamDecoder(tok)
        pieces: list[str] = []
        pending = ""  # held back while it could be the start of a stop string
        if live:
            if index:
                sys.stdout.write("\n\n")
            sys.stdout.write(text)
            sys.stdout.flush()
        for token in generate_tokens(
            loaded.model, ids, max_new_tokens, settings, generator, stop_ids, run
        ):
            pending += decoder.push(token)
            emit, pending, stopped = split_at_stop(pending, stops)
            pieces.append(emit)
            if live and emit:
                sys.stdout.write(emit)
                sys.stdout.flush()
            if stopped:
                break
        else:
            tail, _, _ = split_at_stop(pending + decoder.flush(), stops, final=True)
            pieces.append(tail)
            if live and tail:
                sys.stdout.write(tail)
        completion = "".join(pieces)
        if live:
            sys.stdout.write("\n")
            sys.stdout.flush()
        elif not json_out:
            sys.stdout.write(("\n\n" if index else "") + text + completion + "\n")
        results.append(
            {
                "text": completion,
                "prompt_tokens": run.prompt_tokens,
                "new_tokens": run.new_tokens,
                "prefill_tokens_per_second": round(run.prefill_tps, 2),
                "decode_tokens_per_second": round(run.decode_tps, 2),
            }
        )
        if stats:
            err.print(
                f"[dim]prompt {run.prompt_tokens} tokens at {run.prefill_tps:,.1f} tok/s, "
                f"generated {run.new_tokens} tokens at {run.decode_tps:,.1f} tok/s[/dim]"
            )
    if json_out:
        base = {"model": loaded.name, "prompt": text}
        print_json(base | results[0] if num_samples == 1 else base | {"samples": results})


def split_at_stop(text: str, stops: list[str], final: bool = False) -> tuple[str, str, bool]:
    """(text safe to emit, text held back, whether a stop string was found)."""
    if not stops:
        return text, "", False
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut >= 0:
        return text[:cut], "", True
    if final:
        return text, "", False
    hold = 0  # the longest suffix that is a prefix of some stop string
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return text[: len(text) - hold], text[len(text) - hold :], False
