"""`pluq worker` in this process (CliRunner): banner, log lines, burst, JSON logs, errors."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error
from rich.console import Console
from typer.testing import CliRunner

import pluq
from pluq.cli import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, cli
from pluq.cli.worker import _banner


def test_burst_worker_runs_the_queue_dry_and_logs_each_task(
    runner: CliRunner, tasks: tuple[str, pluq.App], db_url: str
) -> None:
    # given tasks that succeed, fail, and retry, queued on a SQLite broker
    name, app = tasks
    ok = app.send_task(f"{name}.add", (2, 3))
    bad = app.send_task(f"{name}.fail", ("boom",))
    flaky = app.send_task(f"{name}.flaky", (1,))
    # when a burst worker runs (threads: the tasks module is importable in this process)
    result = runner.invoke(
        cli, ["worker", "-A", name, "--burst", "--pool", "threads", "-c", "2", "-Q", "default"]
    )
    # then it exits 0 with every task done, and said so
    assert result.exit_code == EXIT_OK, result.output
    assert ok.get(timeout=5) == 5
    assert bad.state == "FAILURE" and flaky.get(timeout=5) == "ok"
    for word in (
        "pluq 0.1.0 worker",
        db_url,
        "queues",
        "default",
        "concurrency",
        "2 (threads)",
        "pid",
        f"{name}.add",
    ):
        assert word in result.stderr, word
    assert f"task {name}.add[{ok.id}] received (attempt 1)" in result.stderr
    assert f"task {name}.add[{ok.id}] started" in result.stderr
    assert f"task {name}.add[{ok.id}] succeeded in" in result.stderr
    assert f"task {name}.fail[{bad.id}] failed, dead-lettered: ValueError: boom" in result.stderr
    assert f"task {name}.flaky[{flaky.id}] will retry in" in result.stderr
    assert "stopped (warm)" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""  # everything a worker says goes to stderr


def test_json_logs_are_one_object_per_line(
    runner: CliRunner, tasks: tuple[str, pluq.App], db_url: str
) -> None:
    name, app = tasks
    ok = app.send_task(f"{name}.add", (1, 1))
    result = runner.invoke(cli, ["worker", "-A", name, "--burst", "--pool", "solo", "--json-logs"])
    assert result.exit_code == EXIT_OK, result.output
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records, "no log lines"
    assert {"time", "level", "logger", "message", "pid"} <= set(records[0])
    [start] = [r for r in records if r["message"] == "worker starting"]
    assert start["broker"] == db_url and start["pool"] == "solo" and start["queues"] == ["default"]
    about_ok = [r for r in records if r.get("task_id") == ok.id]
    assert [r["message"].split("]")[1].split()[0] for r in about_ok] == [
        "received", "started", "succeeded",
    ]  # fmt: skip
    done = about_ok[-1]
    assert done["task"] == f"{name}.add" and "succeeded" in done["message"]
    assert done["level"] == "INFO" and done["logger"] == "pluq.worker"


def test_loglevel_warning_hides_the_success_lines(
    runner: CliRunner, tasks: tuple[str, pluq.App]
) -> None:
    name, app = tasks
    app.send_task(f"{name}.add", (1, 1))
    bad = app.send_task(f"{name}.fail", ("nope",))
    result = runner.invoke(
        cli, ["worker", "-A", name, "--burst", "--pool", "solo", "--loglevel", "warning"]
    )
    assert result.exit_code == EXIT_OK, result.output
    assert "succeeded" not in result.stderr
    assert f"[{bad.id}] failed" in result.stderr


def test_without_app_a_worker_runs_tasks_sent_by_value_and_dead_letters_others(
    runner: CliRunner, db_url: str
) -> None:
    # given a task defined where no worker can import it (a closure travels by value)
    app = pluq.App(db_url)

    def make() -> pluq.Task:  # type: ignore[type-arg]
        @app.task
        def triple(x: int) -> int:
            return 3 * x

        return triple

    by_value = make().delay(4)
    unknown = app.send_task("nobody.knows", (1,))
    # when a worker without -A drains the queue
    result = runner.invoke(cli, ["worker", "--broker", db_url, "--burst", "--pool", "threads"])
    # then the by-value task ran, and the unknown one is dead with a reason saying why
    assert result.exit_code == EXIT_OK, result.output
    assert by_value.get(timeout=5) == 12
    assert "none (-A not given)" in result.stderr
    [dead] = app.dead_letters()
    assert dead.id == unknown.id and "no app (-A)" in dead.reason
    app.close()


def test_memory_broker_for_a_worker_is_refused_with_the_reason(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["worker", "--broker", "memory://x"])
    assert_one_line_error(
        result, EXIT_USAGE, "memory://x", "inside one process", "sqlite:///pluq.db"
    )


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--pool", "gevent"], ["gevent"]),
        (["-c", "0"], ["--concurrency"]),
        (["--pool", "solo", "-c", "2"], ["solo", "concurrency=1"]),
        (["--loglevel", "LOUD"], ["LOUD"]),
    ],
)
def test_bad_worker_options_are_usage_errors(
    runner: CliRunner, db_url: str, args: list[str], words: list[str]
) -> None:
    result = runner.invoke(cli, ["worker", "--broker", db_url, "--burst", *args])
    assert result.exit_code == EXIT_USAGE, result.output
    for word in words:
        assert word in result.output
    assert "Traceback" not in result.output


def test_beat_without_a_scheduler_says_it_is_not_available(
    runner: CliRunner, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pluq.scheduler", None)  # an install without it
    for args in (["worker", "--burst", "--beat"], ["beat"]):
        result = runner.invoke(cli, [*args, "--broker", db_url])
        assert_one_line_error(result, EXIT_UNAVAILABLE, "not available yet")


def test_burst_worker_with_beat_runs_the_scheduler_beside_it(
    runner: CliRunner, tmp_path: Path, db_url: str
) -> None:
    # given an app with a periodic task
    from cli_helpers import write_tasks_module

    name = write_tasks_module(
        tmp_path,
        db_url,
        extra="""
        @app.periodic(every=3600, name="hourly")
        def hourly():
            return "tick"
        """,
    )
    result = runner.invoke(
        cli, ["worker", "-A", name, "--burst", "--beat", "--pool", "solo", "--json-logs"]
    )
    assert result.exit_code == EXIT_OK, result.output
    messages = [json.loads(line)["message"] for line in result.stderr.splitlines() if line]
    assert any("beat" in m and "hourly" in m for m in messages), messages


def test_the_banner_never_shows_a_password() -> None:
    app = pluq.App("memory://banner", serializer="json")
    app.broker_url = "redis://:s3cret@localhost:6390/0"
    buffer = io.StringIO()
    _banner(Console(file=buffer, width=200), app, None, app.Worker(pool="solo"), False)
    text = buffer.getvalue()
    assert "s3cret" not in text
    assert "redis://:***@localhost:6390/0" in text


def test_beat_queues_ticks_until_sigterm(runner: CliRunner, tmp_path: Path, db_url: str) -> None:
    # given an app with a schedule ticking every half second
    import os
    import signal
    import threading

    from cli_helpers import write_tasks_module

    from _support import wait_until

    name = write_tasks_module(
        tmp_path,
        db_url,
        extra="""
        @app.periodic(every=0.5, name="often", queue="ticks")
        def often():
            return "tick"
        """,
    )
    app = pluq.App(db_url, serializer="json")
    before = signal.getsignal(signal.SIGTERM)

    ticked = threading.Event()

    def stop_beat_once_it_ticked() -> None:
        try:
            wait_until(lambda: app.broker.counts(["ticks"])["ticks"].ready >= 1, what="a tick")
            ticked.set()
        finally:
            # Signal only once `pluq beat` handles SIGTERM itself: never kill the test run.
            # If it failed to start, it has returned already and there is nothing to stop.
            if signal.getsignal(signal.SIGTERM) is not before:
                os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_beat_once_it_ticked)
    stopper.start()
    # when `pluq beat` runs (in this thread) until that SIGTERM
    result = runner.invoke(cli, ["beat", "-A", name])
    stopper.join()
    # then it exits 0, having queued the tick and said so
    assert ticked.is_set()
    assert result.exit_code == EXIT_OK, result.output
    assert "pluq beat: queueing periodic tasks" in result.stderr
    assert "often" in result.stderr
    assert app.broker.counts(["ticks"])["ticks"].ready >= 1
    app.close()


def test_log_lines_are_rich_on_a_terminal_and_plain_in_a_file() -> None:
    import logging

    from pluq.cli._console import logging_to

    long_id = "f" * 32
    for terminal in (True, False):
        buffer = io.StringIO()
        console = Console(file=buffer, force_terminal=terminal, width=60)
        with logging_to(console, "INFO", json_lines=False):
            logging.getLogger("pluq.worker").info("task t.add[%s] succeeded in 1.0 ms", long_id)
            logging.getLogger("pluq.worker").debug("not shown at INFO")
        text = buffer.getvalue()
        assert "not shown" not in text
        if terminal:  # rich: coloured, wrapped to the terminal
            assert "\x1b[" in text and "succeeded" in text
        else:  # a file: one plain line, whatever its length
            [line] = text.splitlines()
            assert line.endswith(f"INFO pluq.worker: task t.add[{long_id}] succeeded in 1.0 ms")
