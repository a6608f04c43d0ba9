"""`pluq dlq list | show | retry | purge` and `pluq purge QUEUE`."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner, Result

import pluq
from pluq import message as msg
from pluq.backend import TaskRecord
from pluq.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, cli
from pluq.cli.dlq import _arguments

Graveyard = tuple[pluq.App, str, str]


def kill(app: pluq.App, name: str, *, queue: str = "default", reason: str = "boom") -> str:
    """Queue a task and dead-letter it, as a worker would after its last failure."""
    result = app.send_task(name, (1, "two"), {"three": 3}, queue=queue)
    [delivery] = app.broker.reserve([queue], timeout=0, lease=60)
    app.broker.dead_letter(delivery, reason=reason)
    return result.id


@pytest.fixture
def graveyard(memory_app: pluq.App) -> Graveyard:
    first = kill(memory_app, "billing.charge", reason="PaymentDeclined: card declined")
    second = kill(memory_app, "mail.send", queue="mail", reason="unknown task 'mail.send'")
    return memory_app, first, second


def invoke(runner: CliRunner, app: pluq.App, *args: str) -> Result:
    return runner.invoke(cli, [*args, "--broker", app.broker_url])


def test_list_shows_each_dead_letter_and_why(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, second = graveyard
    result = invoke(runner, app, "dlq", "list")
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    assert out.index(first) < out.index(second)  # oldest first
    assert "billing.charge" in out and "PaymentDeclined: card declined" in out
    assert "mail" in out and "unknown task 'mail.send'" in out
    assert "1 delivery" in out and "2 dead" in out


def test_list_filters_by_queue_and_speaks_json(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, second = graveyard
    only_mail = invoke(runner, app, "dlq", "list", "--queue", "mail")
    assert second in only_mail.stdout and first not in only_mail.stdout
    rows = json.loads(invoke(runner, app, "dlq", "list", "--json").stdout)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["task"] == "billing.charge" and rows[0]["reason"].startswith("PaymentDeclined")


def test_list_when_there_are_none(runner: CliRunner, memory_app: pluq.App) -> None:
    result = invoke(runner, memory_app, "dlq", "list")
    assert result.exit_code == EXIT_OK and "no dead letters" in result.stdout


def test_show_explains_one_dead_letter(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, _ = graveyard
    app.backend.put(
        TaskRecord(id=first, state="FAILURE", traceback="Traceback (most recent call last):\n"
                   "  File \"billing.py\", line 9\nPaymentDeclined: card declined\n"),
        expires=60,
    )  # fmt: skip
    result = invoke(runner, app, "dlq", "show", first)
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    for text in (
        first,
        "PaymentDeclined: card declined",
        "billing.charge",
        "default",
        "'args': [1, 'two']",
        "'kwargs': {'three': 3}",
        "last traceback",
        'File "billing.py", line 9',
        f"pluq dlq retry {first}",
    ):
        assert text in out, text
    data = json.loads(invoke(runner, app, "dlq", "show", first, "--json").stdout)
    assert data["header"]["task"] == "billing.charge" and data["record"]["state"] == "FAILURE"


def test_pickled_arguments_from_a_network_broker_without_secret_are_not_loaded() -> None:
    app = pluq.App("redis://localhost:6390/0", serializer="json")  # never connects here
    header = msg.Header(id="x", task="t", queue="q", serializer="cloudpickle")
    shown = _arguments(app, header, b"\x80\x05 anything")
    assert "not shown" in str(shown)


@pytest.mark.parametrize("command", [["dlq", "show"], ["dlq", "retry"], ["dlq", "purge"]])
def test_an_unknown_dead_letter_id_is_one_line(
    runner: CliRunner, graveyard: Graveyard, command: list[str]
) -> None:
    app, first, _ = graveyard
    result = invoke(runner, app, *command, first[:-1] + "x")
    assert_one_line_error(
        result, EXIT_FAILURE, "no dead letter with id", "did you mean", "pluq dlq list"
    )
    assert len(app.dead_letters()) == 2  # nothing was touched


def test_retry_puts_the_named_ones_back(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, second = graveyard
    result = invoke(runner, app, "dlq", "retry", first)
    assert result.exit_code == EXIT_OK, result.output
    assert "1 dead letter(s) back on their queues: default (1)" in result.stdout
    assert [d.id for d in app.dead_letters()] == [second]
    assert app.broker.counts(["default"])["default"].ready == 1


def test_retry_without_ids_puts_all_back(runner: CliRunner, graveyard: Graveyard) -> None:
    app, _, _ = graveyard
    result = invoke(runner, app, "dlq", "retry")
    assert result.exit_code == EXIT_OK
    assert "2 dead letter(s)" in result.stdout and app.dead_letters() == []


def test_retry_one_queue(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, _ = graveyard
    result = invoke(runner, app, "dlq", "retry", "--queue", "mail")
    assert result.exit_code == EXIT_OK
    assert [d.id for d in app.dead_letters()] == [first]


def test_purge_dead_letters(runner: CliRunner, graveyard: Graveyard) -> None:
    app, first, _ = graveyard
    named = invoke(runner, app, "dlq", "purge", first)
    assert named.exit_code == EXIT_OK and "deleted 1 dead letter(s)" in named.stdout
    unconfirmed = invoke(runner, app, "dlq", "purge")
    assert_one_line_error(unconfirmed, EXIT_USAGE, "Delete all 1 dead letter(s)", "--yes")
    confirmed = invoke(runner, app, "dlq", "purge", "--yes")
    assert confirmed.exit_code == EXIT_OK and app.dead_letters() == []


def test_purge_a_queue(runner: CliRunner, memory_app: pluq.App) -> None:
    for _ in range(3):
        memory_app.send_task("t.a", queue="bulk")
    memory_app.send_task("t.b", queue="bulk", countdown=60)
    unconfirmed = invoke(runner, memory_app, "purge", "bulk")
    assert_one_line_error(unconfirmed, EXIT_USAGE, "Remove the 4 waiting message(s)", "--yes")
    result = invoke(runner, memory_app, "purge", "bulk", "--yes")
    assert result.exit_code == EXIT_OK, result.output
    assert "removed 4 waiting message(s) from 'bulk'" in result.stdout
    assert memory_app.broker.counts(["bulk"])["bulk"].total == 0


def test_purge_an_unknown_queue_names_the_known_ones(
    runner: CliRunner, memory_app: pluq.App
) -> None:
    memory_app.send_task("t.a", queue="bulk")
    result = invoke(runner, memory_app, "purge", "blk", "--yes")
    assert_one_line_error(result, EXIT_FAILURE, "no queue named 'blk'", "did you mean 'bulk'")
