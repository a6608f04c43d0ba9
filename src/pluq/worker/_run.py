"""The lean `pluq worker` process, and what it shares with the in-process command.

`pluq worker` runs on typer and rich, which weigh about 15 MB (typer imports pydantic), and
the children of a processes pool are forked copies of whatever the worker holds when they
start. So the command only parses its options, then replaces itself (`os.execve`, the
same process id: signals, systemd and exit codes are unchanged) with

    python -P -m pluq.worker._run pluq worker -A tasks:app ...     (the arguments, for ps)

which reads the options from $PLUQ_WORKER_SETTINGS (not the command line, where a broker
password would show in ps), makes the command's checks (`open_worker`: -A, the URLs, the
worker's options; a mistake ends it as it ends the command, one `error:` line and the
same exit code), prints the banner, forks the children, and only then opens the broker
(redis-py alone is about 20 MB). The app is imported once, here. Where stderr is not a
terminal (systemd, containers, the bench) neither this process nor the command imports
typer or rich (`pluq.cli._lean` reads the usual options without them); on a terminal,
rich colours the banner and the log lines, and `--burst` shows the command line's drain
bar.

Only the real program execs (`pluq.cli.main`, the console script and `python -m pluq`).
`pluq worker` called in-process (typer's CliRunner, in tests) makes the same checks with
the same functions, and runs `serve` itself.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any, Final

from pluq.errors import ConfigurationError, NotRegistered, PluqError
from pluq.worker import EXIT_COLD, EXIT_OK

if TYPE_CHECKING:
    from rich.console import Console

    from pluq.app import App
    from pluq.worker import Worker

__all__ = [
    "BURST_POLL",
    "SETTINGS_ENV",
    "CliError",
    "JsonFormatter",
    "Settings",
    "load_app",
    "logging_on",
    "main",
    "open_app",
    "open_worker",
    "print_banner",
    "require_shared",
    "scheduler_runner",
    "serve",
    "split_names",
]

SETTINGS_ENV: Final = "PLUQ_WORKER_SETTINGS"
"""Carries `Settings` as JSON from `pluq worker` to the process it becomes (the same name
as `pluq.cli._lean.SETTINGS_ENV`, which sets it: a test checks)."""

_MODULE: Final = "pluq.worker._run"
# pluq.cli's EXIT_FAILURE, EXIT_USAGE and EXIT_UNAVAILABLE (pluq.cli imports typer).
_EXIT_FAILURE: Final = 1
_EXIT_USAGE: Final = 2
_EXIT_UNAVAILABLE: Final = 69

BURST_POLL: Final = 0.1
"""Seconds a burst worker's reserve waits (the worker's default is 0.5)."""


@dataclass(slots=True)
class Settings:
    """The options of `pluq worker`, as its command line gave them, not yet checked.

    The lean process checks them (`open_worker`) as the command does in-process, so the
    app of `-A` is imported once. `queues` holds each -Q as given ("a,b" included).
    """

    app_spec: str | None = None
    broker: str | None = None
    concurrency: int | None = None
    queues: list[str] = field(default_factory=list)
    pool: str = "processes"
    name: str | None = None
    burst: bool = False
    beat: bool = False
    loglevel: str = "INFO"
    json_logs: bool = False

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Settings:
        return cls(**json.loads(text))

    def worker_options(self) -> dict[str, Any]:
        """Keyword arguments of `App.Worker`: concurrency, queues, pool, name, poll."""
        return {
            "concurrency": self.concurrency,
            "queues": split_names(self.queues) or None,
            "pool": self.pool,
            "name": self.name,
            # A burst worker stops once a reserve finds nothing: short waits end it sooner.
            **({"poll": BURST_POLL} if self.burst else {}),
        }


def open_worker(settings: Settings) -> tuple[App, Worker]:
    """The app and the worker `pluq worker` runs, once the command's checks pass.

    Raises:
        CliError: a mistake the command reports in one line (-A, a memory:// URL,
            --beat without a scheduler), with its exit code.
        ConfigurationError: a bad URL or worker option (exit code 2 at the command line).
    """
    app = open_app(settings.app_spec, settings.broker)
    try:
        require_shared(app.broker_url, "a worker started here")
        require_shared(app.backend_url, "a worker started here")
        if settings.beat:
            scheduler_runner()  # fail before the banner, not after
        return app, app.Worker(**settings.worker_options())
    except BaseException:
        app.close()
        raise


# -- finding the app (`-A`): the command's checks, shared by every pluq command ------------


class CliError(Exception):
    """A mistake or a failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, *, code: int = _EXIT_FAILURE) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


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
            code=_EXIT_USAGE,
        ) from exc
    except ConfigurationError as exc:
        raise CliError(f"-A {spec}: {exc}", code=_EXIT_USAGE) from exc
    except Exception as exc:
        raise CliError(
            f"-A {spec}: importing {module_name} raised {type(exc).__name__}: {exc} "
            f"(python -c 'import {module_name}' shows the traceback)",
            code=_EXIT_USAGE,
        ) from exc


def _no_module(module_name: str, spec: str) -> CliError:
    return CliError(
        f"-A {spec}: there is no module named {module_name!r} in {os.getcwd()} or on "
        f"sys.path; run pluq from the folder that holds it, or fix the name",
        code=_EXIT_USAGE,
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
            code=_EXIT_USAGE,
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
                code=_EXIT_USAGE,
            )
        raise CliError(
            f"-A {spec}: module {module_name} has several apps ({', '.join(found)}); "
            f"choose one: -A {module_name}:{found[0]}",
            code=_EXIT_USAGE,
        )

    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            found = _apps_in(module)
            hint = f"; its apps: {', '.join(found)}" if found else ""
            raise CliError(
                f"-A {spec}: module {module_name} has no attribute {attr!r}{hint}",
                code=_EXIT_USAGE,
            )
        target = getattr(target, part)
    if inspect.isfunction(target):
        # A factory: `-A module:create_app`.
        try:
            target = target()
        except ConfigurationError as exc:
            raise CliError(f"-A {spec}: {exc}", code=_EXIT_USAGE) from exc
    if not isinstance(target, App):
        raise CliError(
            f"-A {spec}: {module_name}.{attr} is not a pluq.App (its type is "
            f"{type(target).__name__})",
            code=_EXIT_USAGE,
        )
    return target


def _check_url(url: str) -> None:
    from pluq.registry import check_url

    # ConfigurationError names the problem and the fix. A built-in transport is not
    # imported: the lean worker checks --broker before it forks, and its children need
    # no redis-py.
    check_url(url)


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
        return app
    return App(broker, backend=backend, serializer=serializer)


def require_shared(url: str, what: str) -> None:
    """Refuse a transport that lives in one process for a command that needs two."""
    from pluq.registry import URL, shared_between_processes

    parsed = URL.parse(url)
    if not shared_between_processes(parsed):
        raise CliError(
            f"{parsed.redacted} keeps its queues inside one process, so {what} would never "
            f"meet the program that queues the tasks; use a transport that processes share: "
            f"sqlite:///pluq.db (the default), file:///some/dir or redis://host:6379/0",
            code=_EXIT_USAGE,
        )


def scheduler_runner() -> Callable[..., None]:
    """`pluq.scheduler.run_scheduler`, or a clear error when this pluq has no scheduler."""
    try:
        scheduler: Any = importlib.import_module("pluq.scheduler")
    except ModuleNotFoundError as exc:
        if exc.name != "pluq.scheduler":
            raise
        scheduler = None
    runner = getattr(scheduler, "run_scheduler", None)
    if runner is None:
        raise CliError(
            "periodic tasks (pluq beat, pluq worker --beat) are not available yet in this "
            "version of pluq: it has no scheduler (pluq.scheduler.run_scheduler)",
            code=_EXIT_UNAVAILABLE,
        )
    run: Callable[..., None] = runner
    return run


def split_names(values: Iterable[str] | None) -> list[str]:
    """`-Q a,b -Q c` -> ["a", "b", "c"], without blanks or repeats, in order."""
    names: list[str] = []
    for value in values or ():
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


# -- logging -------------------------------------------------------------------------------

# What every LogRecord has; anything else on a record came through `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# The worker's log lines start "task NAME[ID] ..." or "dead-lettering ID: ...": machines
# get the name and id as fields.
_TASK_PREFIX = re.compile(
    r"^(?:task (?P<task>[^\s\[\]]+)\[(?P<task_id>[^\]\s]+)\]|dead-lettering (?P<dead_id>\S+):)"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, and
    every `extra=` field; `task` and `task_id` for the worker's task lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        match = _TASK_PREFIX.match(message)
        if match:
            fields = match.groupdict()
            task_id = fields["task_id"] or fields["dead_id"]
            if fields["task"]:
                data["task"] = fields["task"]
            data["task_id"] = task_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


@contextmanager
def logging_on(
    stream: IO[str], level: str, *, json_lines: bool, terminal: Console | None
) -> Iterator[None]:
    """Send log records at `level` and above to `stream`.

    A terminal (`terminal`, rich's console on it) gets rich's handler: colours, aligned
    columns, rich tracebacks. Elsewhere, one plain line per record, never wrapped, so grep
    finds them; with `json_lines`, one JSON object per line. The handler sits on the root
    logger, so the worker (`pluq.worker`), the scheduler (`pluq.beat`) and tasks that run
    in the worker's own process all show. Everything is put back as it was on exit.
    """
    handler: logging.Handler
    if json_lines:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif terminal is None:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=terminal,
            show_path=False,
            markup=False,
            rich_tracebacks=True,
            log_time_format="[%X]",
            keywords=["succeeded", "retry", "failed", "dead-lettering", "ready", "stopped"],
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous or logging.WARNING, logging.getLevelName(level)))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def _terminal() -> Console | None:
    """rich's console on stderr when rich would call stderr a terminal, else None.

    rich (about 5 MB) is imported only when stderr may be one: a tty, or the variables
    with which rich is told that it is (FORCE_COLOR, TTY_COMPATIBLE=1).
    """
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        tty = False
    if not (tty or os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1"):
        return None
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal else None


# -- beside the worker ---------------------------------------------------------------------


@contextmanager
def _beat_thread(app: App, enabled: bool) -> Iterator[None]:
    """Run the scheduler beside the worker, stopping it when the worker stops."""
    if not enabled:
        yield
        return
    from pluq.scheduler import run_scheduler  # `pluq worker --beat` checked it exists

    stop = threading.Event()

    def target() -> None:
        try:
            run_scheduler(app, stop=stop)
        except Exception:
            logging.getLogger("pluq.beat").exception(
                "the scheduler stopped on an error; the worker goes on without it"
            )

    thread = threading.Thread(target=target, name="pluq-beat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _banner_rows(app: App, app_spec: str | None, w: Worker, beat: bool) -> list[tuple[str, str]]:
    """What the banner says, line by line: (label, value)."""
    import socket

    from pluq.registry import URL

    rows = [("broker", URL.parse(app.broker_url).redacted)]
    if app.backend_url != app.broker_url:
        rows.append(("backend", URL.parse(app.backend_url).redacted))
    if app_spec:
        names = sorted(app.tasks)
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        tasks = f"{len(names)} task{'' if len(names) == 1 else 's'}"
        rows.append(("app", f"{app_spec} ({tasks}: {shown or 'none'})"))
    else:
        rows.append(("app", "none (-A not given): runs tasks that travel by value only"))
    rows.append(("queues", ", ".join(w.queues)))
    rows.append(("concurrency", f"{w.concurrency} ({w.pool})"))
    rows.append(("pid", f"{os.getpid()} on {socket.gethostname()}"))
    rows.append(("beat", "on: queueing periodic tasks" if beat else "off"))
    return rows


def print_banner(
    console: Console | None, app: App, app_spec: str | None, w: Worker, beat: bool
) -> None:
    """The banner on stderr: a rich panel on `console`, or (None) plain lines.

    Plain where stderr is not a terminal: a title line, then one line per field, never
    wrapped, so grep finds them and no rich is imported to draw a box nobody sees.
    """
    from pluq import __version__

    title = f"pluq {__version__} worker"
    rows = _banner_rows(app, app_spec, w, beat)
    if console is None:
        width = max(len(label) for label, _ in rows) + 2
        lines = [title, *(f"  {label:<{width}}{value}" for label, value in rows)]
        print("\n".join(lines), file=sys.stderr)
        return
    from rich.panel import Panel
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    for label, value in rows:
        grid.add_row(label, value)
    console.print(Panel(grid, title=title, title_align="left", expand=False))


def _log_start(app: App, settings: Settings, w: Worker) -> None:
    """The banner, for machines (`--json-logs`)."""
    from pluq.registry import URL

    logging.getLogger("pluq.cli").info(
        "worker starting",
        extra={
            "broker": URL.parse(app.broker_url).redacted,
            "backend": URL.parse(app.backend_url).redacted,
            "app": settings.app_spec,
            "tasks": sorted(app.tasks),
            "queues": w.queues,
            "concurrency": w.concurrency,
            "pool": w.pool,
            "beat": settings.beat,
        },
    )


def serve(app: App, w: Worker, settings: Settings, *, terminal: Console | None) -> int:
    """Run worker `w` until it stops, logging to stderr; its exit code (0, or 130 cold).

    With `settings.beat` the scheduler runs beside it; with `settings.burst` on a terminal
    a bar shows the queues draining. `terminal` is rich's console on stderr, or None when
    stderr is not a terminal.
    """
    stream = sys.stderr if terminal is None else terminal.file
    with logging_on(stream, settings.loglevel, json_lines=settings.json_logs, terminal=terminal):
        if settings.json_logs:
            _log_start(app, settings, w)
        drain: AbstractContextManager[None] = nullcontext()
        if settings.burst and terminal is not None and not settings.json_logs:
            # The command line's bar, typer and all: on a terminal the process is watched,
            # and its children start from the forkserver anyway (the bar runs a thread).
            from pluq.cli.worker import drain_progress

            drain = drain_progress(terminal, app, w)
        with _beat_thread(app, settings.beat), drain:
            return w.run(burst=settings.burst)


# -- being the lean process ------------------------------------------------------------------


_NO_BELL: Final = {7: None, 8: None}


def _fail(message: str, code: int, terminal: Console | None = None) -> int:
    """`error: message` on stderr, one line (as pluq's commands end), and the exit code.

    On a terminal in rich's colours, as the command prints it; elsewhere plain, the same
    characters rich would write there (it drops BEL and BS).
    """
    message = " ".join(message.split())
    if terminal is not None:
        from rich.text import Text

        terminal.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    else:
        print(f"error: {message.translate(_NO_BELL)}", file=sys.stderr)
    return code


def main() -> int:
    """The lean process: the command's checks, the banner, `serve`; the exit code.

    pluq's errors end it as they end a command: one line, exit code 2 for a mistake in
    the configuration (an unknown URL option is found only when the broker opens), 1
    for any other; 69 for --beat where pluq has no scheduler.
    """
    text = os.environ.pop(SETTINGS_ENV, None)  # not for the children, nor what tasks start
    if text is None:
        return _fail(
            f"{_MODULE} is what `pluq worker` runs once it has parsed its options; run "
            f"pluq worker -A module:app instead",
            _EXIT_USAGE,
        )
    settings = Settings.decode(text)
    terminal = _terminal()
    # A mistake the checks find ends the lean process as it ends the command (in rich's
    # colours on a terminal); one only the open broker finds, in a plain line.
    try:
        app, w = open_worker(settings)
    except KeyboardInterrupt:  # as the command line (click) ends on one
        print("\nAborted!", file=sys.stderr)
        return _EXIT_FAILURE
    except CliError as exc:
        return _fail(exc.message, exc.code, terminal)
    except (ConfigurationError, NotRegistered) as exc:
        return _fail(str(exc), _EXIT_USAGE, terminal)
    except PluqError as exc:
        return _fail(str(exc), _EXIT_FAILURE, terminal)
    try:
        if not settings.json_logs:  # with --json-logs, the worker logs its start instead
            print_banner(terminal, app, settings.app_spec, w, settings.beat)
        code = serve(app, w, settings, terminal=terminal)
    except (ConfigurationError, NotRegistered) as exc:
        return _fail(str(exc), _EXIT_USAGE)
    except PluqError as exc:
        return _fail(str(exc), _EXIT_FAILURE)
    finally:
        app.close()
    return EXIT_COLD if code == EXIT_COLD else EXIT_OK


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # before the worker handles Ctrl-C: no task had started
        sys.exit(EXIT_COLD)
