"""`pluq worker` and `pluq beat`: run tasks, and queue periodic ones."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pluq.cli._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    AppOption,
    BrokerOption,
    Pool,
    _opened,
    open_app,
    require_shared,
)
from pluq.worker._run import (
    BURST_POLL,
    Settings,
    open_worker,
    print_banner,
    scheduler_runner,
    serve,
)

if TYPE_CHECKING:
    from rich.console import Console

    from pluq.app import App
    from pluq.worker import Worker

__all__ = ["BURST_POLL", "beat", "drain_progress", "scheduler_runner", "worker"]

lean_exec = False
"""Set by `pluq.cli.main()`, the real program: `pluq worker` then replaces its process
with the lean one (`pluq.worker._run`), which makes the checks and prints the banner. Left
False, as when tests call the command in their own process, it runs the worker itself."""


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


def _banner(console: Console, app: App, app_spec: str | None, w: Worker, beat: bool) -> None:
    print_banner(console, app, app_spec, w, beat)


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
    from pluq.cli._lean import become_lean

    settings = Settings(
        app_spec=app_spec,
        broker=broker,
        concurrency=concurrency,
        queues=list(queues or ()),
        pool=pool.value,
        name=name,
        burst=burst,
        beat=beat,
        loglevel=loglevel.value,
        json_logs=json_logs,
    )
    if lean_exec:
        # The lean process makes the checks below and prints the banner: the app is
        # imported once, there.
        become_lean(settings.encode(), sys.argv[1:])  # returns only where it cannot exec
    app, w = open_worker(settings)
    _opened.append(app)  # closed when the command ends
    console = err_console()
    if not json_logs:  # with --json-logs, the worker logs its start instead
        _banner(console, app, app_spec, w, beat)
    code = serve(app, w, settings, terminal=console if console.is_terminal else None)
    raise typer.Exit(EXIT_INTERRUPTED if code == EXIT_INTERRUPTED else EXIT_OK)


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
                    f" (pid {os.getpid()}); Ctrl-C stops",
                    soft_wrap=True,  # one line, also where stderr is not a terminal
                )
            run(app, stop=stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    raise typer.Exit(EXIT_OK)
