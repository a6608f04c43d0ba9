"""`pluq demo`: queue a batch of demo tasks, run a worker until they are done, and show
where to look next. The tasks are in `pluq.demo`."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pluq.cli._common import (
    DEFAULT_BROKER,
    EXIT_OK,
    BrokerOption,
    Pool,
    open_app,
)

if TYPE_CHECKING:
    from rich.console import Console

    from pluq.app import App
    from pluq.result import AsyncResult

__all__ = ["demo"]

_IMAGES = ("cat.jpg", "dog.png", "owl.gif", "fox.webp", "elk.jpg", "yak.png")


def _enqueue(app: App) -> dict[str, list[AsyncResult[Any]]]:
    from pluq import demo as tasks

    queued: dict[str, list[AsyncResult[Any]]] = {
        "add": tasks.app.enqueue_many(tasks.add, [(i, i * i) for i in range(20)]),
        "thumbnail": [
            tasks.thumbnail.delay(image, width) for image in _IMAGES for width in (64, 256)
        ],
        "fetch": [
            tasks.fetch.delay("https://example.com/a", 1),
            tasks.fetch.delay("https://example.com/b", 2),
        ],
        "charge": [tasks.charge.delay("A-1042")],
        "report": [tasks.report.apply_async(args=(36,), countdown=2)],
    }
    return queued


def shared_between_processes(url: str) -> bool:
    from pluq.registry import URL, transport_for

    return transport_for(URL.parse(url)).capabilities.shared_between_processes


def _next_steps(console: Console, app: App, queued: dict[str, list[AsyncResult[Any]]]) -> None:
    from pluq.registry import URL

    url = URL.parse(app.broker_url)
    flag = "" if app.broker_url == DEFAULT_BROKER else f" --broker {url.redacted}"
    flaky = queued["fetch"][-1].id
    doomed = queued["charge"][0].id
    steps: list[tuple[str, str]] = [
        ("queues and live workers (add --watch to follow them)", f"pluq status{flag}"),
        ("failed twice, retried, then succeeded: its attempts", f"pluq result {flaky}{flag}"),
        ("failed for good: every attempt and its traceback", f"pluq result {doomed}{flag}"),
        ("the dead-letter queue, and why each one died", f"pluq dlq list{flag}"),
        ("put the doomed one back on its queue", f"pluq dlq retry {doomed}{flag}"),
        ("a worker that waits for more (Ctrl-C stops it)", f"pluq worker -A pluq.demo{flag}"),
    ]
    if url.scheme == "sqlite" and not url.query:
        path = url.path[1:]
        steps.append(("it is all one SQLite file", f"sqlite-utils tables {path} --counts"))
        steps.append(
            (
                "the results, readable by any SQLite tool",
                f'sqlite-utils query {path} "select id, task, state, retries from pluq_results"',
            )
        )
    console.print("\nWhere to look next:", style="bold")
    for comment, command in steps:
        # Shell comments: every line can be pasted into a terminal as it is.
        console.print(f"# {comment}", style="dim", highlight=False, soft_wrap=True)
        console.print(command, style="bold", highlight=False, soft_wrap=True, markup=False)


def demo(
    broker: BrokerOption = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Tasks run at once.")
    ] = 4,
    pool: Annotated[Pool, typer.Option("--pool", "-P", help="The worker pool.")] = Pool.processes,
) -> None:
    """Queue demo tasks, run a worker until they are done, and show what happened.

    36 tasks: quick ones, slow ones, two flaky ones that retry, one doomed to the
    dead-letter queue, one delayed. About 10 seconds. Uses ./pluq.db unless --broker.
    """
    from rich.rule import Rule

    from pluq import demo as tasks
    from pluq.cli._console import err_console, logging_to, out_console
    from pluq.cli.status import render_status
    from pluq.cli.worker import BURST_POLL, drain_progress
    from pluq.registry import URL

    url = broker or os.environ.get("PLUQ_BROKER") or DEFAULT_BROKER
    open_app("pluq.demo", url, url)  # validates the URL and points the demo app at it
    app = tasks.app
    console = out_console()
    shown = URL.parse(url).redacted
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        shown += f"  ({os.path.abspath(URL.parse(url).path[1:])})"
    console.print(Rule("pluq demo"))
    console.print(f"broker and results: {shown}", highlight=False)

    queued = _enqueue(app)
    total = sum(len(r) for r in queued.values())
    console.print(
        f"queued {total} tasks on queue {tasks.QUEUE!r}: 20 additions, 12 thumbnails "
        f"(slow), 2 flaky fetches (they retry), 1 doomed charge (it dead-letters) and 1 "
        f"report delayed by 2 s.",
        highlight=False,
    )
    console.print(
        f"running a worker ({concurrency} {pool.value}) until the queue is empty; retries "
        f"and failures are logged below:",
        highlight=False,
    )
    errors = err_console()
    w = app.Worker(concurrency=concurrency, pool=pool.value, queues=[tasks.QUEUE], poll=BURST_POLL)
    with logging_to(errors, "WARNING", json_lines=False), drain_progress(errors, app, w):
        w.run(burst=True)

    records = app.backend.get_many([r.id for rs in queued.values() for r in rs])
    states = Counter(rec.state if rec is not None else "PENDING" for rec in records)
    summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    console.print(f"\ndone: {summary}", highlight=False)
    console.print(render_status(app.stats(), app.broker_url, app.clock()))
    if shared_between_processes(app.broker_url):
        _next_steps(console, app, queued)
    else:
        console.print(
            f"{URL.parse(url).redacted} lived in this process and is gone with it; run pluq "
            f"demo without --broker to keep everything in ./pluq.db and look around after.",
            highlight=False,
        )
    raise typer.Exit(EXIT_OK)
