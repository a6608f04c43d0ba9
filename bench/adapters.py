"""One adapter per library: the same few verbs over each library's own public API.

An adapter runs in a driver process (`bench.drive`) and imports its library lazily, so that
one driver process only ever loads one library. A worker is each library's own command line
with 2 worker processes (see `worker_command`), except on `memory://`, whose queues live in
the driver's memory: there pluq's worker runs in the driver, on its threads pool.

Peer settings are the libraries' defaults, except where a note in `NOTES` says otherwise.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, ClassVar

__all__ = ["NOTES", "SUBJECTS", "Adapter", "make_adapter"]

CONCURRENCY = 2

SUBJECTS: dict[str, tuple[str, str]] = {
    # name: (library, setup)
    "pluq-memory": ("pluq", "memory"),
    "pluq-file": ("pluq", "file"),
    "pluq-sqlite": ("pluq", "sqlite"),
    "pluq-redis": ("pluq", "redis"),
    "celery-redis": ("celery", "redis"),
    "rq-redis": ("rq", "redis"),
    "huey-redis": ("huey", "redis"),
    "huey-sqlite": ("huey", "sqlite"),
    "dramatiq-redis": ("dramatiq", "redis"),
}

NOTES: dict[str, str] = {
    "pluq-memory": "worker in the driver process (threads pool, 2 threads); RSS is the "
    "driver's whole process",
    "pluq": "pluq worker -c 2 (processes, forkserver); messages signed with a secret, cloudpickle",
    "celery": "celery worker -c 2 -P prefork --without-gossip --without-mingle "
    "--without-heartbeat (start-up options only); acks early (its default)",
    "rq": "rq worker-pool -n 2 -w rq.worker.SimpleWorker (no fork per job; the pool runs "
    "the scheduler for enqueue_in)",
    "huey": "huey_consumer -w 2 -k process; results read by polling (notify_result off, "
    "its default)",
    "dramatiq": "dramatiq -p 2 -t 1 with the Results middleware on Redis",
}


class Adapter:
    """The verbs a driver needs; handles are whatever the library returns on enqueue."""

    library: ClassVar[str]

    def __init__(self, setup: str) -> None:
        self.setup = setup
        self.in_process = False
        """True when the worker runs in the driver (start_worker) rather than as a command."""

    def reset(self) -> None:
        """Empty the queues (and results where cheap) between workloads."""
        raise NotImplementedError

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        """Queue one task with one call of the library's usual API; return its handle."""
        raise NotImplementedError

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        """Queue noop(i) for every i with the library's many-tasks API."""
        raise NotImplementedError

    def is_done(self, handle: Any) -> bool:
        """Whether the result is stored, without blocking (one cheap look)."""
        raise NotImplementedError

    def get(self, handle: Any, timeout: float) -> Any:
        """Block on the result with the library's own waiting API."""
        raise NotImplementedError

    def worker_command(self) -> list[str]:
        raise NotImplementedError

    # in-process workers (memory://) only
    def start_worker(self) -> None:
        raise NotImplementedError

    def stop_worker(self) -> None:
        raise NotImplementedError


def _flush_redis() -> None:
    import redis

    client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
    try:
        client.flushall()
    finally:
        client.close()


class PluqAdapter(Adapter):
    library = "pluq"

    def __init__(self, setup: str) -> None:
        super().__init__(setup)
        from bench.peers import pluq_app

        self.m: Any = pluq_app
        self._worker: Any = None
        self.in_process = setup == "memory"

    def reset(self) -> None:
        if self.setup == "redis":
            _flush_redis()
        else:
            self.m.app.purge("default")

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        fn = getattr(self.m, task)
        if countdown is None:
            return fn.delay(arg)
        return fn.apply_async(args=(arg,), countdown=countdown)

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        handles: list[Any] = self.m.noop.map(args)
        return handles

    def is_done(self, handle: Any) -> bool:
        return bool(handle.ready())

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "pluq", "worker", "-A", "bench.peers.pluq_app:app",
            "-c", str(CONCURRENCY), "-l", "WARNING",
        ]  # fmt: skip

    def start_worker(self) -> None:
        self._worker = self.m.app.Worker(concurrency=CONCURRENCY, pool="threads")
        self._worker.start()

    def stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None


class CeleryAdapter(Adapter):
    library = "celery"

    def __init__(self, setup: str) -> None:
        super().__init__(setup)
        from bench.peers import celery_app

        self.m: Any = celery_app
        self.group: Any = importlib.import_module("celery").group

    def reset(self) -> None:
        _flush_redis()

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        fn = getattr(self.m, task)
        if countdown is None:
            return fn.delay(arg)
        return fn.apply_async((arg,), countdown=countdown)

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        result = self.group(self.m.noop.s(i) for i in args).apply_async()
        return list(result.results)

    def is_done(self, handle: Any) -> bool:
        return bool(handle.ready())

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(timeout=timeout)

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker",
            "-c", str(CONCURRENCY), "-P", "prefork", "-l", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ]  # fmt: skip


class RqAdapter(Adapter):
    library = "rq"

    def __init__(self, setup: str) -> None:
        super().__init__(setup)
        import redis

        from bench.peers import rq_app

        self.m: Any = rq_app
        self.rq: Any = importlib.import_module("rq")
        self.queue: Any = self.rq.Queue(
            "default", connection=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        )

    def reset(self) -> None:
        _flush_redis()

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        fn = getattr(self.m, task)
        if countdown is None:
            return self.queue.enqueue(fn, arg)
        return self.queue.enqueue_in(timedelta(seconds=countdown), fn, arg)

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        prepare = self.rq.Queue.prepare_data
        jobs: list[Any] = self.queue.enqueue_many([prepare(self.m.noop, (i,)) for i in args])
        return jobs

    def is_done(self, handle: Any) -> bool:
        return handle.get_status(refresh=True) in ("finished", "failed")

    def get(self, handle: Any, timeout: float) -> Any:
        result = handle.latest_result(timeout=max(1, round(timeout)))
        if result is None:
            raise TimeoutError(f"rq job {handle.id} gave no result within {timeout} s")
        if result.type != result.Type.SUCCESSFUL:
            raise RuntimeError(f"rq job {handle.id} failed: {result.exc_string}")
        return result.return_value

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "rq.cli", "worker-pool", "-n", str(CONCURRENCY),
            "-w", "rq.worker.SimpleWorker", "-u", os.environ["BENCH_REDIS_URL"],
            "-l", "WARNING", "default",
        ]  # fmt: skip


class HueyAdapter(Adapter):
    library = "huey"

    def __init__(self, setup: str) -> None:
        super().__init__(setup)
        from bench.peers import huey_app

        self.m: Any = huey_app

    def reset(self) -> None:
        self.m.huey.flush()

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        fn = getattr(self.m, task)
        if countdown is None:
            return fn(arg)
        return fn.schedule((arg,), delay=countdown)

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        return list(self.m.noop.map(args))

    def is_done(self, handle: Any) -> bool:
        # Every bench task returns a value that is not None.
        return handle.get(preserve=True) is not None

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get(blocking=True, timeout=timeout)

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "huey.bin.huey_consumer", "bench.peers.huey_app.huey",
            "-w", str(CONCURRENCY), "-k", "process", "-q",
        ]  # fmt: skip


class DramatiqAdapter(Adapter):
    library = "dramatiq"

    def __init__(self, setup: str) -> None:
        super().__init__(setup)
        from bench.peers import dramatiq_app

        self.m: Any = dramatiq_app
        self.group: Any = importlib.import_module("dramatiq").group
        self.missing: type[Exception] = importlib.import_module("dramatiq.results").ResultMissing

    def reset(self) -> None:
        _flush_redis()

    def enqueue(self, task: str, arg: float, *, countdown: float | None = None) -> Any:
        fn = getattr(self.m, task)
        if countdown is None:
            return fn.send(arg)
        return fn.send_with_options(args=(arg,), delay=round(countdown * 1000))

    def enqueue_bulk(self, args: Sequence[int]) -> list[Any]:
        g = self.group(self.m.noop.message(i) for i in args).run()
        return list(g.children)

    def is_done(self, handle: Any) -> bool:
        try:
            self.m.backend.get_result(handle, block=False)
        except self.missing:
            return False
        return True

    def get(self, handle: Any, timeout: float) -> Any:
        return handle.get_result(backend=self.m.backend, block=True, timeout=round(timeout * 1000))

    def worker_command(self) -> list[str]:
        return [
            sys.executable, "-m", "dramatiq", "bench.peers.dramatiq_app",
            "-p", str(CONCURRENCY), "-t", "1",
        ]  # fmt: skip


_ADAPTERS: dict[str, type[Adapter]] = {
    "pluq": PluqAdapter,
    "celery": CeleryAdapter,
    "rq": RqAdapter,
    "huey": HueyAdapter,
    "dramatiq": DramatiqAdapter,
}


def make_adapter(subject: str) -> Adapter:
    """The adapter of a subject name ("pluq-redis", "huey-sqlite", ...)."""
    library, setup = SUBJECTS[subject]
    return _ADAPTERS[library](setup)
