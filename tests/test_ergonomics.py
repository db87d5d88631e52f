"""Config files, live metrics and samples, `models show`, completion, and terminal output."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run, snapshot

from gptcli.cli.chart import axis_decimals
from gptcli.cli.training import TrainProgress
from gptcli.config import TrainConfig, to_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ESCAPE = "\x1b"
SGR = re.compile(r"\x1b\[[0-9;]*m")  # colours and text styles


def write_config(path: Path, **values: object) -> Path:
    path.write_text(to_toml(values), encoding="utf-8")
    return path


def test_config_file_then_command_line(home: Path, corpus: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "run.toml",
        inputs=[str(corpus)],
        name="fromfile",
        preset="tiny",
        tokenizer="char",
        block_size=32,
        max_steps=4,
        batch_size=4,
        eval_every=2,
        quiet=True,
    )
    summary = json.loads(
        run("train", "--config", str(config), "--batch-size", "8", "--json").stdout
    )
    assert summary["name"] == "fromfile" and summary["steps"] == 4  # from the file
    assert summary["tokens"] == 4 * 8 * 32  # the command line's batch size won
    stored = json.loads((home / "models/fromfile/train.json").read_text())["config"]
    assert stored["batch_size"] == 8 and stored["max_steps"] == 4 and stored["tokenizer"] == "char"
    assert stored["inputs"] == [str(corpus.resolve())]

    # --print-config prints the resolved settings, trains nothing, and reads back the same
    before = snapshot(home)
    printed = run("train", "--config", str(config), "--max-steps", "7", "--print-config").stdout
    assert snapshot(home) == before
    values = tomllib.loads(printed)
    assert values["max_steps"] == 7 and values["batch_size"] == 4 and values["name"] == "fromfile"
    assert values["lr"] == TrainConfig().lr  # defaults are written out, so a rerun is exact
    assert "json" not in values and "quiet" not in values and "config" not in values
    saved = tmp_path / "saved.toml"
    saved.write_text(printed)
    assert run("train", "--config", str(saved), "--print-config").stdout == printed
    # a run from the printed file is the run it describes
    again = run("train", "--config", str(saved), "--name", "again", "--json").stdout
    assert json.loads(again)["steps"] == 7


def test_settings_leave_what_preset_auto_chooses_to_it(
    home: Path, corpus: Path, tmp_path: Path
) -> None:
    # a short CPU budget: --preset auto picks micro with its own batch size and rates
    args = [str(corpus), "--tokenizer", "char", "--max-time", "60s", "--max-steps", "3"]
    printed = run("train", *args, "--print-config").stdout
    chosen = ["batch_size", "lr", "muon_lr", "warmup_steps"]
    assert not set(chosen) & tomllib.loads(printed).keys()
    assert printed.splitlines()[-1].startswith(f"# left to --preset auto: {', '.join(chosen)} ")
    run("train", *args, "--name", "first", "--quiet")
    first = json.loads((home / "models/first/train.json").read_text())
    assert first["train"]["batch_size"] == 8 and first["train"]["lr"] == 1e-2  # not 16, 3e-3
    # the stored settings (what `models show` prints as a file for --config) run the same run
    settings = write_config(tmp_path / "again.toml", **{**first["config"], "name": "again"})
    run("train", "--config", str(settings), "--quiet")
    again = json.loads((home / "models/again/train.json").read_text())
    assert again["train"] == first["train"]
    # a batch size given is written out, and then the shape leaves it alone
    printed = run("train", *args, "--batch-size", "4", "--lr", "1e-3", "--print-config").stdout
    values = tomllib.loads(printed)
    assert values["batch_size"] == 4 and values["lr"] == 1e-3 and values["muon_lr"] == 0.02
    assert "# left to" not in printed


def test_config_file_errors(home: Path, corpus: Path, tmp_path: Path) -> None:
    bad_key = write_config(tmp_path / "a.toml", max_steps=3, bogus=1)
    result = run("train", str(corpus), "--config", str(bad_key), code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "'bogus'" in lines[0] and "a.toml" in lines[0]
    bad_type = write_config(tmp_path / "b.toml", batch_size="many")
    result = run("train", str(corpus), "--config", str(bad_type), code=1)
    assert "b.toml: batch_size must be a whole number" in result.stderr
    broken = tmp_path / "c.toml"
    broken.write_text("max_steps = = 3\n")
    assert "not valid TOML" in run("train", "--config", str(broken), code=1).stderr
    assert "no such file" in run("train", "--config", str(tmp_path / "none.toml"), code=1).stderr
    assert "config" in run("train", code=2).output  # no inputs: a usage error names --config
    assert not (home / "models").exists()


def test_finetune_reads_a_config_file(trained_home: Path, corpus: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "ft.toml", base="tiny", inputs=[str(corpus)], name="ft", max_time="30s"
    )
    values = tomllib.loads(run("finetune", "--config", str(config), "--print-config").stdout)
    assert values["base"] == "tiny" and values["name"] == "ft" and values["max_time"] == "30s"
    assert values["lr"] == 3e-4 and "max_steps" not in values  # fine-tuning defaults, time-bound
    no_name = write_config(tmp_path / "ft2.toml", base="tiny", inputs=[str(corpus)])
    assert "--name" in run("finetune", "--config", str(no_name), code=2).output


def test_metrics_grow_during_the_run_and_models_show(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train_json = home / "models" / "live" / "train.json"
    seen: list[tuple[int, int]] = []
    samples: list[tuple[int, str]] = []
    original = TrainProgress.on_eval

    def on_eval(self: TrainProgress, stats: object) -> None:
        history = json.loads(train_json.read_text())["history"]
        seen.append((stats.step, len(history)))  # type: ignore[attr-defined]
        original(self, stats)

    monkeypatch.setattr(TrainProgress, "on_eval", on_eval)
    monkeypatch.setattr(
        TrainProgress, "on_sample", lambda self, step, text: samples.append((step, text))
    )
    args = ["--name", "live", "--tokenizer", "char", "--max-steps", "6", *TINY]
    run("train", str(corpus), *args, "--eval-every", "2", "--sample-every", "3")
    # the file is written at each evaluation, before the model is saved at the end
    assert seen == [(0, 1), (2, 2), (4, 3), (6, 4)]
    assert [step for step, _ in samples] == [3, 6]
    prompt = corpus.read_text().split("\n", 1)[0].split()[:4]
    assert all(text.startswith(" ".join(prompt)) for _, text in samples)

    shown = json.loads(run("models", "show", "live", "--json").stdout)
    documented = {
        "name", "path", "default", "weights", "kind", "task", "base", "source", "family",
        "preset", "params", "layers", "heads", "width", "context", "vocab_size", "labels",
        "tokenizer", "data", "data_files", "steps", "tokens", "seconds", "train_loss",
        "val_loss", "kept_val_loss", "stopped", "kept", "created", "size_bytes", "weights_bytes",
        "train_state_bytes", "config", "history", "points", "inference_dtype",
    }  # fmt: skip
    assert set(shown) == documented
    assert shown["kind"] == "train" and shown["default"] and shown["weights"]
    assert shown["steps"] == 6 and shown["stopped"] == "max_steps"
    assert shown["data"]["files"] == 1 and shown["data"]["train_tokens"] > 0
    assert [h["step"] for h in shown["history"]] == [0, 2, 4, 6]
    assert set(shown["history"][-1]) == {
        "step",
        "tokens",
        "seconds",
        "train_loss",
        "val_loss",
        "lr",
    }
    assert shown["config"]["max_steps"] == 6 and shown["config"]["sample_every"] == 3
    assert shown["val_loss"] == shown["history"][-1]["val_loss"]

    text = run("models", "show", "live").stdout
    assert "train loss" in text and "validation loss" in text and "step" in text
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in text)  # the braille curve
    from gptcli.cli.compare import loss_series

    # drawn: the train loss of each point of metrics.jsonl, the validation loss of each evaluation
    losses = [loss for series in loss_series(shown) for _, loss in series]
    digits = axis_decimals(min(losses), max(losses))  # the loss axis, as precise as it needs
    assert f"{max(losses):.{digits}f} ┤" in text and f"{min(losses):.{digits}f} ┤" in text
    assert "max_steps = 6" in text  # the settings, as --config reads them
    listed = json.loads(run("models", "list", "--json").stdout)["models"]
    assert listed[0]["name"] == "live" and listed[0]["val_loss"] == shown["val_loss"]


def test_a_run_before_its_first_checkpoint_is_shown(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shown: list[dict] = []
    original = TrainProgress.on_eval

    def on_eval(self: TrainProgress, stats: object) -> None:
        if stats.step == 4:  # type: ignore[attr-defined]
            shown.append(json.loads(run("models", "show", "early", "--json").stdout))
            shown.append({"list": run("models", "list").stdout})
        original(self, stats)

    monkeypatch.setattr(TrainProgress, "on_eval", on_eval)
    run("train", str(corpus), "--name", "early", "--tokenizer", "char", "--max-steps", "6", *TINY,
        "--eval-every", "2")  # fmt: skip
    during, listing = shown
    assert not during["weights"] and during["stopped"] == "running" and during["steps"] == 4
    assert len(during["history"]) == 3 and during["params"] is None
    assert "early" in listing["list"] and "(training)" in listing["list"]


def test_a_run_that_fails_before_saving_leaves_nothing(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gptcli.errors import GptError

    def on_eval(self: TrainProgress, stats: object) -> None:
        assert (home / "models/doomed/train.json").is_file()  # the metrics were there
        if stats.step == 2:  # type: ignore[attr-defined]
            raise GptError("something went wrong")

    monkeypatch.setattr(TrainProgress, "on_eval", on_eval)
    result = run("train", str(corpus), "--name", "doomed", "--tokenizer", "char", "--max-steps",
                 "6", *TINY, "--eval-every", "2", code=1)  # fmt: skip
    assert result.stderr == "error: something went wrong\n"
    assert not (home / "models/doomed").exists()


def test_force_leaves_the_old_model_alone_until_the_first_checkpoint(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("train", str(corpus), "--name", "m", "--tokenizer", "char", "--max-steps", "2", *TINY)
    old = (home / "models/m/train.json").read_text()
    during: list[str] = []
    original = TrainProgress.on_eval

    def on_eval(self: TrainProgress, stats: object) -> None:
        during.append((home / "models/m/train.json").read_text())
        original(self, stats)

    monkeypatch.setattr(TrainProgress, "on_eval", on_eval)
    run("train", str(corpus), "--name", "m", "--tokenizer", "char", "--max-steps", "4", *TINY,
        "--eval-every", "2", "--force")  # fmt: skip
    assert during[:2] == [old, old]  # steps 0 and 2: the replaced model's own file
    assert json.loads((home / "models/m/train.json").read_text())["result"]["steps"] == 4


def test_samples_are_off_on_tiny_budgets() -> None:
    from gptcli.monitor import Sampler, default_sample_prompt, sample_every

    assert sample_every(TrainConfig(max_steps=300)) == 0
    assert sample_every(TrainConfig(max_time=30)) == 0
    assert sample_every(TrainConfig()) is None  # 2000 steps: ten samples over the run
    assert sample_every(TrainConfig(max_time=600)) is None
    assert sample_every(TrainConfig(max_steps=10, sample_every=5)) == 5
    sampler = Sampler(None, None, "", None)  # type: ignore[arg-type]

    class Stats:
        def __init__(self, step: int, progress: float) -> None:
            self.step, self.progress = step, progress

    due = [s for s in range(1, 101) if sampler.due(Stats(s, s / 100))]
    assert due == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert default_sample_prompt("\nThe Baker and the Brown Hen\n\nOnce") == "The Baker and the"
    assert default_sample_prompt("鄭伯克段於鄢\n《左傳》") == "鄭伯克段於鄢"


def test_no_escapes_off_a_terminal_or_with_no_color(
    home: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    result = run("train", str(corpus), "--name", "c", "--tokenizer", "char", "--max-steps", "4",
                 "--preset", "tiny", "--block-size", "32", "--batch-size", "8", "--eval-every",
                 "2", "--sample-every", "2")  # fmt: skip
    assert "sample:" in result.stderr and "step 2" in result.stderr
    commands = [
        ["models", "list"],
        ["models", "show", "c"],
        ["eval", "c"],
        ["tokenize", "encode", "Once upon", "-m", "c"],
        ["generate", "Once", "-n", "5", "--stats"],
    ]
    for args in commands:  # CliRunner's streams are not terminals
        assert ESCAPE not in run(*args).output, args
    assert ESCAPE not in result.output

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the streams as a terminal
    assert SGR.search(run("models", "show", "c").output)  # so the test can see colour
    monkeypatch.setenv("NO_COLOR", "1")
    for args in commands:
        output = run(*args).output
        assert not SGR.search(output), args
        if args[0] != "eval":  # eval's progress bar moves the cursor; nothing else may
            assert ESCAPE not in output, args
    assert "|" in run("tokenize", "encode", "Once upon", "-m", "c").stdout  # token boundaries
    trained = run("train", str(corpus), "--name", "d", "--tokenizer", "char", "--max-steps", "2",
                  "--preset", "tiny", "--block-size", "32", "--batch-size", "8")  # fmt: skip
    assert not SGR.search(trained.output)  # the progress bar moves the cursor, without colour


def test_model_names_complete_from_the_store(trained_home: Path) -> None:
    from typer.testing import CliRunner

    from gptcli.cli import app
    from gptcli.cli.options import complete_model_name

    assert complete_model_name("ti") == ["tiny"] and complete_model_name("x") == []
    for words in ("gpt generate -m ", "gpt eval ", "gpt models show t", "gpt finetune "):
        env = {"_GPT_COMPLETE": "complete_bash", "COMP_WORDS": words}
        env["COMP_CWORD"] = str(len(words.split()) - (0 if words.endswith(" ") else 1))
        result = CliRunner().invoke(app, [], env=env, prog_name="gpt")
        assert result.stdout.split() == ["tiny"], (words, result.output)
    if shutil.which("bash"):  # the shell is detected from the parent process
        # (a compound command, so that bash stays the parent instead of exec-ing python)
        shown = subprocess.run(
            ["bash", "-c", f"'{sys.executable}' -m gptcli --show-completion; exit $?"],
            capture_output=True,
            text=True,
        )
        assert "_GPT_COMPLETE=complete_bash" in shown.stdout, (shown.returncode, shown.stderr)
    # completion runs on each Tab: it must not import torch
    probe = (
        "import os, sys; os.environ.update(_GPT_COMPLETE='complete_bash', "
        "COMP_WORDS='gpt generate -m ', COMP_CWORD='3')\n"
        "from gptcli.cli import app\n"
        "try:\n    app(prog_name='gpt')\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["tiny", "False"]


def test_plot_writes_a_png_or_says_how_to_get_matplotlib(
    trained_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    picture = tmp_path / "loss.png"
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
        result = run("models", "show", "tiny", "--plot", str(picture), code=1)
    assert "pip install 'gptcli[plot]'" in result.stderr and not picture.exists()
    run("models", "show", "tiny", "--plot", str(picture))
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_chart_draws_both_series() -> None:
    from gptcli.cli.chart import VAL_MARK, loss_chart

    train = [(step, 5.0 - step / 50) for step in range(0, 101, 10)]
    val = [(step, 5.2 - step / 60) for step in range(0, 101, 20)]
    lines = loss_chart(train, val, width=40, height=8).plain.splitlines()
    assert lines[1].lstrip().startswith("5.20") and lines[8].lstrip().startswith("3.00")
    plot = "\n".join(lines[1:9])
    assert plot.count(VAL_MARK) == len(val)
    assert "0" in lines[10] and "100" in lines[10] and "step" in lines[10]
    # the line falls: its dots near the top lie left of those in the bottom row

    def braille_columns(line: str) -> list[int]:
        return [i for i, ch in enumerate(line) if 0x2800 < ord(ch) <= 0x28FF]

    top, bottom = braille_columns(lines[2]), braille_columns(lines[8])
    assert top and bottom and max(top) < min(bottom)
    assert "fewer than two" in loss_chart([(0, 1.0)], []).plain
