"""`pluq result ID`: state, result, retries, attempt history and tracebacks."""

from __future__ import annotations

import json
import re

from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

import pluq
from pluq.backend import Attempt, TaskRecord
from pluq.cli import EXIT_FAILURE, EXIT_OK, cli

TRACEBACK = """Traceback (most recent call last):
  File "tasks.py", line 3, in charge
    raise PaymentDeclined("card declined")
tasks.PaymentDeclined: card declined
"""


def put(app: pluq.App, record: TaskRecord) -> None:
    app.backend.put(record, expires=600)


def test_a_success_shows_its_value_and_attempts(runner: CliRunner, memory_app: pluq.App) -> None:
    now = memory_app.clock()
    put(
        memory_app,
        TaskRecord(
            id="t-ok", state="SUCCESS", task="tasks.add", queue="default",
            result={"sum": 5}, result_encoding="json", result_repr="{'sum': 5}",
            worker="box:1:0001", created_at=now - 3, started_at=now - 2, finished_at=now - 1,
            history=(Attempt(number=1, state="SUCCESS", started_at=now - 2, finished_at=now - 1,
                             worker="box:1:0001"),),
        ),
    )  # fmt: skip
    result = runner.invoke(cli, ["result", "t-ok", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    for text in (
        "t-ok",
        "SUCCESS",
        "tasks.add",
        "default",
        "box:1:0001",
        "{'sum': 5}",
        "ran 1.0 s",
    ):
        assert text in out, text


def test_a_failure_shows_every_attempt_with_its_traceback(
    runner: CliRunner, memory_app: pluq.App
) -> None:
    history = (
        Attempt(number=1, state="RETRY", exc_type="ConnectionError", exc_message="timed out",
                traceback="ConnectionError: timed out\n"),
        Attempt(number=2, state="LOST", exc_type="pluq.errors.WorkerLostError",
                exc_message="delivery 2 was lost"),
        Attempt(number=3, state="FAILURE", exc_type="tasks.PaymentDeclined",
                exc_message="card declined", traceback=TRACEBACK),
    )  # fmt: skip
    put(
        memory_app,
        TaskRecord(
            id="t-bad", state="FAILURE", task="tasks.charge", retries=2, history=history,
            exc_type="tasks.PaymentDeclined", exc_message="card declined", traceback=TRACEBACK,
        ),
    )  # fmt: skip
    result = runner.invoke(cli, ["result", "t-bad", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    assert "FAILURE" in out and "tasks.PaymentDeclined: card declined" in out
    assert "ConnectionError: timed out" in out and "pluq.errors.WorkerLostError" in out
    assert re.search(r"^retries +2 *$", out, re.MULTILINE)
    assert "attempt 3: FAILURE" in out
    assert out.count("Traceback (most recent call last)") == 1  # once, not again at the end
    assert 'raise PaymentDeclined("card declined")' in out


def test_a_value_that_is_not_json_is_shown_by_its_repr(
    runner: CliRunner, memory_app: pluq.App
) -> None:
    put(
        memory_app,
        TaskRecord(id="t-obj", state="SUCCESS", result="gASVAAAA", result_encoding="cloudpickle",
                   result_repr="Point(x=1, y=2)"),
    )  # fmt: skip
    result = runner.invoke(cli, ["result", "t-obj", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK
    assert "Point(x=1, y=2)" in result.stdout
    assert "stored as cloudpickle" in result.stdout
    assert "gASV" not in result.stdout  # never unpickled, never dumped


def test_an_unknown_id_is_pending(runner: CliRunner, memory_app: pluq.App) -> None:
    result = runner.invoke(cli, ["result", "nope", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK
    assert "PENDING" in result.stdout and "no record" in result.stdout
    as_json = runner.invoke(cli, ["result", "nope", "--json", "--broker", memory_app.broker_url])
    assert json.loads(as_json.stdout) == {"id": "nope", "state": "PENDING"}


def test_json_output_is_the_stored_record(runner: CliRunner, memory_app: pluq.App) -> None:
    record = TaskRecord(id="t-j", state="RETRY", task="x", retries=1, meta={"last_tick": 60.0})
    put(memory_app, record)
    shown = runner.invoke(cli, ["result", "t-j", "--broker", memory_app.broker_url])
    assert "'last_tick': 60.0" in shown.stdout  # meta (workflows, the scheduler) shows too
    result = runner.invoke(cli, ["result", "t-j", "--json", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK
    assert TaskRecord.from_dict(json.loads(result.stdout)) == record


def test_a_record_with_a_bad_signature_is_refused(runner: CliRunner, memory_app: pluq.App) -> None:
    put(memory_app, TaskRecord(id="t-forged", state="SUCCESS", result=1, result_encoding="json"))
    result = runner.invoke(
        cli, ["result", "t-forged", "--broker", memory_app.broker_url], env={"PLUQ_SECRET": "k"}
    )
    assert_one_line_error(result, EXIT_FAILURE, "t-forged", "unsigned")


def test_the_backend_option_reads_results_elsewhere(
    runner: CliRunner, memory_app: pluq.App, db_url: str
) -> None:
    results = pluq.App(db_url, serializer="json")
    put(results, TaskRecord(id="t-far", state="SUCCESS", result=42, result_encoding="json"))
    results.close()
    result = runner.invoke(
        cli, ["result", "t-far", "--broker", memory_app.broker_url, "--backend", db_url]
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "42" in result.stdout


def test_result_of_a_task_a_worker_retried(runner: CliRunner, tasks: tuple[str, pluq.App]) -> None:
    name, app = tasks
    flaky = app.send_task(f"{name}.flaky", (2,))
    app.Worker(pool="threads", concurrency=1, poll=0.05).run(burst=True)
    result = runner.invoke(cli, ["result", flaky.id, "-A", name])
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    assert "SUCCESS" in out and "'ok'" in out
    assert out.count("RETRY") == 2 and "ConnectionError: attempt 1 failed" in out
