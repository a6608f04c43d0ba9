"""`pluq call NAME`: queue a task by name with JSON arguments; mistakes are one line."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

import pluq
from pluq import message as msg
from pluq.cli import EXIT_OK, EXIT_USAGE, cli


def test_call_queues_a_registered_task_and_prints_its_id(
    runner: CliRunner, tasks: tuple[str, pluq.App]
) -> None:
    name, app = tasks
    result = runner.invoke(cli, ["call", f"{name}.add", "--args", "[1, 2]", "-A", name])
    assert result.exit_code == EXIT_OK, result.output
    task_id = result.stdout.strip()
    assert len(task_id) == 32 and "\n" not in task_id  # just the id: id=$(pluq call ...)
    assert f"queued {name}.add[{task_id}]" in result.stderr
    assert f"pluq result {task_id}" in result.stderr
    # and a worker runs it
    app.Worker(pool="threads", concurrency=1, poll=0.05).run(burst=True)
    assert app.AsyncResult(task_id).get(timeout=5) == 3


def test_call_with_kwargs_queue_countdown_and_id(
    runner: CliRunner, tasks: tuple[str, pluq.App]
) -> None:
    name, app = tasks
    result = runner.invoke(
        cli,
        ["call", f"{name}.add", "--kwargs", '{"x": 1, "y": 5}', "--queue", "slow",
         "--countdown", "60", "--id", "my-id", "-A", name],
    )  # fmt: skip
    assert result.exit_code == EXIT_OK, result.output
    assert result.stdout.strip() == "my-id"
    assert app.broker.counts(["slow"])["slow"].delayed == 1
    assert "in 60 s" in result.stderr


def test_without_app_the_name_is_not_checked_and_a_warning_says_so(
    runner: CliRunner, db_url: str
) -> None:
    result = runner.invoke(cli, ["call", "billing.charge", "--args", '["A-1"]', "--broker", db_url])
    assert result.exit_code == EXIT_OK, result.output
    assert "warning: no -A given, so 'billing.charge' is not checked" in result.stderr
    app = pluq.App(db_url, serializer="json")
    [delivery] = app.broker.reserve(["default"], timeout=0, lease=5)
    header, body = msg.decode(delivery.message)
    assert header.task == "billing.charge" and header.serializer == "json"
    assert json.loads(body) == {"args": ["A-1"], "kwargs": {}}  # readable, no pickle
    app.close()


def test_an_unknown_task_name_with_app_is_an_error(
    runner: CliRunner, tasks: tuple[str, pluq.App]
) -> None:
    name, app = tasks
    result = runner.invoke(cli, ["call", f"{name}.ad", "-A", name])
    assert_one_line_error(
        result, EXIT_USAGE, f"no task named '{name}.ad'", f"did you mean '{name}.add'"
    )
    assert sum(c.total for c in app.broker.counts().values()) == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--args", "[1, 2"], ["--args is not valid JSON", "JSON array"]),
        (["--args", '{"x": 1}'], ["--args must be a JSON array, not dict"]),
        (["--args", "3"], ["--args must be a JSON array, not int"]),
        (["--kwargs", "[1]"], ["--kwargs must be a JSON object, not list"]),
        (["--kwargs", "{x: 1}"], ["--kwargs is not valid JSON"]),
    ],
)
def test_bad_json_is_one_line_and_exit_2(
    runner: CliRunner, db_url: str, args: list[str], words: list[str]
) -> None:
    result = runner.invoke(cli, ["call", "t.x", *args, "--broker", db_url])
    assert_one_line_error(result, EXIT_USAGE, *words)


def test_call_into_a_memory_broker_is_refused(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["call", "t.x", "--broker", "memory://gone"])
    assert_one_line_error(result, EXIT_USAGE, "inside one process")
