"""`pluq status`: queues (ready, delayed, running, dead) and the live workers."""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from pluq.cli._common import (
    EXIT_OK,
    AppOption,
    BrokerOption,
    JsonOption,
    open_app,
    require_existing,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

    from pluq.app import Stats

__all__ = ["render_status", "status"]


def render_status(stats: Stats, url: str, now: float) -> RenderableType:
    """The status tables for `stats` read from the broker at `url` at time `now`."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from pluq.cli._console import ago, duration, timestamp
    from pluq.registry import URL

    parts: list[RenderableType] = [
        Text.assemble(("pluq status", "bold"), f"  {URL.parse(url).redacted}  {timestamp(now)}")
    ]
    if stats.queues:
        queues = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        queues.add_column("Queue", style="bold", no_wrap=True)
        for column in ("Ready", "Delayed", "Running", "Dead"):
            queues.add_column(column, justify="right")
        for name, c in sorted(stats.queues.items()):
            queues.add_row(
                name,
                str(c.ready),
                str(c.delayed),
                str(c.leased),
                Text(str(c.dead), style="bold red" if c.dead else ""),
            )
        if len(stats.queues) > 1:
            values = list(stats.queues.values())
            queues.add_section()
            queues.add_row(
                "total",
                str(sum(c.ready for c in values)),
                str(sum(c.delayed for c in values)),
                str(sum(c.leased for c in values)),
                str(sum(c.dead for c in values)),
                style="dim",
            )
        parts.append(queues)
    else:
        parts.append(Text("no queues yet: nothing has been queued here", style="dim"))

    if stats.workers:
        workers = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        workers.add_column("Worker", no_wrap=True)
        workers.add_column("Host", no_wrap=True)
        workers.add_column("PID", justify="right")
        workers.add_column("Queues")
        workers.add_column("Pool", justify="right")
        workers.add_column("Done", justify="right")
        workers.add_column("Heartbeat", justify="right")
        workers.add_column("Up", justify="right")
        for w in sorted(stats.workers, key=lambda w: (w.hostname, w.pid, w.id)):
            workers.add_row(
                w.id,
                w.hostname,
                str(w.pid),
                ", ".join(w.queues),
                f"{w.concurrency} {w.pool}",
                str(w.processed),
                ago(now - w.heartbeat_at),
                duration(max(0.0, now - w.started_at)) if w.started_at else "-",
            )
        parts.append(workers)
    else:
        parts.append(Text("no live workers: start one with pluq worker -A module:app", style="dim"))
    return Group(*parts)


def status(
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh the tables until Ctrl-C.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.01, help="Seconds between refreshes with --watch."),
    ] = 1.0,
    iterations: Annotated[
        int | None,
        typer.Option(
            "--iterations",
            min=1,
            help="With --watch: stop after this many refreshes (like top -n).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Show each queue (ready, delayed, running, dead) and the live workers."""
    from pluq.cli._console import out_console

    app = open_app(app_spec, broker, serializer="json")
    require_existing(app.broker_url)
    if json_output:
        typer.echo(json.dumps(app.stats().to_dict(), indent=2))
        raise typer.Exit(EXIT_OK)
    console = out_console()
    if not watch:
        console.print(render_status(app.stats(), app.broker_url, app.clock()))
        raise typer.Exit(EXIT_OK)

    from rich.live import Live

    pause = threading.Event()  # never set: its wait() is an interruptible sleep
    shown = 0
    try:
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(render_status(app.stats(), app.broker_url, app.clock()), refresh=True)
                shown += 1
                if iterations is not None and shown >= iterations:
                    break
                pause.wait(interval)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --watch ends
    raise typer.Exit(EXIT_OK)
