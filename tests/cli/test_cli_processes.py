"""The `pluq` command as real processes: a worker stopped by SIGTERM, beat, the demo."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cli_helpers import write_tasks_module

import pluq
from _support import wait_until

PLUQ = Path(sys.executable).with_name("pluq")  # the console script of this environment


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PLUQ_")}
    env["COLUMNS"] = "200"  # log lines unwrapped, easier to read in a failure
    return env


@contextmanager
def running(args: list[str], cwd: Path, log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A pluq process with stdout and stderr in `log`; killed if the test leaves it running."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "pluq", *args], cwd=cwd, env={**environment(), **env},
            stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def test_worker_runs_tasks_and_exits_0_after_sigterm_letting_the_running_one_finish(
    tmp_path: Path,
) -> None:
    # given a tasks module and a worker process on a SQLite file
    url = f"sqlite:///{tmp_path / 'x.db'}"
    name = write_tasks_module(tmp_path, "memory://unused-by-the-worker")
    app = pluq.App(url, serializer="json")
    gate = tmp_path / "gate"
    log = tmp_path / "worker.log"
    with running(["worker", "-A", name, "--broker", url, "-c", "2"], tmp_path, log) as worker:
        # when tasks are queued, one of them still running when SIGTERM comes
        added = app.send_task(f"{name}.add", (2, 3))
        assert added.get(timeout=60) == 5
        slow = app.send_task(f"{name}.wait_for", (str(gate),))
        wait_until(lambda: slow.state == "STARTED", timeout=60, what="the slow task to start")
        worker.send_signal(signal.SIGTERM)
        wait_until(lambda: "warm shutdown" in log.read_text(), timeout=60, what="warm shutdown")
        assert worker.poll() is None  # still running: it waits for the task
        gate.touch()
        # then the worker finishes the running task and exits 0
        assert worker.wait(60) == 0
    assert slow.get(timeout=5) == "done"
    output = log.read_text()
    assert "pluq 0.1.0 worker" in output and url in output
    assert f"task {name}.add[{added.id}] succeeded in" in output
    assert "warm shutdown" in output and "stopped (warm)" in output
    assert "Traceback" not in output
    assert app.stats().workers == []  # it unregistered
    app.close()


def test_a_second_ctrl_c_stops_at_once_with_exit_130_and_puts_the_task_back(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    name = write_tasks_module(tmp_path, url)
    app = pluq.App(url, serializer="json")
    log = tmp_path / "worker.log"
    with running(["worker", "-A", name, "-c", "1"], tmp_path, log) as worker:
        stuck = app.send_task(f"{name}.wait_for", (str(tmp_path / "never"),))
        wait_until(lambda: stuck.state == "STARTED", timeout=60, what="the task to start")
        worker.send_signal(signal.SIGINT)
        wait_until(lambda: "warm shutdown" in log.read_text(), timeout=60, what="warm shutdown")
        worker.send_signal(signal.SIGINT)
        assert worker.wait(60) == 130
    assert app.broker.counts(["default"])["default"].ready == 1  # back, not lost
    assert "Traceback" not in log.read_text()
    app.close()


def test_beat_queues_periodic_ticks_and_exits_0_after_sigterm(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    name = write_tasks_module(
        tmp_path,
        url,
        extra="""
        @app.periodic(every=0.5, name="often", queue="ticks")
        def often():
            return "tick"
        """,
    )
    app = pluq.App(url, serializer="json")
    with running(["beat", "-A", name], tmp_path, tmp_path / "beat.log", COLUMNS="60") as beat:
        wait_until(
            lambda: app.broker.counts(["ticks"])["ticks"].ready >= 1,
            timeout=60,
            what="a tick to be queued",
        )
        beat.send_signal(signal.SIGTERM)
        assert beat.wait(60) == 0
    output = (tmp_path / "beat.log").read_text()
    assert "Traceback" not in output
    # and its banner is one line, however narrow the terminal and long the URL
    banner = next(line for line in output.splitlines() if line.startswith("pluq beat"))
    assert banner.endswith("; Ctrl-C stops"), output
    app.close()


def test_demo_in_an_empty_folder(tmp_path: Path) -> None:
    # when `pluq demo` runs (the console script, processes pool) in an empty folder
    done = subprocess.run(
        [str(PLUQ), "demo"], cwd=tmp_path, env=environment(), capture_output=True, timeout=180
    )
    output = (done.stdout + done.stderr).decode()
    # then it exits 0 and ./pluq.db holds successes, a failure and a dead letter
    assert done.returncode == 0, output
    assert "Traceback" not in output
    with sqlite3.connect(tmp_path / "pluq.db") as db:
        states = dict(db.execute("select state, count(*) from pluq_results group by state"))
        dead = db.execute("select count(*) from pluq_messages where state = 'dead'").fetchone()
    db.close()
    assert states.get("SUCCESS", 0) >= 30 and states.get("FAILURE") == 1
    assert dead == (1,)


def test_a_mistake_in_a_real_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pluq", "worker", "-A", "no_such_module"],
        cwd=tmp_path, env=environment(), capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == b""
    assert done.stderr.decode().strip().count("\n") == 0
    assert "no module named 'no_such_module'" in done.stderr.decode()
