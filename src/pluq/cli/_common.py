"""What every command shares: exit codes, the error boundary, finding the app, options.

A mistake a person makes (a module that does not import, a bad URL, bad JSON, an unknown
task or dead-letter id) ends the command with one line on stderr and a non-zero exit code,
never a traceback: `PluqGroup.invoke` is the one place that turns errors into that line.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import os
import sys
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer
from typer.core import TyperGroup

from pluq.errors import ConfigurationError, NotRegistered, PluqError

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


class CliError(Exception):
    """A mistake or a failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, *, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


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


def _add_cwd_to_path() -> None:
    # Like `python -m` and Celery: the folder you run pluq from is importable.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _module_name(spec: str) -> str:
    """`tasks.py` or `pkg/tasks.py` (a file people type) becomes `tasks` / `pkg.tasks`."""
    if spec.endswith(".py"):
        return spec[:-3].replace(os.sep, ".").replace("/", ".").lstrip(".")
    return spec


def _import(module_name: str, spec: str) -> Any:
    """The module, or None when no module of that name exists (not one it imports)."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            return None
        raise CliError(
            f"-A {spec}: importing {module_name} failed: {exc}; install what it needs",
            code=EXIT_USAGE,
        ) from exc
    except ConfigurationError as exc:
        raise CliError(f"-A {spec}: {exc}", code=EXIT_USAGE) from exc
    except Exception as exc:
        raise CliError(
            f"-A {spec}: importing {module_name} raised {type(exc).__name__}: {exc} "
            f"(python -c 'import {module_name}' shows the traceback)",
            code=EXIT_USAGE,
        ) from exc


def _no_module(module_name: str, spec: str) -> CliError:
    return CliError(
        f"-A {spec}: there is no module named {module_name!r} in {os.getcwd()} or on "
        f"sys.path; run pluq from the folder that holds it, or fix the name",
        code=EXIT_USAGE,
    )


def _apps_in(module: Any) -> list[str]:
    from pluq.app import App

    return [name for name, value in vars(module).items() if isinstance(value, App)]


def load_app(spec: str) -> App:
    """The App that `-A spec` names: `module:attr`, `module:factory`, or `module`.

    With a module alone, its attribute `app` is taken, else the one App it holds.
    """
    from pluq.app import App

    spec = spec.strip()
    module_part, colon, attr = spec.partition(":")
    module_name = _module_name(module_part)
    if not module_name or (colon and not attr):
        raise CliError(
            f"-A {spec!r}: write it as module:app (or just module), e.g. -A tasks:app",
            code=EXIT_USAGE,
        )
    _add_cwd_to_path()
    module = _import(module_name, spec)
    if module is None and not colon and "." in module_name:
        # "proj.app" may name the attribute `app` of module `proj`, as in Celery.
        parent, _, attr = module_name.rpartition(".")
        module = _import(parent, spec)
        if module is not None:
            module_name = parent
    if module is None:
        raise _no_module(module_name, spec)

    if not attr:
        candidate = getattr(module, "app", None)
        if isinstance(candidate, App):
            return candidate
        found = _apps_in(module)
        if len(found) == 1:
            app: App = getattr(module, found[0])
            return app
        if not found:
            raise CliError(
                f"-A {spec}: module {module_name} has no pluq.App; create one there "
                f"(app = pluq.App(...)) or name it: -A {module_name}:name",
                code=EXIT_USAGE,
            )
        raise CliError(
            f"-A {spec}: module {module_name} has several apps ({', '.join(found)}); "
            f"choose one: -A {module_name}:{found[0]}",
            code=EXIT_USAGE,
        )

    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            found = _apps_in(module)
            hint = f"; its apps: {', '.join(found)}" if found else ""
            raise CliError(
                f"-A {spec}: module {module_name} has no attribute {attr!r}{hint}",
                code=EXIT_USAGE,
            )
        target = getattr(target, part)
    if inspect.isfunction(target):
        # A factory: `-A module:create_app`.
        try:
            target = target()
        except ConfigurationError as exc:
            raise CliError(f"-A {spec}: {exc}", code=EXIT_USAGE) from exc
    if not isinstance(target, App):
        raise CliError(
            f"-A {spec}: {module_name}.{attr} is not a pluq.App (its type is "
            f"{type(target).__name__})",
            code=EXIT_USAGE,
        )
    return target


def _check_url(url: str) -> None:
    from pluq.registry import URL, transport_for

    transport_for(URL.parse(url))  # ConfigurationError names the problem and the fix


def _repoint(app: App, broker: str | None, backend: str | None) -> None:
    """Point an app loaded with -A at the broker/backend given on the command line."""
    from pluq.app import App

    new_broker = broker or app.broker_url
    if backend:
        new_backend = backend
    elif broker and app.backend_url == app.broker_url:
        new_backend = broker
    else:
        new_backend = app.backend_url
    # A throwaway App runs every check the real one ran (URLs, unsigned pickle on a
    # network transport) against the new URLs.
    App(
        new_broker,
        backend=new_backend,
        serializer=app.serializer.name,
        secret=list(app.keys) or None,
        allow_unsigned_pickle=app.allow_unsigned_pickle,
    )
    app.close()
    app.broker_url = new_broker
    app.backend_url = new_backend


def open_app(
    spec: str | None,
    broker: str | None = None,
    backend: str | None = None,
    *,
    serializer: str = "cloudpickle",
) -> App:
    """The app of `-A` (re-pointed by --broker/--backend), or a bare one on the broker.

    A bare app has no tasks: it can queue by name, read results and administer queues,
    and a worker built on it runs tasks that travel by value (defined in `__main__`).
    """
    from pluq.app import App

    for url in (broker, backend):
        if url:
            _check_url(url)
    if spec:
        app = load_app(spec)
        if broker or backend:
            _repoint(app, broker, backend)
    else:
        app = App(broker, backend=backend, serializer=serializer)
    _opened.append(app)
    return app


def require_shared(url: str, what: str) -> None:
    """Refuse a transport that lives in one process for a command that needs two."""
    from pluq.registry import URL, shared_between_processes

    parsed = URL.parse(url)
    if not shared_between_processes(parsed):
        raise CliError(
            f"{parsed.redacted} keeps its queues inside one process, so {what} would never "
            f"meet the program that queues the tasks; use a transport that processes share: "
            f"sqlite:///pluq.db (the default), file:///some/dir or redis://host:6379/0",
            code=EXIT_USAGE,
        )


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


def split_names(values: Iterable[str] | None) -> list[str]:
    """`-Q a,b -Q c` -> ["a", "b", "c"], without blanks or repeats, in order."""
    names: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


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
