"""The `gpt` Typer app: one thin module per command, and the one place errors are formatted.

Nothing here imports torch: each command imports the core inside its body, so `gpt --help`
stays fast.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from gptcli import __version__
from gptcli.cli.usage import Command, Group, usage_error_line
from gptcli.errors import GptError


def fail(message: str, code: int = 1) -> typer.Exit:
    """Prints `error: message` as one line on stderr; returns the Exit to raise."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    return typer.Exit(code)


def is_cli_control(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in ("typer", "click")


class GptGroup(Group):
    """Turns every failure below it into `error: ...` and an exit code, never a traceback.

    Usage errors too: one line and exit 2, where typer would draw a panel.
    """

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            raise SystemExit(fail("aborted").exit_code) from None
        except Exception as exc:
            if not (is_cli_control(exc) and hasattr(exc, "format_message")):
                raise
            if type(exc).__name__ == "NoArgsIsHelpError":  # its help is printed already
                raise SystemExit(exc.exit_code) from None
            raise SystemExit(fail(usage_error_line(exc), exc.exit_code).exit_code) from None
        raise SystemExit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except GptError as exc:
            if os.environ.get("GPTCLI_DEBUG"):
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            if os.environ.get("GPTCLI_DEBUG"):
                raise
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            # the reader of our stdout went away (`gpt generate | head`): not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except MemoryError:
            raise fail("out of memory (try a smaller model, batch or context)") from None
        except Exception as exc:
            # exits, usage errors and --help travel as typer's (or click's) own exceptions
            if os.environ.get("GPTCLI_DEBUG") or is_cli_control(exc):
                raise
            raise fail(
                f"unexpected {type(exc).__name__}: {exc} (run with GPTCLI_DEBUG=1 for details)"
            ) from None


app = typer.Typer(
    cls=GptGroup,
    name="gpt",
    help="Train, fine-tune, sample from, chat with and measure small GPTs.\n\n"
    'Start with: gpt train corpus.txt, then gpt generate "Once upon a time".',
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"gpt {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Train, fine-tune, sample from, chat with and measure small GPTs."""


def register() -> None:
    from gptcli.cli import (
        chat,
        classify,
        finetune,
        generate,
        logs,
        models,
        serve,
        tokenize,
        train,
    )
    from gptcli.cli import eval as eval_cmd

    app.command("train", help=train.HELP, cls=Command)(train.train)
    app.command("finetune", help=finetune.HELP, cls=Command)(finetune.finetune)
    app.command("generate", help=generate.HELP, cls=Command)(generate.generate)
    app.command("chat", help=chat.HELP, cls=Command)(chat.chat)
    app.command("eval", help=eval_cmd.HELP, cls=Command)(eval_cmd.evaluate)
    app.command("classify", help=classify.HELP, cls=Command)(classify.classify)
    app.command("serve", help=serve.HELP, cls=Command)(serve.serve)
    app.add_typer(tokenize.app, name="tokenize")
    app.add_typer(models.app, name="models")
    app.add_typer(logs.app, name="logs")


register()


def main() -> None:
    app(prog_name="gpt")
