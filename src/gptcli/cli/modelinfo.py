"""What `gpt models list` and `gpt models show` say about a model: its summary read from the
store's files (JSON and safetensors headers only, never the weights), and the printed details
with the loss curve. The commands themselves are in cli/models.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli.cli.console import out
from gptcli.errors import GptError


def summarize(path: Path, default: str | None = None) -> dict[str, Any]:
    """What the store knows of a model, from its JSON files alone (no weights loaded).

    A run still training before its first checkpoint has only train.json: its shape fields
    are None and `weights` is False.
    """
    from gptcli import hf
    from gptcli.config import ModelConfig, weights_mismatch
    from gptcli.metrics import METRICS_FILE, read_points
    from gptcli.record import read_record
    from gptcli.store import count_parameters, read_json, safetensors_header

    config: Any = None
    params = None
    if hf.is_hf_dir(path):
        config = hf.read_hf_config(path)
        params = hf.count_hf_parameters(path)
    elif (path / "config.json").is_file():
        config = ModelConfig.from_dict(read_json(path / "config.json"))
        header = safetensors_header(path / "model.safetensors")
        shapes = {k: v.get("shape") for k, v in header.items() if k != "__metadata__"}
        mismatch = weights_mismatch(config, shapes)
        if mismatch:
            raise GptError(f"{path}: {mismatch}")
        params = count_parameters(path / "model.safetensors")
    info = read_record(path)
    result = info.get("result", {})
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())

    def file_size(name: str) -> int | None:
        return (path / name).stat().st_size if (path / name).is_file() else None

    files = info.get("data", {}).get("files", [])
    paths = [f.get("path") if isinstance(f, dict) else f for f in files]

    def shape(field: str) -> Any:
        return getattr(config, field) if config is not None else None

    return {
        "name": path.name,
        "path": str(path),
        "default": path.name == default,
        "weights": config is not None,
        "kind": info.get("kind"),
        "task": info.get("task"),
        "base": (info.get("base") or {}).get("name"),
        "source": info.get("source"),
        "family": shape("family"),
        "preset": shape("preset"),
        "params": params,
        "layers": shape("n_layer"),
        "heads": shape("n_head"),
        "width": shape("n_embd"),
        "context": shape("block_size"),
        "vocab_size": shape("vocab_size"),
        "labels": shape("labels"),
        "tokenizer": info.get("tokenizer"),
        "data": data_summary(info.get("data", {})),
        "data_files": paths,
        "steps": result.get("steps"),
        "tokens": result.get("tokens"),
        "seconds": result.get("seconds"),
        "train_loss": result.get("train_loss"),
        "val_loss": result.get("val_loss"),
        "kept_val_loss": kept_val_loss(result),
        "stopped": result.get("stopped"),
        "kept": result.get("kept"),
        "created": info.get("created"),
        "size_bytes": size,
        "weights_bytes": file_size("model.safetensors"),
        "train_state_bytes": file_size("train_state.safetensors"),
        "config": info.get("config"),
        "history": info.get("history", []),
        "points": read_points(path / METRICS_FILE),
        "inference_dtype": cpu_inference_dtypes(),
    }


def kept_val_loss(result: dict[str, Any]) -> float | None:
    """The validation loss of the weights stored (keep-best may store an earlier step than the
    last evaluation, whose loss is `val_loss`); runs from before keep-best stored the last."""
    kept = result.get("kept")
    return kept.get("val_loss") if kept else result.get("val_loss")


def cpu_inference_dtypes() -> dict[str, str]:
    """What `--dtype auto` and `--dtype int8` run on this machine's CPU (the inference dtype
    policy's answer, found without importing torch)."""
    from gptcli.inference.precision import INT8_ON_CPU, cpu_auto_dtype
    from gptcli.kernels import describe

    return {
        "auto": cpu_auto_dtype(),
        "int8": INT8_ON_CPU,
        "decode": describe(),
    }


def damage(error: str) -> str:
    """A few words for `gpt models list` on what is wrong with a model (`models show`: all)."""
    if "the weights have" in error:
        return "wrong config.json"
    if error.startswith("model config:"):
        return "impossible config"
    if "model.safetensors" in error:
        return "weights missing" if "missing" in error else "bad weights file"
    for name in ("config.json", "train.json"):
        if name in error:
            return f"{name} missing" if "missing" in error else f"bad {name}"
    return "unreadable"


def data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Files, bytes, and the tokens or examples on each side of the split."""
    files = data.get("files", [])
    summary: dict[str, Any] = {"files": len(files)}
    sizes = [f.get("bytes") for f in files if isinstance(f, dict)]
    if sizes and all(isinstance(b, int) for b in sizes):
        summary["bytes"] = sum(sizes)
    described = [f for f in files if isinstance(f, dict)]
    if described and data.get("cache_key"):  # text data: its formats and documents
        summary["formats"] = sorted({f.get("format", "text") for f in described})
        if "documents" in data:
            summary["documents"] = data["documents"]
        elif not data.get("shards"):
            summary["documents"] = sum(f.get("documents", 1) for f in described)
    if data.get("prepared"):
        summary["prepared"] = data["prepared"]
    for key in ("train_tokens", "val_tokens", "train_examples", "val_examples"):
        if key in data:
            summary[key] = data[key]
    return summary


def human_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def human_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def print_summary(row: dict[str, Any]) -> None:
    from rich.text import Text

    from gptcli.cli.chart import loss_chart
    from gptcli.cli.compare import loss_series
    from gptcli.config import to_toml

    lines: list[tuple[str, str]] = []
    kind = row["kind"]
    if kind == "finetune":
        lines.append(("kind", f"fine-tuned from {row['base']} ({row['task']})"))
    elif kind == "import":
        lines.append(("kind", f"imported from {row['source']}"))
    elif kind == "train":
        lines.append(("kind", "trained from scratch"))
    if row["weights"]:
        lines.append(
            (
                "parameters",
                f"{human_count(row['params'])} ({row['params']:,}): {row['layers']} layers, "
                f"{row['heads']} heads, width {row['width']}",
            )
        )
        lines.append(("family", f"{row['family']}, preset {row['preset'] or '-'}"))
        vocab = f"vocabulary {row['vocab_size']:,}"
        lines.append(("tokenizer", f"{row['tokenizer']}, {vocab}" if row["tokenizer"] else vocab))
        lines.append(("context", f"{row['context']:,} tokens"))
        if row["labels"]:
            lines.append(("labels", ", ".join(row["labels"])))
        dtypes = row["inference_dtype"]
        why = "native bfloat16" if dtypes["auto"] == "bfloat16" else "no native bfloat16"
        lines.append(
            (
                "inference",
                f"--dtype auto: {dtypes['auto']} on this CPU ({why}); "
                "int8: int8 weights, bfloat16 activations",
            )
        )
        lines.append(("decode", f"one row on the CPU: {dtypes['decode']}"))
    else:
        lines.append(("weights", "none yet: the run has not saved a checkpoint"))
    data = row["data"]
    if data["files"]:
        parts = [f"{data['files']} file{'s' if data['files'] != 1 else ''}"]
        if data.get("formats"):
            parts[0] += f" ({', '.join(data['formats'])})"
        if "bytes" in data:
            parts[0] += f", {data['bytes']:,} bytes"
        if "documents" in data:
            n = data["documents"]
            parts[0] += f", {n:,} document{'s' if n != 1 else ''}"
        for key, unit in (("train", "training"), ("val", "validation")):
            for what in ("tokens", "examples"):
                if f"{key}_{what}" in data:
                    parts.append(f"{data[f'{key}_{what}']:,} {unit} {what}")
        lines.append(("data", "; ".join(parts)))
        if data.get("prepared"):
            lines.append(("", f"prepared corpus {data['prepared']}, made from:"))
        lines.extend(("", str(f)) for f in row["data_files"][:5])
        if len(row["data_files"]) > 5:
            lines.append(("", f"... and {len(row['data_files']) - 5} more"))
    if row["steps"] is not None:
        tokens = f", {row['tokens']:,} tokens" if row["tokens"] is not None else ""
        stopped = row["stopped"]
        state = "still running" if stopped == "running" else f"stopped at {stopped}"
        lines.append(
            ("training", f"{row['steps']:,} steps{tokens} in {human_time(row['seconds'])}, {state}")
        )
        lines.extend(loss_lines(row))
        if row["kept"]:
            from gptcli.record import describe_kept

            lines.append(("stored", describe_kept(row["kept"]).removeprefix("kept ")))
    if row["created"]:
        lines.append(("created", row["created"].replace("T", " ")))
    lines.append(("size", f"{human_count(row['size_bytes'])}B on disk, {row['path']}"))
    if row["weights_bytes"] is not None:
        lines.append(("", f"weights {human_count(row['weights_bytes'])}B"))
    if row["train_state_bytes"] is not None:
        state = human_count(row["train_state_bytes"])
        lines.append(("", f"training state {state}B, for --resume (gpt models prune drops it)"))
    elif row["weights"]:
        lines.append(("", "no training state: --resume cannot continue this model"))

    title = Text(row["name"], style="bold")
    if row["default"]:
        title.append(" (the default model)")
    out.print(title)
    for key, value in lines:
        out.print(Text(f"  {key:<11}", style="bold") + Text(value))
    if row["history"] or row["points"]:
        out.print()
        train, val = loss_series(row)
        width = max(20, min(72, out.width - 14))
        out.print(loss_chart(train, val, width=width, indent=2))
    if row["config"]:
        out.print()
        out.print(Text("  settings", style="bold") + Text(" (a file for --config)"))
        for line in to_toml(row["config"]).splitlines():
            out.print(Text("    " + line))


def fmt_loss(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def loss_lines(row: dict[str, Any]) -> list[tuple[str, str]]:
    """`models show`'s losses: the stored weights' first, then the last evaluation's when
    keep-best stored an earlier step."""
    last = f"train {fmt_loss(row['train_loss'])}, validation {fmt_loss(row['val_loss'])}"
    kept = row["kept"]
    if not kept or kept.get("step") in (None, row["steps"]):
        return [("losses", last)]
    at = [h for h in row["history"] if h.get("step") == kept["step"]]
    train = fmt_loss(at[-1].get("train_loss")) if at else "-"
    stored = f"train {train}, validation {fmt_loss(kept.get('val_loss'))} (step {kept['step']})"
    return [("losses", stored), ("", f"last evaluation (step {row['steps']}): {last}")]
