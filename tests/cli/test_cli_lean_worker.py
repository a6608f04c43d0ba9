"""`pluq worker` as a real program becomes the lean worker process (pluq.worker._run).

The command execs a fresh interpreter (same process id) once its options are checked, and
that process forks its children before it opens the broker: they carry neither the
command line's typer and rich nor the transport's client (redis-py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pluq

SECRET = "lean-worker-test"

TASKS = '''
"""Tasks for the lean worker test: one that reports on the process it runs in."""

import os
import sys

import pluq

app = pluq.App({url!r}, secret={secret!r})


@app.task
def report():
    return {{"pid": os.getpid(), "ppid": os.getppid(), "modules": sorted(sys.modules)}}
'''

HEAVY = ("redis", "hiredis", "ssl", "asyncio", "cloudpickle", "typer", "click", "rich", "pydantic")
"""Packages a worker's child must not carry (the transport's client, the command line's)."""
HEAVY_PLUQ = ("pluq.cli", "pluq.transports")


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PLUQ_")}


def test_a_worker_program_forks_children_before_it_imports_the_broker_client(
    tmp_path: Path, redis_url: str
) -> None:
    # given a tasks module on Redis, signed and pickled (as most apps are)
    name = f"cli_tasks_lean_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(TASKS.format(url=redis_url, secret=SECRET))
    app = pluq.App(redis_url, secret=SECRET)
    log = tmp_path / "worker.log"
    # when `pluq worker` runs as a program and a task reports on the child it runs in
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pluq", "worker", "-A", name, "-c", "2"],
            cwd=tmp_path, env=environment(), stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            report = app.send_task(f"{name}.report").get(timeout=60)
            cmdline = Path(f"/proc/{worker.pid}/cmdline").read_bytes().split(b"\0")
            worker.send_signal(signal.SIGTERM)
            code = worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(30)
    # then the worker is the same process, now the lean entry point, and exits 0
    assert code == 0, log.read_text()
    assert b"pluq.worker._run" in cmdline
    assert b"pluq worker" in b" ".join(cmdline)  # what pgrep -f "pluq worker" looks for
    assert "pluq 0.1.0 worker" in log.read_text()  # the command printed its banner first
    # and the task ran in a child forked by it, which never imported the heavy modules
    assert report["ppid"] == worker.pid and report["pid"] != worker.pid
    modules = report["modules"]
    heavy = [m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY_PLUQ)]
    assert heavy == []
    app.close()


def test_the_lean_entry_point_run_by_hand_says_to_use_pluq_worker(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pluq.worker._run"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and "pluq worker -A module:app" in done.stderr
    assert done.stderr.count("\n") == 1


def test_a_mistake_found_once_the_broker_opens_is_one_line_and_exit_2(tmp_path: Path) -> None:
    # given a URL option that only the transport knows is wrong, found when it opens
    url = f"sqlite:///{tmp_path / 'x.db'}?bogus=1"
    # when the worker program (by then the lean process) opens it
    done = subprocess.run(
        [sys.executable, "-m", "pluq", "worker", "--broker", url, "--burst"],
        cwd=tmp_path, env=environment(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    # then it ends as a command does: one line naming the option, exit code 2
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    [error] = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert "unknown option(s) bogus" in error
