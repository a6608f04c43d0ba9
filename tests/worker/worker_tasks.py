"""Tasks the worker tests run, importable by child processes under every start method.

The app here is re-pointed at a fresh transport by the `wapp` fixture for each test; a
child only executes functions, so it never needs the app's transport.

Tasks that count their executions append a file per execution to a ledger folder: a test
counts files, not log lines.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pluq

app = pluq.App("memory://worker-tasks")


def _ledger(folder: str, name: str) -> None:
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}-{os.getpid()}-{time.monotonic_ns()}").touch()


def executions(folder: str, name: str) -> int:
    path = Path(folder)
    return len(list(path.glob(f"{name}-*"))) if path.exists() else 0


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def echo(value: object) -> object:
    return value


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True, max_retries=3, default_retry_delay=0)
def flaky(self: pluq.Task[..., int], succeed_on: int) -> int:
    """Fails until its retry number `succeed_on`, then returns the retry count."""
    if self.request.retries < succeed_on:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries} failed"))
    return self.request.retries


@app.task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=0)
def auto(ledger: str) -> None:
    _ledger(ledger, "auto")
    raise ConnectionError("still down")


@app.task(bind=True, max_retries=2)
def retry_later(self: pluq.Task[..., str], countdown: float) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    return "second time"


@app.task
def die_once(ledger: str) -> str:
    """Kills its own process on the first execution, succeeds on the next."""
    _ledger(ledger, "die_once")
    if executions(ledger, "die_once") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@app.task(max_retries=2)
def poison(ledger: str) -> None:
    """Kills its own process every time."""
    _ledger(ledger, "poison")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(time_limit=0.5, max_retries=0)
def too_slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@app.task
def wait_for_file(path: str, ledger: str) -> str:
    """Runs until `path` exists (the test's signal), recording that it started."""
    _ledger(ledger, "started")
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    _ledger(ledger, "finished")
    return "done"


@app.task
def canary(ledger: str) -> str:
    _ledger(ledger, "canary")
    return "ran"


@app.task
def unpicklable_result() -> object:
    import threading

    return threading.Lock()


@app.task
def raise_system_exit() -> None:
    raise SystemExit(3)


@app.task
def total(values: list[int]) -> int:
    return sum(values)


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task
def div(x: int, y: int) -> float:
    return x / y


@app.task
def record_call(results: list[object], ledger: str) -> str:
    _ledger(ledger, "callback")
    return "called"
