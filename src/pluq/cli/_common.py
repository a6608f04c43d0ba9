"""What every command shares: exit codes, the error boundary, finding the app, options.

A mistake a person makes (a module that does not import, a bad URL, bad JSON, an unknown
task or dead-letter id) ends the command with one line on stderr and a non-zero exit code,
never a traceback: `PluqGroup.invoke` is the one place that turns errors into that line.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer
from typer.core import TyperGroup

from pluq.errors import ConfigurationError, NotRegistered, PluqError

# Finding the app is shared with the lean worker process, which makes `pluq worker`'s
# checks itself and never imports pluq.cli (its children would carry typer).
from pluq.worker._run import CliError, load_app, require_shared, split_names
from pluq.worker._run import open_app as _open_app

if TYPE_CHECKING:
    from pluq.app import App

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "AppOption",
    "BackendOption",
    "BrokerOption",
    "CliError",
    "JsonOption",
    "PluqGroup",
    "YesOption",
    "confirm",
    "did_you_mean",
    "fail",
    "load_app",
    "open_app",
    "parse_json",
    "require_existing",
    "require_shared",
    "split_names",
    "target_args",
    "warn",
]

EXIT_OK: Final = 0
"""The command did what it was asked."""
EXIT_FAILURE: Final = 1
"""The command could not do its job: no such record or dead letter, a transport error."""
EXIT_USAGE: Final = 2
"""The command line is wrong: an option, -A, a URL, JSON, a task name (click uses 2 too)."""
EXIT_UNAVAILABLE: Final = 69
"""A feature this installation does not have (sysexits' EX_UNAVAILABLE)."""
EXIT_INTERRUPTED: Final = 130
"""Stopped at once by a second Ctrl-C (128 + SIGINT, as shells report it)."""

DEFAULT_BROKER: Final = "sqlite:///pluq.db"


def _say(prefix: str, style: str, message: str) -> None:
    from rich.console import Console
    from rich.text import Text

    # soft_wrap: one logical line stays one line, whatever the terminal width.
    Console(stderr=True).print(Text(prefix, style=style) + Text(message), soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    """Print `error: message` on stderr and end the command with `code`."""
    _say("error: ", "bold red", " ".join(message.split()))
    raise typer.Exit(code)


def warn(message: str) -> None:
    """Print `warning: message` on stderr; the command goes on."""
    _say("warning: ", "bold yellow", " ".join(message.split()))


# The apps a command opened, closed when it ends (its connections and files).
_opened: list[App] = []


class PluqGroup(TyperGroup):
    """The command group: turns pluq's errors into one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            fail(exc.message, exc.code)
        except (ConfigurationError, NotRegistered) as exc:
            fail(str(exc), EXIT_USAGE)
        except PluqError as exc:
            fail(str(exc), EXIT_FAILURE)
        finally:
            while _opened:
                _opened.pop().close()


# -- options shared by the commands ------------------------------------------------------

AppOption = Annotated[
    str | None,
    typer.Option(
        "-A",
        "--app",
        envvar="PLUQ_APP",
        metavar="MODULE[:APP]",
        help="The app: module:attribute, or a module holding one pluq.App "
        "(found from the current directory).",
        show_envvar=True,
    ),
]
BrokerOption = Annotated[
    str | None,
    typer.Option(
        "--broker",
        "-b",
        metavar="URL",
        help="Broker URL, e.g. sqlite:///pluq.db, redis://host:6379/0, file:///dir. "
        "Overrides the app's. Without -A: $PLUQ_BROKER, else sqlite:///pluq.db.",
        show_default=False,
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="URL",
        help="Result backend URL, when it is not the broker's.",
        show_default=False,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print JSON for machines instead of a table.")
]
YesOption = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


class Pool(StrEnum):
    """The worker pools (`Worker(pool=...)`)."""

    processes = "processes"
    threads = "threads"
    solo = "solo"


# -- finding the app ---------------------------------------------------------------------


def open_app(
    spec: str | None,
    broker: str | None = None,
    backend: str | None = None,
    *,
    serializer: str = "cloudpickle",
) -> App:
    """`pluq.worker._run.open_app` (the app of `-A`, or a bare one), closed when the
    command ends."""
    app = _open_app(spec, broker, backend, serializer=serializer)
    _opened.append(app)
    return app


def require_existing(url: str) -> None:
    """Refuse to create an empty SQLite file just to report that it is empty."""
    from pluq.registry import URL

    parsed = URL.parse(url)
    if parsed.scheme != "sqlite" or parsed.host or not parsed.path[1:]:
        return  # not a plain SQLite file URL: the transport reports its own problems
    path = os.path.abspath(parsed.path[1:])
    if not os.path.exists(path):
        raise CliError(
            f"{parsed.redacted}: {path} does not exist, so nothing was ever queued there; "
            f"run pluq from the folder that holds it, or pass --broker (or -A)",
            code=EXIT_FAILURE,
        )


# -- small helpers -------------------------------------------------------------------------


def parse_json(option: str, text: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    """Parse an option's JSON value, checking it is an array (list) or an object (dict)."""
    example = "'[1, 2]'" if kind is list else '\'{"key": "value"}\''
    what = "array" if kind is list else "object"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(
            f"{option} is not valid JSON ({exc}): write a JSON {what}, e.g. {option} {example}",
            code=EXIT_USAGE,
        ) from exc
    if not isinstance(value, kind):
        raise CliError(
            f"{option} must be a JSON {what}, not {type(value).__name__}: e.g. {option} {example}",
            code=EXIT_USAGE,
        )
    return value


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for a near miss, else ""."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def target_args(app_spec: str | None, app: App) -> str:
    """The options that point another pluq command at the same app, for hints."""
    from pluq.registry import URL

    if app_spec:
        return f" -A {app_spec}" if app_spec != os.environ.get("PLUQ_APP") else ""
    if app.broker_url in (DEFAULT_BROKER, os.environ.get("PLUQ_BROKER")):
        return ""
    return f" --broker {URL.parse(app.broker_url).redacted}"


def confirm(question: str, yes: bool) -> None:
    """Go on if `--yes` was given or the person at the terminal agrees; else stop."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise CliError(
            f"{question} Add --yes to confirm (stdin is not a terminal)", code=EXIT_USAGE
        )
    if not typer.confirm(question, default=False):
        raise CliError("cancelled; nothing was changed", code=EXIT_FAILURE)
