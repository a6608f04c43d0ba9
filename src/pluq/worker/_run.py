"""The lean `pluq worker` process, and what it shares with the in-process command.

`pluq worker` runs on typer and rich, which weigh about 15 MB (typer imports pydantic), and
the children of a processes pool are forked copies of whatever the worker holds when they
start. So the command checks the options, opens the app and prints the banner, then
replaces itself (`os.execve`, the same process id: signals, systemd and exit codes are
unchanged) with

    python -P -m pluq.worker._run pluq worker -A tasks:app ...     (the arguments, for ps)

which reads its settings from $PLUQ_WORKER_SETTINGS (not the command line, where a
broker password would show in ps), imports the app, forks the children, and only then
opens the broker (redis-py alone is about 20 MB). Where stderr is not a terminal (systemd,
containers, the bench) it imports neither typer nor rich; on a terminal, rich colours the
log lines, and `--burst` shows the command line's drain bar.

Only the real program execs (`pluq.cli.main`, the console script and `python -m pluq`).
`pluq worker` called in-process (typer's CliRunner, in tests) runs `serve` itself.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
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
    "SETTINGS_ENV",
    "JsonFormatter",
    "Settings",
    "become_lean",
    "logging_on",
    "main",
    "serve",
]

SETTINGS_ENV: Final = "PLUQ_WORKER_SETTINGS"
"""Carries `Settings` as JSON from `pluq worker` to the process it becomes."""

_MODULE: Final = "pluq.worker._run"
# pluq.cli's EXIT_FAILURE and EXIT_USAGE (pluq.cli imports typer).
_EXIT_FAILURE: Final = 1
_EXIT_USAGE: Final = 2


@dataclass(slots=True)
class Settings:
    """What `pluq worker` decided, everything the process it becomes needs.

    `app` is where the app of `-A` lives, as (module, attribute path); an attribute that
    is a factory function is called again. None: a bare app on `broker_url`.
    """

    app_spec: str | None
    app: tuple[str, str] | None
    broker_url: str
    backend_url: str
    worker: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of `App.Worker`: concurrency, queues, pool, name, poll."""
    burst: bool = False
    beat: bool = False
    loglevel: str = "INFO"
    json_logs: bool = False

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, text: str) -> Settings:
        data = json.loads(text)
        if data["app"] is not None:
            data["app"] = tuple(data["app"])
        return cls(**data)

    def open_app(self) -> App:
        """The app, as `pluq worker` had it (imported from the current folder)."""
        from pluq.app import App

        if self.app is None:
            return App(self.broker_url, backend=self.backend_url)
        module_name, attr = self.app
        # Like `pluq worker`: the folder it runs in is importable (-P left it out of
        # sys.path while pluq loaded, so a tasks folder never shadows the standard library).
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
        app: App = target if isinstance(target, App) else target()
        app.broker_url, app.backend_url = self.broker_url, self.backend_url  # --broker
        return app

    def make_worker(self, app: App) -> Worker:
        return app.Worker(**self.worker)


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


# -- becoming the lean process, and being it -------------------------------------------------


def become_lean(settings: Settings, argv: list[str]) -> None:
    """Replace this process with the lean worker (see the module doc); returns only when
    it cannot (no POSIX exec, no known interpreter): the caller then serves itself.

    `argv` (the command's arguments) is passed on for people reading `ps`, not read.
    """
    if os.name != "posix" or not sys.executable:
        return
    import subprocess

    # -X, -W, -O...: how this interpreter runs (multiprocessing's spawn passes the same).
    flags: list[str] = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    if not (sys.flags.safe_path or sys.flags.isolated):
        flags.append("-P")
    env = {**os.environ, SETTINGS_ENV: settings.encode()}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # "pluq worker ..." stays in the command line: `pgrep -f "pluq worker"` finds it.
        os.execve(sys.executable, [sys.executable, *flags, "-m", _MODULE, "pluq", *argv], env)
    except OSError:
        return  # still this process, unchanged: it runs the worker itself


def _fail(message: str, code: int) -> int:
    """`error: message` on stderr, one line (as pluq's commands end), and the exit code."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    return code


def main() -> int:
    """The lean process: the app, the worker, `serve`; the exit code.

    pluq's errors end it as they end a command: one line, exit code 2 for a mistake in
    the configuration (an unknown URL option is found only when the broker opens), 1
    for any other.
    """
    text = os.environ.pop(SETTINGS_ENV, None)  # not for the children, nor what tasks start
    if text is None:
        return _fail(
            f"{_MODULE} is what `pluq worker` runs once it has checked its options; run "
            f"pluq worker -A module:app instead",
            _EXIT_USAGE,
        )
    settings = Settings.decode(text)
    terminal = _terminal()
    try:
        app = settings.open_app()
    except Exception as exc:  # `pluq worker` loaded it a moment ago: rare, but say what
        return _fail(
            f"the worker could not load its app again ({type(exc).__name__}: {exc}); check "
            f"that -A {settings.app_spec} imports the same way every time",
            _EXIT_USAGE,
        )
    try:
        code = serve(app, settings.make_worker(app), settings, terminal=terminal)
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
