"""`pluq result ID`: a task's state, result, retries and every attempt, with tracebacks.

It reads the record as stored and never unpickles anything: a value stored as JSON is
shown as JSON, any other value by the `repr` the worker kept next to it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from pluq.cli._common import (
    EXIT_OK,
    AppOption,
    BackendOption,
    BrokerOption,
    JsonOption,
    open_app,
    require_existing,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

    from pluq.backend import TaskRecord

__all__ = ["render_record", "result"]


def _value(record: TaskRecord) -> RenderableType:
    from rich.pretty import Pretty
    from rich.text import Text

    if record.result_encoding in (None, "json"):
        return Pretty(record.result)
    shown = record.result_repr or "(no repr stored)"
    return Text.assemble(
        shown,
        (
            f"  (stored as {record.result_encoding}; in Python: "
            f"app.AsyncResult({record.id!r}).result)",
            "dim",
        ),
    )


def _real(traceback: str | None) -> bool:
    return bool(traceback) and "Traceback (most recent call last)" in (traceback or "")


def render_record(record: TaskRecord, now: float) -> RenderableType:
    """The record as a summary grid, a history table and the tracebacks of failed attempts."""
    from rich import box
    from rich.console import Group
    from rich.panel import Panel
    from rich.pretty import Pretty
    from rich.table import Table
    from rich.text import Text

    from pluq.backend import SUCCESS
    from pluq.cli._console import ago, duration, state_style, timestamp

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("task id", record.id)
    grid.add_row("state", Text(record.state, style=state_style(record.state)))
    grid.add_row("task", record.task or "?")
    grid.add_row("queue", record.queue or "?")
    grid.add_row("retries", str(record.retries))
    if record.worker:
        grid.add_row("worker", record.worker)
    if record.created_at:
        grid.add_row("queued", f"{timestamp(record.created_at)} ({ago(now - record.created_at)})")
    if record.started_at:
        grid.add_row("started", timestamp(record.started_at))
    if record.finished_at:
        took = ""
        if record.started_at:
            took = f" (ran {duration(max(0.0, record.finished_at - record.started_at))})"
        grid.add_row("finished", f"{timestamp(record.finished_at)}{took}")
    if record.state == SUCCESS:
        grid.add_row("result", _value(record))
    if record.exc_type:
        grid.add_row("error", Text(f"{record.exc_type}: {record.exc_message}", style="red"))
    if record.meta:
        grid.add_row("meta", Pretty(record.meta))
    parts: list[RenderableType] = [grid]

    if record.history:
        history = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        history.add_column("#", justify="right")
        history.add_column("State")
        history.add_column("Error")
        history.add_column("Worker")
        history.add_column("Finished", no_wrap=True)
        history.add_column("Took", justify="right", no_wrap=True)
        for attempt in record.history:
            error = f"{attempt.exc_type}: {attempt.exc_message}" if attempt.exc_type else ""
            took = (
                duration(max(0.0, attempt.finished_at - attempt.started_at))
                if attempt.finished_at and attempt.started_at
                else "-"
            )
            history.add_row(
                str(attempt.number),
                Text(attempt.state, style=state_style(attempt.state)),
                error,
                attempt.worker or "-",
                timestamp(attempt.finished_at),
                took,
            )
        parts.append(history)

    # A retry's exception was made, not raised, so its "traceback" is one line that the
    # table already shows: only real tracebacks get a panel.
    shown: set[str] = set()
    for attempt in record.history:
        if _real(attempt.traceback) and attempt.traceback not in shown:
            assert attempt.traceback is not None
            shown.add(attempt.traceback)
            parts.append(
                Panel(
                    Text(attempt.traceback.rstrip()),
                    title=f"attempt {attempt.number}: {attempt.state}",
                    title_align="left",
                    border_style=state_style(attempt.state) or "dim",
                )
            )
    if _real(record.traceback) and record.traceback not in shown:
        assert record.traceback is not None
        parts.append(Panel(Text(record.traceback.rstrip()), title="traceback", title_align="left"))
    return Group(*parts)


def result(
    task_id: Annotated[
        str, typer.Argument(metavar="TASK_ID", help="The task's id (AsyncResult.id).")
    ],
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    backend: BackendOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a task's state, result, retries and attempt history with tracebacks."""
    from pluq import message as msg
    from pluq.cli._console import out_console
    from pluq.registry import URL

    app = open_app(app_spec, broker, backend, serializer="json")
    require_existing(app.backend_url)
    record = app.backend.get(task_id)
    if record is not None:
        msg.verify_record(record, app.keys)  # SignatureError: one line, exit 1
    if json_output:
        data = record.to_dict() if record is not None else {"id": task_id, "state": "PENDING"}
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    console = out_console()
    if record is None:
        from rich.text import Text

        console.print(Text.assemble(("PENDING", "dim"), f"  task {task_id}"))
        console.print(
            f"{URL.parse(app.backend_url).redacted} has no record of it: it waits in a queue, "
            f"was never queued here, or its result expired (kept {app.result_expires:.0f} s).",
            soft_wrap=True,
            style="dim",
        )
        raise typer.Exit(EXIT_OK)
    console.print(render_record(record, app.clock()))
    raise typer.Exit(EXIT_OK)
