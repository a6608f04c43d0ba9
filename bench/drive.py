"""One driver process: every workload for one subject, printed as one JSON line.

    python -m bench.drive pluq-redis --tasks 10000 --tmp /tmp/x --pid-file /tmp/x/pids

`bench.run` starts one of these per (run, subject), with $BENCH_REDIS_URL set, and reads the
last line of its stdout. A fresh process each time keeps the libraries apart (one library
per interpreter) and starts every figure from a clean heap. Workloads, in order:

    enqueue_bulk   N x noop through the bulk API (timed), then the queue is emptied
    enqueue        N x noop, one call each (timed; the first call, which connects, is not)
    drain          a worker started on those N: from its start until the last result is
                   stored; the peak RSS of its process tree meanwhile
    latency        against that worker, now idle: R sequential round trips, p50 and p99
    sleep          40 x nap(0.5) on that worker: wall seconds from the first enqueue
    delayed        a fresh worker; 2,000 x stamp with countdowns spread over 5 s: how late
                   the last one starts, and the worker's peak RSS meanwhile

"Stored" is seen by looking at the last handle every 5 ms with the library's own
non-blocking check; then the last 64 handles (a worker with 2 processes and a prefetch can
finish a few out of order) until they are all done, then every handle (untimed) to make
sure none is missing. A straggler found then is waited for and extends the time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.adapters import SUBJECTS, Adapter, make_adapter
from bench.procs import PeakSampler, SessionWorker, process_rss

__all__ = ["main"]

POLL = 0.005
"""Seconds between looks at a result while waiting for a batch (a bench measurement
method, not a synchronisation: each library is looked at the same way)."""
TAIL = 64
SLEEP_TASKS = 40
SLEEP_SECONDS = 0.5
DELAYED_TASKS = 2000
DELAYED_SPREAD = 5.0
WARMUP_ROUND_TRIPS = 5
GET_TIMEOUT = 30.0
MB = 1024 * 1024

REPO = Path(__file__).resolve().parent.parent


class WorkloadError(RuntimeError):
    """A workload could not finish (a timeout, a wrong result): reported, not fatal."""


def _wait_done(a: Adapter, handles: Sequence[Any], give_up: float) -> None:
    pending = list(handles)
    while pending:
        pending = [h for h in pending if not a.is_done(h)]
        if not pending:
            return
        if time.perf_counter() > give_up:
            raise WorkloadError(f"{len(pending)} results still missing at the deadline")
        time.sleep(POLL)


def wait_all(
    a: Adapter, handles: Sequence[Any], timeout: float, *, first: list[float] | None = None
) -> tuple[float, int]:
    """Wait until every handle's result is stored; (perf_counter when seen, stragglers).

    With `first`, also appends the time the first handle's result was seen (a worker's
    start-up shows there).
    """
    give_up = time.perf_counter() + timeout
    if first is not None:
        _wait_done(a, handles[:1], give_up)
        first.append(time.perf_counter())
    _wait_done(a, handles[-1:], give_up)
    _wait_done(a, handles[-TAIL:], give_up)
    end = time.perf_counter()
    rest = [h for h in handles[:-TAIL] if not a.is_done(h)]
    if rest:
        _wait_done(a, rest, give_up)
        end = time.perf_counter()
    return end, len(rest)


class Driver:
    def __init__(
        self, subject: str, *, tasks: int, round_trips: int, pid_file: Path, tmp: Path
    ) -> None:
        self.subject = subject
        self.a = make_adapter(subject)
        self.tasks = tasks
        self.round_trips = round_trips
        self.pid_file = pid_file
        self.tmp = tmp
        self.figures: dict[str, float] = {}
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []
        self.leftovers: list[int] = []
        self._worker: SessionWorker | None = None
        self._worker_count = 0

    # -- workers -------------------------------------------------------------------------

    def start_worker(self) -> float:
        """Start a worker; the perf_counter time just before it was started."""
        started = time.perf_counter()
        if self.a.in_process:
            self.a.start_worker()
        else:
            self._worker_count += 1
            self._worker = SessionWorker(
                self.a.worker_command(),
                env=os.environ,
                cwd=REPO,
                log=self.tmp / f"worker-{self._worker_count}.log",
                pid_file=self.pid_file,
            )
        return started

    def worker_rss(self) -> int:
        if self.a.in_process:
            return process_rss()
        assert self._worker is not None
        return self._worker.rss()

    def stop_worker(self) -> None:
        if self.a.in_process:
            self.a.stop_worker()
            return
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            self.leftovers += worker.leftovers

    def worker_log(self) -> str:
        return self._worker.log_tail() if self._worker is not None else ""

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        try:
            yield
        except Exception as exc:
            log = self.worker_log()
            self.errors.append(
                f"{name}: {type(exc).__name__}: {exc}" + (f"\nworker log:\n{log}" if log else "")
            )
            traceback.print_exc(file=sys.stderr)
            raise

    # -- workloads -----------------------------------------------------------------------

    def enqueue_bulk(self) -> None:
        a, n = self.a, self.tasks
        a.reset()
        a.enqueue("noop", -1)  # connect and load scripts outside the timing
        a.reset()
        t0 = time.perf_counter()
        handles = a.enqueue_bulk(range(n))
        elapsed = time.perf_counter() - t0
        if len(handles) != n:
            raise WorkloadError(f"bulk enqueue returned {len(handles)} handles for {n}")
        self.figures["enqueue_bulk"] = n / elapsed
        a.reset()

    def enqueue(self) -> list[Any]:
        a, n = self.a, self.tasks
        handles = [a.enqueue("noop", 0)]  # connects: not timed
        t0 = time.perf_counter()
        for i in range(1, n):
            handles.append(a.enqueue("noop", i))
        self.figures["enqueue"] = (n - 1) / (time.perf_counter() - t0)
        return handles

    def drain(self, handles: list[Any]) -> None:
        started = self.start_worker()
        first: list[float] = []
        with PeakSampler(self.worker_rss) as peak:
            end, stragglers = wait_all(
                self.a, handles, timeout=60 + len(handles) / 100, first=first
            )
        self.figures["drain"] = len(handles) / (end - started)
        self.figures["drain_rss_mb"] = peak.peak / MB
        self.details["drain_seconds"] = end - started
        # Start-up (worker start to first result) and the rate after it, to tell them apart.
        self.details["drain_first_result_s"] = first[0] - started
        if end > first[0]:
            self.details["drain_after_first"] = (len(handles) - 1) / (end - first[0])
        self.details["drain_stragglers"] = stragglers
        for i in (0, len(handles) // 2, len(handles) - 1):
            value = self.a.get(handles[i], GET_TIMEOUT)
            if value != i:
                raise WorkloadError(f"task {i} returned {value!r}")

    def latency(self) -> None:
        a = self.a
        for i in range(WARMUP_ROUND_TRIPS):
            a.get(a.enqueue("noop", i), GET_TIMEOUT)
        samples = []
        for i in range(self.round_trips):
            t0 = time.perf_counter()
            value = a.get(a.enqueue("noop", i), GET_TIMEOUT)
            samples.append(time.perf_counter() - t0)
            if value != i:
                raise WorkloadError(f"round trip {i} returned {value!r}")
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        self.figures["latency_p50_ms"] = statistics.median(samples) * 1000
        self.figures["latency_p99_ms"] = cuts[98] * 1000

    def sleep(self) -> None:
        t0 = time.perf_counter()
        handles = [self.a.enqueue("nap", SLEEP_SECONDS) for _ in range(SLEEP_TASKS)]
        end, _ = wait_all(self.a, handles, timeout=120)
        self.figures["sleep_s"] = end - t0

    def delayed(self) -> None:
        a = self.a
        self.start_worker()
        a.get(a.enqueue("noop", 1), 60.0)  # the worker is up and idle
        idle = self.worker_rss()
        etas: list[float] = []
        handles = []
        with PeakSampler(self.worker_rss) as peak:
            for i in range(DELAYED_TASKS):
                countdown = DELAYED_SPREAD * (i + 1) / DELAYED_TASKS
                etas.append(time.time() + countdown)
                handles.append(a.enqueue("stamp", i, countdown=countdown))
            wait_all(a, handles, timeout=DELAYED_SPREAD + 120)
        starts = [float(a.get(h, GET_TIMEOUT)) for h in handles]
        late = [start - eta for start, eta in zip(starts, etas, strict=True)]
        self.figures["delayed_late_s"] = late[-1]
        self.figures["delayed_rss_mb"] = peak.peak / MB
        self.details["delayed_max_late_s"] = max(late)
        self.details["delayed_median_late_s"] = statistics.median(late)
        self.details["delayed_early"] = sum(1 for x in late if x < -0.01)
        self.details["delayed_idle_rss_mb"] = idle / MB

    # -- the sequence --------------------------------------------------------------------

    def run(self, workloads: set[str]) -> None:
        def attempt(name: str, fn: Callable[[], Any]) -> bool:
            if name not in workloads:
                return True
            try:
                with self.step(name):
                    fn()
            except Exception:
                return False
            return True

        attempt("enqueue_bulk", self.enqueue_bulk)
        handles: list[Any] = []
        if {"enqueue", "drain", "latency", "sleep"} & workloads:
            # The drain needs the queued tasks, and latency and sleep the drained worker.
            workloads |= {"enqueue", "drain"}
            self.a.reset()
            if attempt("enqueue", lambda: handles.extend(self.enqueue())):
                try:
                    if not attempt("drain", lambda: self.drain(handles)):
                        self.errors.append("latency, sleep: skipped after the drain failed")
                    elif attempt("latency", self.latency):
                        attempt("sleep", self.sleep)
                finally:
                    self.stop_worker()
        if "delayed" in workloads:
            self.a.reset()
            try:
                attempt("delayed", self.delayed)
            finally:
                self.stop_worker()

    def report(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "figures": self.figures,
            "details": self.details,
            "errors": self.errors,
            "leftovers": self.leftovers,
        }


WORKLOADS = ("enqueue_bulk", "enqueue", "drain", "latency", "sleep", "delayed")


def configure(subject: str, tmp: Path) -> None:
    """Point the task modules (imported next) at this driver's own files and Redis."""
    _, setup = SUBJECTS[subject]
    redis_url = os.environ.get("BENCH_REDIS_URL", "")
    os.environ["BENCH_PLUQ_URL"] = {
        "memory": "memory://bench",
        "file": f"file://{tmp / 'queue'}",
        "sqlite": f"sqlite:///{tmp / 'pluq.db'}",
        "redis": f"{redis_url}/0",
    }[setup]
    if subject == "huey-sqlite":
        os.environ["BENCH_HUEY_SQLITE"] = str(tmp / "huey.db")
    else:
        os.environ.pop("BENCH_HUEY_SQLITE", None)
    # The workers import bench.peers.* from the repository.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drive", description=__doc__)
    parser.add_argument("subject", choices=sorted(SUBJECTS))
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--round-trips", type=int, default=200)
    parser.add_argument("--tmp", type=Path, required=True)
    parser.add_argument("--pid-file", type=Path, required=True)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    args = parser.parse_args(argv)
    workloads = {w for w in args.workloads.split(",") if w}
    unknown = workloads - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    configure(args.subject, args.tmp)
    driver = Driver(
        args.subject,
        tasks=args.tasks,
        round_trips=args.round_trips,
        pid_file=args.pid_file,
        tmp=args.tmp,
    )
    try:
        driver.run(workloads)
    finally:
        print(json.dumps(driver.report()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
