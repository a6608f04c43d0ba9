"""Child-process entry points of the contract kit: top-level, picklable, URL in, report out.

Each function runs in a process started with "spawn" (see `_kit.Children`): it opens the
transport from its URL (never an object from the parent), does its part, and puts one
`("result", payload)` on the `out` queue, or `("error", traceback)` if it failed. On a
failure it also sets every Event among its arguments, so a parent waiting on one wakes up
at once and reads the error instead of timing out.

Only the standard library and pluq's public API are imported here: a child starts fast.
"""

from __future__ import annotations

import dataclasses
import functools
import multiprocessing.synchronize
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec

from pluq.broker import Broker
from pluq.registry import open_backend, open_broker

P = ParamSpec("P")

START_TIMEOUT = 60.0
"""Seconds a child waits for the parent's go signal before giving up."""
HOLD_SECONDS = 120.0
"""How long `hold_leases` waits to be killed before it exits by itself (no orphans)."""


def _reporting(func: Callable[P, None]) -> Callable[P, None]:
    @functools.wraps(func)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        out = args[0]
        try:
            func(*args, **kwargs)
        except BaseException as exc:
            out.put(("error", "".join(traceback.format_exception(exc))))  # type: ignore[attr-defined]
            for arg in args:
                if isinstance(arg, multiprocessing.synchronize.Event):
                    arg.set()
            raise

    return run


@_reporting
def reserve_once(
    out: Any, ready: Any, url: str, queues: Sequence[str], timeout: float, lease: float
) -> None:
    """Block in one `reserve`; report when it returned (monotonic time) and what it got."""
    with open_broker(url) as broker:
        broker.counts(list(queues))  # connect before saying ready
        ready.set()
        deliveries = broker.reserve(queues, timeout=timeout, lease=lease)
        woke_at = time.monotonic()
        out.put(("result", {"woke_at": woke_at, "ids": [d.id for d in deliveries]}))


@_reporting
def idle_reserve(out: Any, url: str, queue: str, seconds: float) -> None:
    """Idle in `reserve` on an empty queue for `seconds`; report CPU and wall time spent."""
    with open_broker(url) as broker:
        broker.reserve([queue], timeout=0, lease=30)  # connect and warm up first
        cpu, wall = time.process_time(), time.monotonic()
        got = broker.reserve([queue], timeout=seconds, lease=30)
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        out.put(("result", {"cpu": cpu, "wall": wall, "got": len(got)}))


@_reporting
def consume_all(
    out: Any,
    ready: Any,
    go: Any,
    url: str,
    queue: str,
    limit: int,
    lease: float,
    idle_timeout: float,
) -> None:
    """Reserve and ack until the queue stays empty for `idle_timeout`; report what it got."""
    with open_broker(url) as broker:
        broker.counts([queue])
        ready.set()
        if not go.wait(START_TIMEOUT):
            raise RuntimeError(f"no go signal within {START_TIMEOUT} s")
        ids: list[str] = []
        attempts: list[int] = []
        started = time.monotonic()
        while True:
            deliveries = broker.reserve([queue], timeout=idle_timeout, lease=lease, limit=limit)
            if not deliveries:
                break
            for delivery in deliveries:
                ids.append(delivery.id)
                attempts.append(delivery.attempt)
                broker.ack(delivery)
        seconds = time.monotonic() - started - idle_timeout
        out.put(("result", {"ids": ids, "attempts": attempts, "seconds": seconds}))


@_reporting
def hold_leases(out: Any, url: str, queue: str, count: int, lease: float) -> None:
    """Reserve `count` messages, report the deliveries, then wait to be SIGKILLed."""
    with open_broker(url) as broker:
        held: list[dict[str, Any]] = []
        deadline = time.monotonic() + START_TIMEOUT
        while len(held) < count and time.monotonic() < deadline:
            remaining = deadline - time.monotonic()
            for delivery in broker.reserve(
                [queue], timeout=remaining, lease=lease, limit=count - len(held)
            ):
                held.append(dataclasses.asdict(delivery))
        out.put(("result", {"deliveries": held}))
        # The parent kills us here; if it never does, leave on our own (no orphans).
        threading.Event().wait(HOLD_SECONDS)


@_reporting
def wait_for_record(out: Any, ready: Any, url: str, task_id: str, timeout: float) -> None:
    """Block in `ResultBackend.wait`; report when it returned and the record."""
    with open_backend(url) as backend:
        backend.get(task_id)  # connect before saying ready
        ready.set()
        record = backend.wait(task_id, timeout=timeout)
        woke_at = time.monotonic()
        payload = None if record is None else record.to_dict()
        out.put(("result", {"woke_at": woke_at, "record": payload}))


@_reporting
def incr_many(out: Any, ready: Any, go: Any, url: str, key: str, times: int) -> None:
    """`incr(key)` `times` times once the parent says go; report every value returned."""
    with open_backend(url) as backend:
        backend.get("connect")
        ready.set()
        if not go.wait(START_TIMEOUT):
            raise RuntimeError(f"no go signal within {START_TIMEOUT} s")
        values = [backend.incr(key, 1, expires=600) for _ in range(times)]
        out.put(("result", {"values": values}))


@_reporting
def use_inherited_broker(out: Any, broker: Broker, queue: str) -> None:
    """In a *forked* child: publish and count through the broker the parent opened."""
    published = broker.publish(queue, b"from the child", id="forked-child")
    counts = broker.counts([queue])[queue]
    out.put(("result", {"published": published, "ready": counts.ready}))
