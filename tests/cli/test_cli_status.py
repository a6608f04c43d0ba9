"""`pluq status`: queue counts and live workers, as a table, as JSON, and live."""

from __future__ import annotations

import json

import pytest
from cli_helpers import assert_one_line_error
from typer.testing import CliRunner

import pluq
from pluq.cli import EXIT_FAILURE, EXIT_OK, cli


@pytest.fixture
def busy(memory_app: pluq.App) -> pluq.App:
    """A broker with 2 ready, 1 delayed, 1 running and 1 dead message, and one worker."""
    app = memory_app
    broker = app.broker
    app.send_task("t.dead")
    [doomed] = broker.reserve(["default"], timeout=0, lease=60)
    broker.dead_letter(doomed, reason="it had to")
    app.send_task("t.running")
    broker.reserve(["default"], timeout=0, lease=60)
    app.send_task("t.a")
    app.send_task("t.b")
    app.send_task("t.later", countdown=600)
    app.send_task("t.urgent", queue="high")
    now = app.clock()
    broker.heartbeat(
        pluq.WorkerInfo(
            id="box:4242:0001", hostname="box", pid=4242, queues=("high", "default"),
            concurrency=4, pool="threads", started_at=now - 120, heartbeat_at=now, processed=7,
        ),
        ttl=60,
    )  # fmt: skip
    return app


def test_status_shows_each_queue_and_each_live_worker(runner: CliRunner, busy: pluq.App) -> None:
    result = runner.invoke(cli, ["status", "--broker", busy.broker_url])
    assert result.exit_code == EXIT_OK, result.output
    out = result.stdout
    for header in ("Queue", "Ready", "Delayed", "Running", "Dead", "Worker", "Heartbeat"):
        assert header in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert rows["default"] == ["2", "1", "1", "1"]
    assert rows["high"] == ["1", "0", "0", "0"]
    assert rows["total"] == ["3", "1", "1", "1"]
    worker = rows["box:4242:0001"]
    assert worker[:4] == ["box", "4242", "high,", "default"]
    assert "4 threads" in " ".join(worker) and "7" in worker and "ago" in worker


def test_status_json_is_for_machines(runner: CliRunner, busy: pluq.App) -> None:
    result = runner.invoke(cli, ["status", "--json", "--broker", busy.broker_url])
    assert result.exit_code == EXIT_OK
    data = json.loads(result.stdout)
    assert data["queues"]["default"] == {"ready": 2, "delayed": 1, "running": 1, "dead": 1}
    [worker] = data["workers"]
    assert worker["id"] == "box:4242:0001" and worker["processed"] == 7


def test_status_of_an_empty_broker_says_what_to_do(runner: CliRunner, memory_app: pluq.App) -> None:
    result = runner.invoke(cli, ["status", "--broker", memory_app.broker_url])
    assert result.exit_code == EXIT_OK
    assert "no queues yet" in result.stdout
    assert "no live workers: start one with pluq worker -A module:app" in result.stdout


def test_watch_refreshes_until_told_to_stop(runner: CliRunner, busy: pluq.App) -> None:
    result = runner.invoke(
        cli,
        [
            "status",
            "--broker",
            busy.broker_url,
            "--watch",
            "--iterations",
            "3",
            "--interval",
            "0.01",
        ],
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "box:4242:0001" in result.stdout


def test_status_reads_a_sqlite_file(runner: CliRunner, db_url: str) -> None:
    app = pluq.App(db_url, serializer="json")
    app.send_task("t.a", queue="files")
    app.close()
    result = runner.invoke(cli, ["status", "--broker", db_url])
    assert result.exit_code == EXIT_OK
    assert "files" in result.stdout


def test_status_without_the_default_database_explains(runner: CliRunner) -> None:
    # given a folder without ./pluq.db (the default broker)
    result = runner.invoke(cli, ["status"])
    # then nothing is created, and the error says where it looked
    assert_one_line_error(
        result, EXIT_FAILURE, "sqlite:///pluq.db", "pluq.db does not exist", "--broker"
    )
    import os

    assert not os.path.exists("pluq.db")
