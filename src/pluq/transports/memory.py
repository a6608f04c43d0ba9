"""In-process queues and result records: the reference transport and the test double.

Features:
    - Broker and ResultBackend in one process, no I/O, no threads of its own.
    - `reserve` and `wait` block on a `threading.Condition`: a publish, release, retry or
      ready result wakes them at once, and idle waiting costs nothing.
    - Every guarantee of `pluq.broker.Broker` and `pluq.backend.ResultBackend`; capabilities:
      not shared between processes or hosts, not durable.

URL grammar:
    memory://NAME[?option=value&...]
    memory://[?option=value&...]

    NAME (the whole netloc, case-sensitive) selects a named state: every `memory://NAME`
    opened in this process sees the same queues (for the broker) and the same records (for
    the backend). `memory://` without a name gives a fresh, private state to every
    `broker(...)` or `backend(...)` call.

Options:
    prefix          isolates tenants and tests: each (NAME, prefix) pair has its own state.
    dedupe_window   seconds an acknowledged (or cancelled) id stays known to `publish`
                    (default 300).

Layout (per state, in memory):
    broker:  messages   id -> message (queue, bytes, place, attempt, lease, dead reason)
             per queue  a FIFO deque of ready ids, a heap of delayed (not_before, seq, id)
                        and a heap of leases (deadline, seq, id)
             dead       ids in the order they died
             done       acknowledged ids -> the clock time they are forgotten
             workers    worker id -> (WorkerInfo, expires_at)
    backend: records    task id -> (record JSON, expires_at); counters key -> (value, expires_at)

    Deques and heaps are lazy: an entry is valid only while its `seq` is the message's
    current one, so cancel, purge and extend never search them. An expired lease goes to
    the back of its queue's ready deque (not the front: simple, and documented here). It
    keeps its lease_id until the next reservation, so the old holder may still ack,
    release, dead-letter or extend it until someone else reserves it.

    Records are kept as their JSON text (`TaskRecord.to_json`), like every other
    transport stores them: a record another transport could not store fails here too,
    and no caller can change a stored record by mutating its `meta`. Ids removed by
    `purge` or `purge_dead` are forgotten (publishable again at once); cancelled and
    acknowledged ones stay known for `dedupe_window` seconds.

Threads: every operation holds its state's condition, so one instance may be shared by
threads (reserve on one, ack on another) and several instances may share one state.

Durability: none. Everything is lost when the process exits. A forked child gets a copy
of the state and fresh locks (nothing shared with the parent afterwards).
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Final, TypeVar
from urllib.parse import urlsplit

from pluq.backend import ResultBackend, TaskRecord
from pluq.broker import (
    Broker,
    Capabilities,
    Clock,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueCounts,
    WorkerInfo,
    make_delivery,
)
from pluq.errors import ConfigurationError, LeaseLost
from pluq.registry import URL

__all__ = ["MemoryBackend", "MemoryBroker", "MemoryTransport"]

DEFAULT_DEDUPE_WINDOW: Final = 300.0

_READY: Final = "ready"
_DELAYED: Final = "delayed"
_LEASED: Final = "leased"
_DEAD: Final = "dead"


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise ValueError("expected a number of seconds >= 0")
    return value


_OPTIONS: Final = {"prefix": str, "dedupe_window": _non_negative}


# -- state -----------------------------------------------------------------------------


@dataclass(slots=True)
class _Message:
    id: str
    queue: str
    body: bytes
    place: str
    seq: int
    """Token of the message's current entry in a deque or heap; older entries are stale."""
    attempt: int = 0
    not_before: float | None = None
    lease_id: str | None = None
    lease_deadline: float = 0.0
    reason: str = ""
    dead_at: float = 0.0


@dataclass(slots=True)
class _Queue:
    ready: deque[tuple[int, str]] = field(default_factory=deque)
    delayed: list[tuple[float, int, str]] = field(default_factory=list)
    leases: list[tuple[float, int, str]] = field(default_factory=list)


class _BrokerState:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seq = itertools.count(1)
        self.queues: dict[str, _Queue] = {}
        self.messages: dict[str, _Message] = {}
        self.dead: dict[str, None] = {}
        self.done: dict[str, float] = {}
        self.workers: dict[str, tuple[WorkerInfo, float]] = {}
        _all_states.add(self)


class _BackendState:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.records: dict[str, tuple[str, float]] = {}
        self.counters: dict[str, tuple[int, float]] = {}
        _all_states.add(self)


_registry_lock = threading.Lock()
_brokers: dict[tuple[str, str], _BrokerState] = {}
_backends: dict[tuple[str, str], _BackendState] = {}
S = TypeVar("S", "_BrokerState", "_BackendState")
_all_states: weakref.WeakSet[_BrokerState | _BackendState] = weakref.WeakSet()


def _reinit_locks_after_fork() -> None:
    # Another thread may have held a lock at fork time; in the child that thread is gone,
    # so the copied lock would stay locked forever. Give every state a fresh one.
    global _registry_lock
    _registry_lock = threading.Lock()
    for state in list(_all_states):
        state.cond = threading.Condition()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_locks_after_fork)


def _shared(registry: dict[tuple[str, str], S], key: tuple[str, str], new: Callable[[], S]) -> S:
    """The state registered under `key`, created on first use."""
    with _registry_lock:
        state = registry.get(key)
        if state is None:
            state = registry[key] = new()
        return state


def _parse(url: URL) -> tuple[str | None, str, float]:
    """(name or None for anonymous, prefix, dedupe_window) from a memory:// URL."""
    options = url.options(_OPTIONS)
    parts = urlsplit(url.raw)
    if parts.path not in ("", "/"):
        raise ConfigurationError(
            f"{url.redacted}: a memory:// URL takes a name and no path; "
            f"write memory://NAME (or memory:// for a private state)"
        )
    name = parts.netloc  # not url.host: urlsplit lowercases it, names are case-sensitive
    return (
        (name or None),
        options.get("prefix", ""),
        options.get("dedupe_window", DEFAULT_DEDUPE_WINDOW),
    )


# -- broker ----------------------------------------------------------------------------


class MemoryBroker(Broker):
    """Queues held in this process; see the module docstring."""

    capabilities = Capabilities(
        shared_between_processes=False, shared_between_hosts=False, durable=False
    )

    def __init__(self, state: _BrokerState, *, clock: Clock, dedupe_window: float) -> None:
        self._state = state
        self._clock = clock
        self._dedupe_window = dedupe_window

    # -- internals (call with the condition held) ---------------------------------------

    def _queue(self, name: str) -> _Queue:
        queue = self._state.queues.get(name)
        if queue is None:
            queue = self._state.queues[name] = _Queue()
        return queue

    def _valid(self, id: str, seq: int, place: str) -> _Message | None:
        msg = self._state.messages.get(id)
        if msg is None or msg.seq != seq or msg.place != place:
            return None
        return msg

    def _make_ready(self, msg: _Message) -> None:
        msg.place = _READY
        msg.not_before = None
        msg.seq = next(self._state.seq)
        self._queue(msg.queue).ready.append((msg.seq, msg.id))

    def _place(self, msg: _Message, not_before: float | None, now: float) -> None:
        if not_before is not None and not_before > now:
            msg.place = _DELAYED
            msg.not_before = not_before
            msg.seq = next(self._state.seq)
            heapq.heappush(self._queue(msg.queue).delayed, (not_before, msg.seq, msg.id))
        else:
            self._make_ready(msg)

    def _settle(self, queue: _Queue, now: float) -> None:
        """Move due delayed messages and expired leases to the back of the ready deque."""
        while queue.delayed and queue.delayed[0][0] <= now:
            _, seq, id = heapq.heappop(queue.delayed)
            msg = self._valid(id, seq, _DELAYED)
            if msg is not None:
                self._make_ready(msg)
        while queue.leases and queue.leases[0][0] <= now:
            _, seq, id = heapq.heappop(queue.leases)
            msg = self._valid(id, seq, _LEASED)
            if msg is not None:
                self._make_ready(msg)  # keeps lease_id: the old holder may still act

    def _next_event(self, queue: _Queue) -> float | None:
        """The earliest clock time at which a delayed message or a lease comes due."""
        for heap, place in ((queue.delayed, _DELAYED), (queue.leases, _LEASED)):
            while heap and self._valid(heap[0][2], heap[0][1], place) is None:
                heapq.heappop(heap)  # drop stale entries so the head is meaningful
        heads = [heap[0][0] for heap in (queue.delayed, queue.leases) if heap]
        return min(heads) if heads else None

    def _take(self, queues: Sequence[str], lease: float, limit: int) -> list[Delivery]:
        now = self._clock()
        taken: list[Delivery] = []
        base = None  # one random lease id base per call, numbered, as the Redis script does
        for name in queues:
            queue = self._state.queues.get(name)
            if queue is None:
                continue
            self._settle(queue, now)
            while queue.ready and len(taken) < limit:
                seq, id = queue.ready.popleft()
                msg = self._valid(id, seq, _READY)
                if msg is None:
                    continue
                msg.place = _LEASED
                msg.attempt += 1
                base = base or os.urandom(16).hex()
                msg.lease_id = f"{base}.{len(taken) + 1}"
                msg.lease_deadline = now + lease
                msg.seq = next(self._state.seq)
                heapq.heappush(queue.leases, (msg.lease_deadline, msg.seq, msg.id))
                taken.append(
                    make_delivery(
                        msg.id, msg.queue, msg.body, msg.attempt, msg.lease_id, msg.lease_deadline
                    )
                )
            if len(taken) >= limit:
                break
        return taken

    def _held(self, delivery: Delivery) -> _Message:
        msg = self._state.messages.get(delivery.id)
        # An expired lease that went back to ready keeps its lease_id until the next
        # reservation: acting on it then is still safe, nobody else holds the message.
        if msg is None or msg.lease_id != delivery.lease_id or msg.place not in (_LEASED, _READY):
            raise LeaseLost(
                f"the lease {delivery.lease_id} on message {delivery.id!r} of queue "
                f"{delivery.queue!r} is no longer held (it expired and the message was "
                f"reserved again, or it was already acknowledged, released or "
                f"dead-lettered); do not act on this delivery again"
            )
        return msg

    def _prune_done(self, now: float) -> None:
        done = self._state.done
        # Oldest first: stop at the first id still inside its window (lazy pruning).
        while done:
            id, forget_at = next(iter(done.items()))
            if forget_at > now:
                break
            del done[id]

    def _mark_done(self, id: str, now: float) -> None:
        self._state.done.pop(id, None)
        self._state.done[id] = now + self._dedupe_window

    # -- producer side -------------------------------------------------------------------

    def _publish(self, queue: str, message: bytes, id: str, not_before: float | None) -> bool:
        now = self._clock()
        state = self._state
        self._prune_done(now)
        if id in state.messages:
            return False
        forget_at = state.done.get(id)
        if forget_at is not None:
            if forget_at > now:
                return False
            del state.done[id]
        msg = _Message(id=id, queue=queue, body=bytes(message), place=_READY, seq=0)
        state.messages[id] = msg
        self._place(msg, not_before, now)
        return True

    def publish(
        self, queue: str, message: bytes, *, id: str, not_before: float | None = None
    ) -> bool:
        with self._state.cond:
            published = self._publish(queue, message, id, not_before)
            if published:
                self._state.cond.notify_all()
            return published

    def publish_many(self, messages: Iterable[Outgoing]) -> list[bool]:
        with self._state.cond:
            results = [self._publish(m.queue, m.message, m.id, m.not_before) for m in messages]
            if any(results):
                self._state.cond.notify_all()
            return results

    # -- consumer side -------------------------------------------------------------------

    def reserve(
        self, queues: Sequence[str], *, timeout: float, lease: float, limit: int = 1
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        give_up = time.monotonic() + max(timeout, 0.0)
        with self._state.cond:
            while True:
                taken = self._take(queues, lease, limit)
                if taken:
                    return taken
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return []
                # Sleep until woken by a publish/release, or until the earliest delayed
                # message or lease comes due on the clock, whichever is first.
                now = self._clock()
                events = [self._next_event(q) for q in map(self._state.queues.get, queues) if q]
                due = [e - now for e in events if e is not None]
                self._state.cond.wait(min([remaining, *due]) if due else remaining)

    def ack(self, delivery: Delivery) -> None:
        with self._state.cond:
            msg = self._held(delivery)
            del self._state.messages[msg.id]
            self._mark_done(msg.id, self._clock())

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        done: list[bool] = []
        with self._state.cond:
            now = self._clock()
            for delivery in deliveries:
                try:
                    msg = self._held(delivery)
                except LeaseLost:
                    done.append(False)
                    continue
                del self._state.messages[msg.id]
                self._mark_done(msg.id, now)
                done.append(True)
        return done

    def release(
        self, delivery: Delivery, *, not_before: float | None = None, message: bytes | None = None
    ) -> None:
        with self._state.cond:
            msg = self._held(delivery)
            if message is not None:
                msg.body = bytes(message)
            msg.lease_id = None
            self._place(msg, not_before, self._clock())
            self._state.cond.notify_all()

    def dead_letter(self, delivery: Delivery, *, reason: str, message: bytes | None = None) -> None:
        with self._state.cond:
            msg = self._held(delivery)
            if message is not None:
                msg.body = bytes(message)
            msg.place = _DEAD
            msg.seq = next(self._state.seq)
            msg.lease_id = None
            msg.reason = reason
            msg.dead_at = self._clock()
            self._state.dead[msg.id] = None

    def extend(self, delivery: Delivery, *, lease: float) -> Delivery:
        with self._state.cond:
            msg = self._held(delivery)
            msg.place = _LEASED  # also takes back an expired lease nobody reserved yet
            msg.lease_deadline = self._clock() + lease
            msg.seq = next(self._state.seq)
            heapq.heappush(self._queue(msg.queue).leases, (msg.lease_deadline, msg.seq, msg.id))
            return replace(delivery, lease_deadline=msg.lease_deadline)

    def cancel(self, id: str) -> bool:
        with self._state.cond:
            msg = self._state.messages.get(id)
            if msg is not None:
                # An expired lease counts as ready (as in `counts`), so it can be cancelled.
                self._settle(self._queue(msg.queue), self._clock())
            if msg is None or msg.place not in (_READY, _DELAYED):
                return False
            del self._state.messages[id]
            self._mark_done(id, self._clock())
            return True

    # -- admin ---------------------------------------------------------------------------

    def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueCounts]:
        with self._state.cond:
            now = self._clock()
            for queue in self._state.queues.values():
                self._settle(queue, now)
            names = list(self._state.queues) if queues is None else list(queues)
            tally: dict[str, dict[str, int]] = {name: {} for name in names}
            for msg in self._state.messages.values():
                places = tally.get(msg.queue)
                if places is not None:
                    places[msg.place] = places.get(msg.place, 0) + 1
            return {name: QueueCounts(**places) for name, places in tally.items()}

    def purge(self, queue: str) -> int:
        with self._state.cond:
            q = self._state.queues.get(queue)
            if q is None:
                return 0
            self._settle(q, self._clock())
            doomed = [
                msg.id
                for msg in self._state.messages.values()
                if msg.queue == queue and msg.place in (_READY, _DELAYED)
            ]
            for id in doomed:
                del self._state.messages[id]
            q.ready.clear()
            q.delayed.clear()
            return len(doomed)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        with self._state.cond:
            letters = []
            for id in self._state.dead:
                msg = self._state.messages[id]
                if queue is None or msg.queue == queue:
                    letters.append(
                        DeadLetter(
                            id=msg.id,
                            queue=msg.queue,
                            message=msg.body,
                            reason=msg.reason,
                            attempt=msg.attempt,
                            dead_at=msg.dead_at,
                        )
                    )
            return letters

    def _dead_ids(self, ids: Sequence[str] | None) -> list[str]:
        if ids is None:
            return list(self._state.dead)
        return [id for id in dict.fromkeys(ids) if id in self._state.dead]

    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._state.cond:
            chosen = self._dead_ids(ids)
            for id in chosen:
                del self._state.dead[id]
                msg = self._state.messages[id]
                msg.reason = ""
                self._make_ready(msg)
            if chosen:
                self._state.cond.notify_all()
            return len(chosen)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._state.cond:
            chosen = self._dead_ids(ids)
            for id in chosen:
                del self._state.dead[id]
                del self._state.messages[id]
            return len(chosen)

    def heartbeat(self, worker: WorkerInfo, *, ttl: float) -> None:
        with self._state.cond:
            self._state.workers[worker.id] = (worker, self._clock() + ttl)

    def unregister(self, worker_id: str) -> None:
        with self._state.cond:
            self._state.workers.pop(worker_id, None)

    def workers(self) -> list[WorkerInfo]:
        with self._state.cond:
            now = self._clock()
            for id, (_, expires_at) in list(self._state.workers.items()):
                if expires_at <= now:
                    del self._state.workers[id]
            return [info for info, _ in self._state.workers.values()]


# -- result backend --------------------------------------------------------------------


class MemoryBackend(ResultBackend):
    """Task records held in this process, as the JSON every transport stores."""

    capabilities = Capabilities(
        shared_between_processes=False, shared_between_hosts=False, durable=False
    )

    def __init__(self, state: _BackendState, *, clock: Clock) -> None:
        self._state = state
        self.clock = clock

    def _live(self, task_id: str, now: float) -> TaskRecord | None:
        entry = self._state.records.get(task_id)
        if entry is None:
            return None
        text, expires_at = entry
        if expires_at <= now:
            del self._state.records[task_id]
            return None
        return TaskRecord.from_json(text)

    def get(self, task_id: str) -> TaskRecord | None:
        with self._state.cond:
            return self._live(task_id, self.clock())

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        with self._state.cond:
            now = self.clock()
            return [self._live(task_id, now) for task_id in task_ids]

    def put(self, record: TaskRecord, *, expires: float) -> None:
        # Stored as JSON, like every other transport, so a record that another transport
        # could not store fails here too, and no caller can mutate a stored record.
        text = record.to_json()
        with self._state.cond:
            self._state.records[record.id] = (text, self.clock() + expires)
            if record.ready:
                self._state.cond.notify_all()

    def put_many(self, records: Sequence[TaskRecord], *, expires: float) -> None:
        texts = [record.to_json() for record in records]  # all encoded before any is stored
        with self._state.cond:
            expires_at = self.clock() + expires
            for record, text in zip(records, texts, strict=True):
                self._state.records[record.id] = (text, expires_at)
            if any(record.ready for record in records):
                self._state.cond.notify_all()

    def forget(self, task_id: str) -> bool:
        with self._state.cond:
            return self._state.records.pop(task_id, None) is not None

    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        give_up = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        with self._state.cond:
            while True:
                record = self._live(task_id, self.clock())
                if record is not None and record.ready:
                    return record
                if give_up is None:
                    self._state.cond.wait()
                    continue
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return None
                self._state.cond.wait(remaining)

    def incr(self, key: str, amount: int = 1, *, expires: float) -> int:
        with self._state.cond:
            now = self.clock()
            value, expires_at = self._state.counters.get(key, (0, now))
            if expires_at <= now:
                value = 0
            value += amount
            self._state.counters[key] = (value, now + expires)
            return value

    def purge_expired(self) -> int:
        with self._state.cond:
            now = self.clock()
            gone = [id for id, (_, at) in self._state.records.items() if at <= now]
            for id in gone:
                del self._state.records[id]
            for key in [k for k, (_, at) in self._state.counters.items() if at <= now]:
                del self._state.counters[key]
            return len(gone)


# -- transport -------------------------------------------------------------------------


class MemoryTransport:
    """`memory://NAME`: in-process broker and backend; see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = ("memory",)
    capabilities: ClassVar[Capabilities] = Capabilities(
        shared_between_processes=False, shared_between_hosts=False, durable=False
    )

    @classmethod
    def broker(cls, url: URL, *, clock: Clock) -> MemoryBroker:
        name, prefix, window = _parse(url)
        state = _BrokerState() if name is None else _shared(_brokers, (name, prefix), _BrokerState)
        return MemoryBroker(state, clock=clock, dedupe_window=window)

    @classmethod
    def backend(cls, url: URL, *, clock: Clock) -> MemoryBackend:
        name, prefix, _ = _parse(url)
        state = (
            _BackendState() if name is None else _shared(_backends, (name, prefix), _BackendState)
        )
        return MemoryBackend(state, clock=clock)
