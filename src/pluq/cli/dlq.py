"""`pluq dlq list | show | retry | purge` and `pluq purge QUEUE`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pluq.cli._common import (
    EXIT_FAILURE,
    EXIT_OK,
    AppOption,
    BackendOption,
    BrokerOption,
    CliError,
    JsonOption,
    PluqGroup,
    YesOption,
    confirm,
    did_you_mean,
    open_app,
    require_existing,
    target_args,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

    from pluq.app import App, DeadTask

__all__ = ["dlq", "purge"]

dlq = typer.Typer(
    cls=PluqGroup,
    name="dlq",
    help="The dead-letter queue: tasks that failed for good, and messages no worker could run.",
    no_args_is_help=True,
    add_completion=False,
)

IdsArgument = Annotated[
    list[str] | None,
    typer.Argument(metavar="[ID]...", help="Dead-letter ids (their task ids).", show_default="all"),
]
QueueFilter = Annotated[
    str | None, typer.Option("--queue", "-q", help="Only the dead letters of this queue.")
]


def _open(app_spec: str | None, broker: str | None, backend: str | None = None) -> App:
    app = open_app(app_spec, broker, backend, serializer="json")
    require_existing(app.broker_url)
    return app


def _check_known(app: App, ids: list[str]) -> list[DeadTask]:
    dead = app.dead_letters()
    known = {d.id for d in dead}
    unknown = [i for i in ids if i not in known]
    if unknown:
        first = unknown[0]
        raise CliError(
            f"no dead letter with id {', '.join(map(repr, unknown))}"
            f"{did_you_mean(first, known)}; pluq dlq list{target_args(None, app)} shows them",
            code=EXIT_FAILURE,
        )
    return [d for d in dead if d.id in set(ids)]


@dlq.command("list")
def list_(
    queue: QueueFilter = None,
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    json_output: JsonOption = False,
) -> None:
    """List the dead letters, oldest first, with the reason each one died."""
    from rich.text import Text

    from pluq.cli._console import ago, out_console

    app = _open(app_spec, broker)
    dead = app.dead_letters(queue)
    if json_output:
        rows = [
            {k: getattr(d, k) for k in ("id", "queue", "task", "reason", "attempt", "dead_at")}
            for d in dead
        ]
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        raise typer.Exit(EXIT_OK)
    console = out_console()
    if not dead:
        where = f" in queue {queue!r}" if queue else ""
        console.print(f"no dead letters{where}", style="dim")
        raise typer.Exit(EXIT_OK)
    now = app.clock()
    # Two lines per letter (the reason under its id) read well at any terminal width.
    for d in dead:
        deliveries = f"{d.attempt} deliver{'y' if d.attempt == 1 else 'ies'}"
        console.print(
            Text.assemble(
                (d.id, "bold"),
                f"  {d.queue}  {d.task or '?'}  {deliveries}  died {ago(now - d.dead_at)}",
            ),
            soft_wrap=True,
            highlight=False,
        )
        console.print(Text(f"  {d.reason}", style="red"), soft_wrap=True)
    more = target_args(app_spec, app)
    console.print(
        f"{len(dead)} dead. pluq dlq show ID{more} explains one; pluq dlq retry [ID...]{more} "
        f"puts them back on their queues.",
        style="dim",
        soft_wrap=True,
        highlight=False,
    )
    raise typer.Exit(EXIT_OK)


def _arguments(app: App, header: Any, body: bytes) -> RenderableType:
    """The message's arguments, when loading them is as safe as a worker running it."""
    from rich.pretty import Pretty
    from rich.text import Text

    from pluq import message as msg
    from pluq.errors import SignatureError
    from pluq.registry import URL, transport_for
    from pluq.serializers import get_serializer

    try:
        msg.verify(header, body, app.keys)
    except SignatureError as exc:
        return Text(f"not shown: {exc}", style="red")
    network = transport_for(URL.parse(app.broker_url)).capabilities.shared_between_hosts
    if header.serializer != "json" and network and not app.keys and not app.allow_unsigned_pickle:
        return Text(
            "not shown: pickled arguments from a network broker without a secret are not "
            "loaded here (set PLUQ_SECRET, or use -A with the app)",
            style="dim",
        )
    try:
        payload = get_serializer(header.serializer).loads(body)
        shown: dict[str, Any] = {"args": payload["args"], "kwargs": payload["kwargs"]}
    except Exception as exc:
        return Text(f"not shown: cannot load them here ({type(exc).__name__}: {exc})", style="dim")
    if header.by_value:
        shown["function"] = "travels by value (defined in __main__ or a closure)"
    return Pretty(shown)


@dlq.command("show")
def show(
    dead_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's id.")],
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    backend: BackendOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one dead letter: why it died, its message, and its task's last traceback."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    from pluq import message as msg
    from pluq.cli._console import ago, out_console, timestamp
    from pluq.errors import MessageError

    app = _open(app_spec, broker, backend)
    [dead] = _check_known(app, [dead_id])
    record = app.backend.get(dead.id)
    problem = ""
    try:
        header, body = msg.decode(dead.message)
    except MessageError as exc:
        header, body, problem = None, b"", str(exc)
    if json_output:
        data: dict[str, Any] = {
            k: getattr(dead, k) for k in ("id", "queue", "task", "reason", "attempt", "dead_at")
        }
        data["header"] = (
            {k: v for k, v in _header_dict(header).items() if k != "sig"} if header else None
        )
        data["record"] = record.to_dict() if record is not None else None
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))
        raise typer.Exit(EXIT_OK)

    now = app.clock()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold cyan", no_wrap=True)
    grid.add_column()
    grid.add_row("id", dead.id)
    grid.add_row("reason", Text(dead.reason, style="red"))
    grid.add_row("queue", dead.queue)
    grid.add_row("task", dead.task or "?")
    grid.add_row("deliveries", str(dead.attempt))
    grid.add_row("died", f"{timestamp(dead.dead_at)} ({ago(now - dead.dead_at)})")
    if header is None:
        grid.add_row("message", Text(f"unreadable: {problem}", style="red"))
    else:
        grid.add_row("queued", timestamp(header.created or None))
        grid.add_row("serializer", header.serializer + (", signed" if header.sig else ""))
        grid.add_row("arguments", _arguments(app, header, body))
    parts: list[RenderableType] = [grid]
    if record is not None and record.traceback:
        parts.append(
            Panel(Text(record.traceback.rstrip()), title="last traceback", title_align="left")
        )
    more = target_args(app_spec, app)
    parts.append(
        Text(
            f"pluq result {dead.id}{more} shows every attempt; "
            f"pluq dlq retry {dead.id}{more} runs it again.",
            style="dim",
        )
    )
    out_console().print(Group(*parts))
    raise typer.Exit(EXIT_OK)


def _header_dict(header: Any) -> dict[str, Any]:
    from dataclasses import asdict

    data: dict[str, Any] = asdict(header)
    return data


@dlq.command("retry")
def retry(
    ids: IdsArgument = None,
    queue: QueueFilter = None,
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    backend: BackendOption = None,
) -> None:
    """Put dead letters (all, or the ids given) back on their queues, with fresh retries."""
    from pluq.cli._console import out_console

    app = _open(app_spec, broker, backend)
    chosen = _check_known(app, ids) if ids else app.dead_letters(queue)
    if queue is not None:
        chosen = [d for d in chosen if d.queue == queue]
    if not chosen:
        out_console().print("no dead letters to retry", style="dim")
        raise typer.Exit(EXIT_OK)
    moved = app.retry_dead([d.id for d in chosen])
    per_queue: dict[str, int] = {}
    for d in chosen:
        per_queue[d.queue] = per_queue.get(d.queue, 0) + 1
    where = ", ".join(f"{q} ({n})" for q, n in sorted(per_queue.items()))
    out_console().print(f"{moved} dead letter(s) back on their queues: {where}", highlight=False)
    raise typer.Exit(EXIT_OK)


@dlq.command("purge")
def purge_dead(
    ids: IdsArgument = None,
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    yes: YesOption = False,
) -> None:
    """Delete dead letters for good (all, or the ids given); their results stay."""
    from pluq.cli._console import out_console

    app = _open(app_spec, broker)
    if ids:
        _check_known(app, ids)
    else:
        count = len(app.dead_letters())
        if not count:
            out_console().print("no dead letters to delete", style="dim")
            raise typer.Exit(EXIT_OK)
        confirm(f"Delete all {count} dead letter(s) for good?", yes)
    removed = app.broker.purge_dead(ids or None)
    out_console().print(f"deleted {removed} dead letter(s)", highlight=False)
    raise typer.Exit(EXIT_OK)


def purge(
    queue: Annotated[
        str, typer.Argument(metavar="QUEUE", help="The queue to empty.", show_default=False)
    ],
    app_spec: AppOption = None,
    broker: BrokerOption = None,
    yes: YesOption = False,
) -> None:
    """Remove every waiting (ready or delayed) message of a queue; running ones stay."""
    from pluq.cli._console import out_console

    app = _open(app_spec, broker)
    counts = app.broker.counts()
    if queue not in counts:
        known = ", ".join(sorted(counts)) or "none yet"
        raise CliError(
            f"no queue named {queue!r} here{did_you_mean(queue, counts)} (queues: {known})",
            code=EXIT_FAILURE,
        )
    waiting = counts[queue].ready + counts[queue].delayed
    if waiting:
        confirm(f"Remove the {waiting} waiting message(s) of queue {queue!r}?", yes)
    removed = app.purge(queue)
    out_console().print(f"removed {removed} waiting message(s) from {queue!r}", highlight=False)
    raise typer.Exit(EXIT_OK)
