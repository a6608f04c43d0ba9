"""The `pluq` commands, on typer: the group, each command in its help panel, `--version`.

Imported by `pluq.cli.main` for any command line but the usual `pluq worker` where no
person reads it (see `pluq.cli._lean`), and by tests through `pluq.cli.cli`.
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
from pluq.cli._common import EXIT_OK, PluqGroup

__all__ = ["cli"]

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
