"""Helpers for the CLI tests: a tasks module written to disk, and error-output checks."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

from typer.testing import Result

TASKS_SOURCE = '''
"""Tasks a CLI test runs (written to a temporary folder by the test)."""

import os
import time

import pluq

app = pluq.App({url!r})


@app.task
def add(x, y):
    return x + y


@app.task(max_retries=0)
def fail(message):
    raise ValueError(message)


@app.task(bind=True, max_retries=3, retry_jitter=False)
def flaky(self, failures):
    if self.request.retries < failures:
        raise self.retry(exc=ConnectionError(f"attempt {{self.request.retries}} failed"), countdown=0)
    return "ok"


@app.task
def wait_for(path):
    """Runs until `path` exists (the test's signal)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "done"
'''


def write_tasks_module(folder: Path, url: str, *, extra: str = "") -> str:
    """Write a tasks module with an app on `url` into `folder`; return its module name."""
    name = f"cli_tasks_{uuid.uuid4().hex[:10]}"
    source = TASKS_SOURCE.format(url=url) + textwrap.dedent(extra)
    (folder / f"{name}.py").write_text(source)
    return name


def assert_one_line_error(result: Result, code: int, *words: str) -> str:
    """The command failed with `code`, one line on stderr naming `words`, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    for word in words:
        assert word in line, (word, line)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return line
