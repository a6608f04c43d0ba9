"""The `pluq` command line (typer for the commands, rich for what people read).

    pluq worker -A tasks:app [-c 4] [-Q default,high] [--pool processes|threads|solo]
                [--burst] [--beat] [--loglevel INFO] [--json-logs]
    pluq beat -A tasks:app
    pluq status (-A tasks:app | --broker URL) [--watch]
    pluq result TASK_ID
    pluq call tasks.add --args '[1, 2]' [--kwargs '{}'] [--queue q] [--countdown s]
    pluq dlq list | show ID | retry [ID...] | purge [ID...]
    pluq purge QUEUE
    pluq demo

`-A` also reads $PLUQ_APP; without -A, `--broker` defaults to $PLUQ_BROKER, else
`sqlite:///pluq.db` in the current directory. Each command lives in its own module and
imports rich and the rest of pluq's machinery only when it runs, so `pluq --help` is fast.

Exit codes (constants in `pluq.cli._common`): 0 done, 1 the command could not do its job
(no such dead letter, a transport error), 2 a usage mistake (option, -A, URL, JSON, task
name), 69 a feature this installation lacks, 130 a worker stopped by a second Ctrl-C.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pluq.cli import call as _call
from pluq.cli import demo as _demo
from pluq.cli import dlq as _dlq
from pluq.cli import result as _result
from pluq.cli import status as _status
from pluq.cli import worker as _worker
from pluq.cli._common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    PluqGroup,
)

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "cli",
    "main",
]

cli = typer.Typer(
    cls=PluqGroup,
    name="pluq",
    help="pluq: tasks in the background, on a broker you choose (SQLite, files, Redis).\n\n"
    "Start with [bold]pluq demo[/bold].",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_RUN = "Run"
_LOOK = "Inspect"
_ACT = "Act"

cli.command("worker", rich_help_panel=_RUN)(_worker.worker)
cli.command("beat", rich_help_panel=_RUN)(_worker.beat)
cli.command("demo", rich_help_panel=_RUN)(_demo.demo)
cli.command("status", rich_help_panel=_LOOK)(_status.status)
cli.command("result", rich_help_panel=_LOOK)(_result.result)
cli.add_typer(_dlq.dlq, name="dlq", rich_help_panel=_LOOK)
cli.command("call", rich_help_panel=_ACT)(_call.call)
cli.command("purge", rich_help_panel=_ACT)(_dlq.purge)


def _version(value: bool) -> None:
    if value:
        from pluq import __version__

        typer.echo(f"pluq {__version__}")
        raise typer.Exit(EXIT_OK)


@cli.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print pluq's version and exit."
        ),
    ] = None,
) -> None:
    """pluq: tasks in the background, on a broker you choose (SQLite, files, Redis).

    Start with [bold]pluq demo[/bold]; then [bold]pluq worker -A yourmodule:app[/bold].
    """


def main() -> None:
    """The `pluq` console script (and `python -m pluq`).

    A real program, not a test calling the commands in its own process: `pluq worker`
    may replace this process with a lean one (see `pluq.worker._run`).
    """
    _worker.lean_exec = True
    cli(prog_name="pluq")
