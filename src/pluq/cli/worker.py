"""`pluq worker` and `pluq beat`: run tasks, and queue periodic ones."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pluq.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    AppOption,
    BrokerOption,
    CliError,
    Pool,
    _module_name,
    open_app,
    require_shared,
    split_names,
)

if TYPE_CHECKING:
    from rich.console import Console

    from pluq.app import App
    from pluq.worker import Worker

__all__ = ["BURST_POLL", "beat", "drain_progress", "scheduler_runner", "worker"]

BURST_POLL = 0.1
"""Seconds a burst worker's reserve waits (the worker's default is 0.5)."""

lean_exec = False
"""Set by `pluq.cli.main()`, the real program: `pluq worker` then replaces its process
with the lean one (`pluq.worker._run`). Left False, as when tests call the command in
their own process, it runs the worker itself."""


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--loglevel", "-l", case_sensitive=False, help="Show log lines at this level and above."
    ),
]
JsonLogsOption = Annotated[
    bool,
    typer.Option("--json-logs", help="Log one JSON object per line (on stderr), for machines."),
]


def scheduler_runner() -> Callable[..., None]:
    """`pluq.scheduler.run_scheduler`, or a clear error when this pluq has no scheduler."""
    import importlib

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
            code=EXIT_UNAVAILABLE,
        )
    run: Callable[..., None] = runner
    return run


def _banner(console: Console, app: App, app_spec: str | None, w: Worker, beat: bool) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from pluq import __version__
    from pluq.registry import URL

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("broker", URL.parse(app.broker_url).redacted)
    if app.backend_url != app.broker_url:
        grid.add_row("backend", URL.parse(app.backend_url).redacted)
    if app_spec:
        names = sorted(app.tasks)
        shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        grid.add_row("app", f"{app_spec} ({len(names)} tasks: {shown or 'none'})")
    else:
        grid.add_row("app", "none (-A not given): runs tasks that travel by value only")
    grid.add_row("queues", ", ".join(w.queues))
    grid.add_row("concurrency", f"{w.concurrency} ({w.pool})")
    grid.add_row("pid", f"{os.getpid()} on {socket.gethostname()}")
    grid.add_row("beat", "on: queueing periodic tasks" if beat else "off")
    console.print(Panel(grid, title=f"pluq {__version__} worker", title_align="left", expand=False))


@contextmanager
def drain_progress(console: Console, app: App, w: Worker) -> Iterator[None]:
    """A bar of the queues draining while a burst worker runs (polls counts from a thread)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    stop = threading.Event()
    progress = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bar = progress.add_task("draining", total=None)

    def refresh(*, last: bool = False) -> None:
        try:
            counts = app.broker.counts(w.queues)
        except Exception:  # the worker logs transport trouble; the bar just waits
            return
        ready = sum(c.ready for c in counts.values())
        delayed = sum(c.delayed for c in counts.values())
        running = sum(c.leased for c in counts.values())
        done = w.processed
        left = ready + delayed + running
        if last:
            description = "done" if not left else f"stopped · {left} left"
        else:
            description = f"{ready} ready · {delayed} delayed · {running} running"
        # Each outcome (a retry too) is one step; a retry puts its task back as delayed.
        progress.update(bar, completed=done, total=done + left, description=description)

    def poll() -> None:
        while not stop.wait(0.2):
            refresh()

    thread = threading.Thread(target=poll, name="pluq-progress", daemon=True)
    with progress:
        refresh()
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)
            refresh(last=True)


def worker(
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            help="Tasks run at once.",
            show_default="the number of CPUs; 1 for solo",
        ),
    ] = None,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queues",
            "-Q",
            metavar="QUEUE[,QUEUE]",
            help="Queues to consume, earlier ones first (repeat -Q or use commas).",
            show_default="default",
        ),
    ] = None,
    pool: Annotated[
        Pool,
        typer.Option(
            "--pool",
            "-P",
            help="processes: child processes (killable, time limits); threads; solo: "
            "one at a time in the worker itself.",
        ),
    ] = Pool.processes,
    burst: Annotated[
        bool,
        typer.Option("--burst", help="Work until the queues are empty, then exit."),
    ] = False,
    beat: Annotated[
        bool,
        typer.Option("--beat", help="Also queue periodic tasks (@app.periodic) from here."),
    ] = False,
    loglevel: LogLevelOption = LogLevel.INFO,
    json_logs: JsonLogsOption = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", "-n", help="The worker's name in pluq status.", show_default="host:pid:n"
        ),
    ] = None,
) -> None:
    """Run tasks from the queues until SIGTERM or Ctrl-C.

    SIGTERM or a first Ctrl-C is graceful: running tasks finish, the others go back.

    A second Ctrl-C stops at once, and still puts every unfinished task back.

    Without -A it runs only tasks that travel by value (defined in a notebook or __main__).
    """
    from pluq.cli._console import err_console
    from pluq.worker._run import Settings, become_lean, serve

    app = open_app(app_spec, broker)
    require_shared(app.broker_url, "a worker started here")
    require_shared(app.backend_url, "a worker started here")
    if beat:
        scheduler_runner()  # fail before the banner, not after
    settings = Settings(
        app_spec=app_spec,
        app=_app_location(app_spec, app) if app_spec else None,
        broker_url=app.broker_url,
        backend_url=app.backend_url,
        worker={
            "concurrency": concurrency,
            "queues": split_names(queues) or None,
            "pool": pool.value,
            "name": name,
            # A burst worker stops once a reserve finds nothing: short waits end it sooner.
            **({"poll": BURST_POLL} if burst else {}),
        },
        burst=burst,
        beat=beat,
        loglevel=loglevel.value,
        json_logs=json_logs,
    )
    w = settings.make_worker(app)
    console = err_console()
    if not json_logs:  # with --json-logs, the worker logs its start instead
        _banner(console, app, app_spec, w, beat)
    if lean_exec:
        app.close()
        become_lean(settings, sys.argv[1:])  # returns only where it cannot exec
    code = serve(app, w, settings, terminal=console if console.is_terminal else None)
    raise typer.Exit(EXIT_INTERRUPTED if code == EXIT_INTERRUPTED else EXIT_OK)


def _app_location(app_spec: str, app: App) -> tuple[str, str]:
    """(module, attribute path) under which the lean process finds the app `-A` named.

    `module:attr` says it (a factory is called again there); for `module` alone (its
    `app`, or its one App) and `package.app`, the attribute holding `app` is looked up.
    """
    module_part, colon, attr = app_spec.strip().partition(":")
    module_name = _module_name(module_part)
    if colon:
        return module_name, attr
    for candidate in (module_name, module_name.rpartition(".")[0]):
        module = sys.modules.get(candidate)
        names = [k for k, v in vars(module).items() if v is app] if module else []
        if names:
            return candidate, "app" if "app" in names else names[0]
    raise CliError(f"-A {app_spec}: cannot find the app again in {module_name}; use -A module:app")


def beat(
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    loglevel: LogLevelOption = LogLevel.INFO,
    json_logs: JsonLogsOption = False,
) -> None:
    """Queue periodic tasks (@app.periodic) when they are due, until SIGTERM or Ctrl-C.

    Run it beside your workers, or use pluq worker --beat instead.

    Several may run at once: each tick is queued under one id, so it runs once.
    """
    from pluq.cli._console import err_console, logging_to

    app = open_app(app_spec, broker)
    require_shared(app.broker_url, "a scheduler started here")
    run = scheduler_runner()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    console = err_console()
    previous: dict[signal.Signals, Any] = {}
    with logging_to(console, loglevel.value, json_lines=json_logs):
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
        try:
            if not json_logs:
                from pluq.registry import URL

                console.print(
                    f"pluq beat: queueing periodic tasks on {URL.parse(app.broker_url).redacted}"
                    f" (pid {os.getpid()}); Ctrl-C stops"
                )
            run(app, stop=stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    raise typer.Exit(EXIT_OK)
