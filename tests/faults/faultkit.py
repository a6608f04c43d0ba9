"""The fault suite's harness: worker processes to kill, stop and resume, and the checks.

    worker = workers.start(url, name="a", concurrency=2, lease=2)
    worker.wait_ready()
    worker.kill()                  # SIGKILL its process group: supervisor, children, all
    worker.stop(); worker.cont()   # SIGSTOP / SIGCONT the group
    worker.terminate()             # SIGTERM to the supervisor alone, as `kill PID` does

Every worker runs `fault_worker.py` in a session of its own, so its process group holds
exactly the supervisor, its children and its forkserver. `Workers.close()` (the fixture's
teardown) resumes and SIGKILLs every group it started that still has a process, by id.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fault_tasks
import pytest

import pluq
from _support import wait_until
from pluq.backend import READY_STATES, TaskRecord

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "fault_worker.py"


class WorkerProcess:
    """One `fault_worker.py` process (and its process group)."""

    def __init__(self, process: subprocess.Popen[str], log: Path, out: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.out = out
        self.name = name

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60.0) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(
                    f"worker {self.name} exited with {self.process.returncode} before it was "
                    f"ready: {self.log_text()[-2000:]} {self.out.read_text()[-2000:]}"
                )
            return " ready: queues " in self.log_text()

        wait_until(ready, timeout, what=f"worker {self.name} to start")

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signum)

    def kill(self) -> None:
        """SIGKILL the whole worker (supervisor, children, forkserver) and reap it."""
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        self.signal_group(signal.SIGSTOP)

    def cont(self) -> None:
        self.signal_group(signal.SIGCONT)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def report(self) -> dict[str, Any]:
        """The JSON line the worker prints when `run()` returned."""
        lines = [line for line in self.out.read_text().splitlines() if line.startswith("{")]
        if not lines:
            pytest.fail(f"worker {self.name} printed no report: {self.log_text()[-2000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    def rss_kib(self) -> int:
        """The supervisor's resident memory in KiB, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for {self.pid}")


class Workers:
    """Starts worker processes for one test and makes sure none outlives it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[WorkerProcess] = []

    def start(
        self,
        url: str,
        *,
        name: str,
        backend: str | None = None,
        concurrency: int = 2,
        prefetch: int | None = None,
        lease: float = 2.0,
        burst: bool = False,
        faults: Sequence[str] = (),
        secrets: Sequence[str] = (),
        audit: Path | None = None,
        start_method: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        log = self.folder / f"worker-{name}.log"
        out = self.folder / f"worker-{name}.out"
        args = [sys.executable, str(SCRIPT), url, "--name", name, "--log", str(log)]
        args += ["--concurrency", str(concurrency), "--lease", str(lease)]
        if backend is not None:
            args += ["--backend", backend]
        if prefetch is not None:
            args += ["--prefetch", str(prefetch)]
        if burst:
            args.append("--burst")
        for fault in faults:
            args += ["--fault", fault]
        for secret in secrets:
            args += ["--secret", secret]
        if audit is not None:
            args += ["--audit", str(audit)]
        if start_method is not None:
            args += ["--start-method", start_method]
        environment = {**os.environ, **(env or {})}
        environment.pop("PLUQ_SECRET", None)
        with out.open("w") as stdout:
            process = subprocess.Popen(
                args,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=self.folder,
                env=environment,
                start_new_session=True,
            )
        worker = WorkerProcess(process, log, out, name)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        for worker in self.started:
            worker.signal_group(signal.SIGCONT)
            worker.signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(30)


# -- checks ------------------------------------------------------------------------------


def records(app: pluq.App, ids: Sequence[str]) -> list[TaskRecord | None]:
    found: list[TaskRecord | None] = []
    for start in range(0, len(ids), 500):
        found.extend(app.backend.get_many(list(ids[start : start + 500])))
    return found


def wait_all_ready(app: pluq.App, ids: Sequence[str], timeout: float) -> list[TaskRecord]:
    """Wait until every id has a ready record; the records, in order."""
    pending = list(ids)
    done: dict[str, TaskRecord] = {}
    deadline = time.monotonic() + timeout
    while pending:
        found = records(app, pending)
        for task_id, record in zip(pending, found, strict=True):
            if record is not None and record.state in READY_STATES:
                done[task_id] = record
        pending = [i for i in pending if i not in done]
        if not pending:
            break
        if time.monotonic() > deadline:
            sample = ", ".join(pending[:5])
            pytest.fail(f"{len(pending)} of {len(ids)} tasks not ready after {timeout} s: {sample}")
        time.sleep(0.1)  # polling a store another process writes, with a deadline
    return [done[i] for i in ids]


def assert_each_ran_once(ledger: str, ids: Iterable[str]) -> None:
    """Every id ran exactly once, and nothing else ran."""
    counts = fault_tasks.executions(ledger)
    expected = set(ids)
    twice = sorted(i for i, n in counts.items() if n > 1)
    never = sorted(expected - set(counts))
    strangers = sorted(set(counts) - expected)
    assert (twice, never, strangers) == ([], [], []), (
        f"{len(twice)} ran more than once, {len(never)} never ran, {len(strangers)} unknown"
    )


def assert_quiet_broker(app: pluq.App, queue: str = "default") -> None:
    """Nothing left in the queue: nothing ready, delayed, leased or dead."""
    counts = app.broker.counts([queue])[queue]
    assert (counts.ready, counts.delayed, counts.leased, counts.dead) == (0, 0, 0, 0), counts


def open_gate(gates: str, name: str) -> None:
    Path(gates, name).touch()
