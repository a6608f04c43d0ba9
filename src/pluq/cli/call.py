"""`pluq call NAME`: queue a task by name, with JSON arguments."""

from __future__ import annotations

from typing import Annotated

import typer

from pluq.cli._common import (
    EXIT_OK,
    EXIT_USAGE,
    AppOption,
    BrokerOption,
    CliError,
    did_you_mean,
    open_app,
    parse_json,
    require_shared,
    target_args,
    warn,
)

__all__ = ["call"]


def call(
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME", help="The task's registered name, e.g. tasks.add.", show_default=False
        ),
    ],
    args: Annotated[
        str,
        typer.Option("--args", "-a", metavar="JSON", help="Positional arguments: a JSON array."),
    ] = "[]",
    kwargs: Annotated[
        str,
        typer.Option("--kwargs", "-k", metavar="JSON", help="Keyword arguments: a JSON object."),
    ] = "{}",
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="The queue.", show_default="the task's, else default"),
    ] = None,
    countdown: Annotated[
        float | None,
        typer.Option("--countdown", min=0, help="Seconds from now before it may start."),
    ] = None,
    task_id: Annotated[
        str | None,
        typer.Option("--id", help="The task id (queueing an id already queued does nothing)."),
    ] = None,
    app_spec: AppOption = None,
    broker: BrokerOption = None,
) -> None:
    """Queue a task by name and print its id; a worker runs it.

    With -A the name is checked against the app's tasks.

    Without -A it is queued unchecked, for a worker that knows it.
    """
    from pluq.registry import URL

    arguments = parse_json("--args", args, list)
    keywords = parse_json("--kwargs", kwargs, dict)
    # Arguments from JSON need no pickling: a bare app queues them readable, as JSON.
    app = open_app(app_spec, broker, serializer="json")
    require_shared(app.broker_url, "a task queued from here")
    if app_spec:
        if name not in app.tasks:
            known = ", ".join(sorted(app.tasks)) or "none"
            raise CliError(
                f"no task named {name!r} in -A {app_spec}{did_you_mean(name, app.tasks)} "
                f"(its tasks: {known})",
                code=EXIT_USAGE,
            )
    else:
        warn(
            f"no -A given, so {name!r} is not checked: a worker without that task "
            f"dead-letters it (pluq dlq list)"
        )
    result = app.send_task(
        name, arguments, keywords, queue=queue, countdown=countdown, task_id=task_id
    )
    typer.echo(result.id)
    from pluq.cli._console import err_console

    where = queue or (app.tasks[name].queue if name in app.tasks else None) or app.default_queue
    when = f", in {countdown:g} s" if countdown else ""
    err_console().print(
        f"queued {name}[{result.id}] on {where!r} at {URL.parse(app.broker_url).redacted}{when}; "
        f"see it with: pluq result {result.id}{target_args(app_spec, app)}",
        soft_wrap=True,
        style="dim",
        markup=False,
        highlight=False,
    )
    raise typer.Exit(EXIT_OK)
