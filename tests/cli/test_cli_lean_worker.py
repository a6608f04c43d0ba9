"""`pluq worker` as a real program becomes the lean worker process (pluq.worker._run).

The command execs a fresh interpreter (same process id) once its options are parsed (by
typer, or without it where stderr is not a terminal), and that process checks them,
imports the app and forks its children before it opens the broker: they carry neither the
command line's typer and rich nor the transport's client (redis-py).
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import typer
from cli_helpers import write_tasks_module
from typer.testing import CliRunner

import pluq
import pluq.cli.worker
from pluq.cli import _lean, cli
from pluq.worker import _run

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


@pytest.mark.parametrize("broker_option", [False, True], ids=["app-url", "--broker"])
def test_a_worker_program_forks_children_before_it_imports_the_broker_client(
    tmp_path: Path, redis_url: str, broker_option: bool
) -> None:
    # given a tasks module on Redis, signed and pickled (as most apps are)
    name = f"cli_tasks_lean_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(TASKS.format(url=redis_url, secret=SECRET))
    app = pluq.App(redis_url, secret=SECRET)
    log = tmp_path / "worker.log"
    # when `pluq worker` runs as a program and a task reports on the child it runs in
    with log.open("wb") as sink:
        worker = subprocess.Popen(
            [sys.executable, "-m", "pluq", "worker", "-A", name, "-c", "2",
             *(["--broker", redis_url] if broker_option else [])],
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


# -- the command line read without typer (pluq.cli._lean) ----------------------------------

USUAL = [
    [],
    ["-A", "tasks:app", "-c", "2", "-l", "WARNING"],
    ["-Atasks", "-c2", "-Qa,b", "-Q", "c", "-Pthreads", "-lwarning", "-nme", "--burst", "--beat"],
    ["--app=tasks", "--concurrency=3", "--queues=a", "--pool=solo", "--loglevel=Error"],
    ["--name=w1", "--broker=sqlite:///x.db", "--json-logs", "-b", "redis://h:1/0"],
    ["-c", "1", "-c", "2", "-A", "x", "-A", "y", "--burst", "--burst", "-P", "processes"],
    ["--loglevel", "debug", "-Q", " a , b ,", "--app", "pkg.tasks:create_app"],
]
"""Command lines `pluq.cli._lean` reads: typer must read them the same."""

UNUSUAL = [
    ["--help"],
    ["-h"],
    ["tasks"],
    ["--", "-A", "x"],
    ["-A"],
    ["-A", ""],
    ["--app="],
    ["-c", "0"],
    ["-c", "two"],
    ["-c", "+2"],
    ["-P", "Solo"],
    ["-l", "loud"],
    ["--burst=1"],
    ["--bogus"],
    ["--name", "-x"],
    ["-A", "x", "--con", "2"],
]
"""Command lines left to typer: help, mistakes, and what only typer knows how to read."""


def _typer_reads(runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str]) -> object:
    """The options `pluq worker ARGS` (typer) hands the lean process, as JSON data."""
    handed: list[object] = []

    def become_lean(settings: str, argv: list[str]) -> None:
        handed.append(json.loads(settings))
        raise typer.Exit(0)

    monkeypatch.setattr(pluq.cli.worker, "lean_exec", True)
    monkeypatch.setattr(_lean, "become_lean", become_lean)
    result = runner.invoke(cli, ["worker", *args])
    assert result.exit_code == 0, result.output
    [settings] = handed
    return settings


@pytest.mark.parametrize("args", USUAL)
@pytest.mark.parametrize("pluq_app", [None, "", "from_env:app"])
def test_the_usual_command_line_reads_the_same_without_typer(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, args: list[str], pluq_app: str | None
) -> None:
    if pluq_app is not None:
        monkeypatch.setenv("PLUQ_APP", pluq_app)
    read_here = _lean.worker_options(args, os.environ)
    assert read_here is not None
    assert read_here == _typer_reads(runner, monkeypatch, args)
    assert _run.Settings.decode(json.dumps(read_here)) == _run.Settings(**read_here)


@pytest.mark.parametrize("args", UNUSUAL)
def test_help_mistakes_and_unusual_spellings_are_left_to_typer(args: list[str]) -> None:
    assert _lean.worker_options(args, {}) is None


def test_the_lean_process_reads_what_the_command_line_hands_it() -> None:
    assert _lean.SETTINGS_ENV == _run.SETTINGS_ENV
    assert _lean.LEAN_MODULE == _run.__name__ == "pluq.worker._run"


def test_a_worker_program_without_a_terminal_imports_the_app_once_and_never_typer(
    tmp_path: Path,
) -> None:
    # given a tasks module that notes each time it is imported, and a task queued for it
    url = f"sqlite:///{tmp_path / 'x.db'}"
    name = write_tasks_module(tmp_path, url, extra="open('imports.log', 'a').write('imported\\n')")
    app = pluq.App(url, serializer="json")
    added = app.send_task(f"{name}.add", (2, 3))
    env = {k: v for k, v in environment().items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    # when the worker program runs with stderr in a pipe, both its processes timed
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pluq", "worker", "-A", name, "--burst",
         "-P", "solo"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # then it ran the task, imported the app once, and neither process imported the
    # command line's typer and rich
    lines = done.stderr.splitlines()
    assert done.returncode == 0, done.stderr
    assert added.get(timeout=5) == 5
    assert (tmp_path / "imports.log").read_text() == "imported\n"
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import ")}
    assert "pluq.app" in imported
    assert not {m for m in imported if m.split(".")[0] in ("typer", "click", "rich", "pydantic")}
    # and the banner is plain text, one line per field
    shown = [line for line in lines if not line.startswith("import ")]
    assert shown[0] == "pluq 0.1.0 worker"
    assert f"  broker       {url}" in shown
    assert f"  app          {name} (4 tasks: {name}.add, {name}.fail," in "\n".join(shown)
    assert "  concurrency  1 (solo)" in shown
    app.close()


def test_an_error_line_without_a_terminal_is_what_the_command_writes_there(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pluq.cli._common import warn

    message = "a\x07b\x08c  d\te\nf"
    warn(message)  # rich, on a stderr that is not a terminal
    from_rich = capsys.readouterr().err.replace("warning: ", "error: ", 1)
    assert _run._fail(message, 2) == 2
    assert capsys.readouterr().err == from_rich == "error: abc d e f\n"


def test_the_plain_banner_never_shows_a_password() -> None:
    app = pluq.App("memory://banner-plain", serializer="json")
    app.broker_url = "redis://:s3cret@localhost:6390/0"
    buffer = io.StringIO()
    sys.stderr, stderr = buffer, sys.stderr
    try:
        _run.print_banner(None, app, None, app.Worker(pool="solo"), False)
    finally:
        sys.stderr = stderr
    text = buffer.getvalue()
    assert "s3cret" not in text
    assert "  broker       redis://:***@localhost:6390/0\n" in text
    app.close()
