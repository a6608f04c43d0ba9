"""Tasks of the fault suite, and the ledger they write: one file per execution attempt.

Importable by worker processes started from a script in this folder and by their children
under every start method. The app is re-pointed at each test's transport (the `fapp`
fixture in-process, `fault_worker.py` in a worker process); children only execute.

The ledger: every execution of a ledgered task creates `<ledger>/<task id>.<attempt>.<pid>`
with O_CREAT|O_EXCL before the task does anything else, holding a JSON line (start time,
eta, pid). Counting files per task id counts executions exactly, also across processes
that were killed: a file is on disk before the body runs.

Gates: a task that must stay running until the test says so waits for a file
`<gates>/<name>` to exist (at most `GATE_TIMEOUT` seconds, so nothing hangs forever).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pluq
from pluq.task import current_request

app = pluq.App("memory://fault-tasks")

GATE_TIMEOUT = 60.0
"""Seconds a gated task waits for its gate before it gives up (and fails)."""

GROUP_ENV = "PLUQ_FAULT_WORKER_GROUP"
"""Set by fault_worker.py to its process group: only then may a task kill that group."""


# -- the ledger -------------------------------------------------------------------------


def record(ledger: str, **extra: Any) -> dict[str, Any]:
    """Write this execution's ledger file; returns what it wrote."""
    request = current_request()
    task_id = request.id if request is not None and request.id else "local"
    attempt = request.attempt if request is not None else 0
    entry = {
        "id": task_id,
        "attempt": attempt,
        "pid": os.getpid(),
        "start": time.time(),
        "eta": request.eta if request is not None else None,
        "task": request.task if request is not None else None,
        **extra,
    }
    folder = Path(ledger)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{task_id}.{attempt}.{os.getpid()}"
    suffix = 0
    while True:
        # O_EXCL: a second execution of the same attempt in the same process (a broker
        # bug) gets a file of its own instead of overwriting the first one's.
        path = folder / (name if suffix == 0 else f"{name}.dup{suffix}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            suffix += 1
            continue
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(entry))
        return entry


def entries(ledger: str, task_id: str | None = None) -> list[dict[str, Any]]:
    """Every ledger entry (of one task id), ordered by start time."""
    folder = Path(ledger)
    if not folder.exists():
        return []
    pattern = f"{task_id}.*" if task_id is not None else "*"
    found = []
    for path in folder.glob(pattern):
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            # A process killed between the O_EXCL create and the write: it still started.
            parts = path.name.split(".")
            found.append({"id": parts[0], "attempt": int(parts[1]), "pid": int(parts[2])})
    return sorted(found, key=lambda e: e.get("start", 0.0))


def executions(ledger: str) -> Counter[str]:
    """Executions per task id."""
    folder = Path(ledger)
    if not folder.exists():
        return Counter()
    return Counter(path.name.split(".", 1)[0] for path in folder.iterdir())


def gate(gates: str, name: str) -> None:
    """Wait until the test opens the gate `name` (creates the file)."""
    path = Path(gates) / name
    deadline = time.monotonic() + GATE_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {path} was never opened")
        time.sleep(0.01)  # a cheap wait on a file another process creates


def _kill_own_worker() -> None:
    """SIGKILL the whole worker this child belongs to (its supervisor and every child)."""
    group = os.environ.get(GROUP_ENV)
    if group is None or int(group) != os.getpgid(0):
        # Never kill the group of a test run: only a fault_worker.py process is fair game.
        raise RuntimeError("this task only runs in a worker started by fault_worker.py")
    os.killpg(int(group), signal.SIGKILL)


# -- tasks ------------------------------------------------------------------------------


@app.task
def work(ledger: str, value: int) -> int:
    record(ledger)
    return value


@app.task
def held(ledger: str, gates: str, name: str, value: int) -> int:
    """Records its start, then runs until the gate `name` opens."""
    record(ledger)
    gate(gates, name)
    return value


@app.task
def at_eta(ledger: str) -> float:
    """Records when it started, next to its eta, and returns how early it started."""
    entry = record(ledger)
    eta = entry["eta"]
    return 0.0 if eta is None else max(0.0, eta - entry["start"])


@app.task(max_retries=2)
def poison(ledger: str, how: str) -> None:
    """Kills the process running it, every time: SIGKILL, a segfault, or its whole worker."""
    record(ledger)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        ctypes.string_at(0)
    elif how == "worker":
        _kill_own_worker()
    raise ValueError(f"unknown way to die: {how!r}")


@app.task
def hold_gil(ledger: str, seconds: int) -> int:
    """Sleeps in a C call that keeps the GIL (ctypes.PyDLL does not release it)."""
    record(ledger)
    libc = ctypes.PyDLL(None)
    libc.sleep(ctypes.c_uint(seconds))
    return seconds


@app.task
def canary(ledger: str) -> str:
    """Must never run on a bad message."""
    record(ledger)
    return "ran"


@app.task
def pid() -> int:
    return os.getpid()


@app.task
def unpicklable_result() -> object:
    import threading

    return threading.Lock()


@app.task
def raise_base(kind: str) -> None:
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise ValueError(kind)


@app.task
def size(payload: bytes) -> int:
    return len(payload)


@app.task
def echo(value: object) -> object:
    return value


@app.task(bind=True, max_retries=2, default_retry_delay=0)
def retry_once(self: pluq.Task[..., int]) -> int:
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("first try fails"))
    return self.request.retries
