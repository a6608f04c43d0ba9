"""The supervisor: owns the broker and backend, feeds children, records every outcome.

One fetch thread blocks in `Broker.reserve` (never taking more than the free slots plus a
small prefetch) and hands deliveries to the main loop, which

- checks each message's header and signature (it never unpickles a body),
- hands the job to a free slot (a child process over its pipe, or a thread); for tasks
  known to be short, a slot gets a few jobs at once, so it never waits for the next one,
- waits on the children's pipes and process sentinels at once,
- stores the outcomes of each pass in one batch, and only then acks (one batch),
  releases (a retry) or dead-letters each message (see `pluq.worker.outcomes`),
- records STARTED for a task still running after `STARTED_AFTER` seconds (short tasks
  go from PENDING straight to their outcome, saving a write per task),
- renews the leases of everything it holds, enforces hard time limits, replaces children
  that die (their task goes back to the queue with `WorkerLostError` in its history),
- sends heartbeats, and reacts to the stop flags that signal handlers set.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pluq import message as msg
from pluq._json import loads
from pluq._outcome import exception_name
from pluq.backend import FAILURE, REVOKED, STARTED, SUCCESS, Attempt, TaskRecord, record_fields
from pluq.broker import Delivery, WorkerInfo
from pluq.errors import LeaseLost, MessageError, PluqError, SignatureError
from pluq.worker.child import run_job
from pluq.worker.outcomes import Outcomes, Stored, Unstored
from pluq.worker.pool import Slot, SoloSlot, ThreadSlot
from pluq.worker.workflows import Workflows

if TYPE_CHECKING:
    from pluq.app import App

__all__ = ["Supervisor"]

log = logging.getLogger("pluq.worker")

REVOKE_CHECK_INTERVAL = 1.0
"""Seconds between checks for running tasks revoked with terminate=True."""

POISON_LIMIT = 10
"""Lost deliveries after which a task with no retry limit is dead-lettered anyway."""

STARTED_AFTER = 0.1
"""Seconds a task runs before the worker records it as STARTED."""

SHORT_TASK = 0.002
"""Seconds: a task whose recent runs averaged less is short. While tasks are short, a slot
is handed several jobs at once, so it never waits for the next one, and the worker reserves
further ahead (see `Supervisor._depth`): bigger batches, fewer round trips."""

AHEAD = 0.02
"""Seconds of short jobs, by their recent mean run time, that a slot may hold (its running
job included); the worker reserves as many again per slot beyond them."""

MAX_DEPTH = 64
"""Jobs a slot may hold at most, however short: a no-op task gets this many."""


@dataclass(slots=True)
class Running:
    """A message this worker holds: admitted, maybe handed to a slot."""

    delivery: Delivery
    header: msg.Header
    body: bytes
    _record: TaskRecord | None
    """Its record as this worker holds it; None for a task admitted with no record yet,
    until something asks for `record` (see `fields`)."""
    worker: str = ""
    admitted: float = 0.0  # clock time: the STARTED record's started_at
    slot: Slot | None = None
    started: float | None = None  # monotonic, when it began to run (first in its slot)
    deadline: float | None = None  # monotonic hard time limit
    lost_lease: bool = False
    awaiting: int = 0
    """The fetch thread's reserve that may hold this message again (its lease was found
    lost while that reserve was on its way): its outcome waits for it. 0: none."""
    started_stored: bool = False
    storing: bool = False  # its outcome is on the store thread now

    @property
    def record(self) -> TaskRecord:
        """The task's record as this worker holds it: STARTED, until its outcome."""
        if self._record is None:
            self._record = TaskRecord(**self.fields())
        return self._record

    @record.setter
    def record(self, record: TaskRecord) -> None:
        self._record = record

    @property
    def fresh(self) -> bool:
        """No record is built yet: a first delivery with nothing stored before it, whose
        record is all in its header (see `fields`)."""
        return self._record is None

    def fields(self) -> dict[str, Any]:
        """`record._fields()`, without building the record when it is not built yet, so
        that a fresh task's STARTED record is built only if something asks for it. A
        fresh task's success writes these same fields, changed, as one dict of its own
        (`Outcomes._succeed`); a test holds the two to each other."""
        if self._record is not None:
            return self._record._fields()
        header = self.header
        return record_fields(
            id=header.id,
            state=STARTED,
            task=header.task,
            queue=header.queue,
            retries=header.retries,
            worker=self.worker,
            created_at=header.created,
            started_at=self.admitted,
        )


def _hostname() -> str:
    """This machine's name, as `socket.gethostname()` gives it, without importing socket
    (a sixth of a threads pool's start-up imports): POSIX gets it from uname."""
    try:
        return os.uname().nodename
    except AttributeError:  # pragma: no cover - Windows has no uname
        import socket

        return socket.gethostname()


@dataclass(slots=True)
class _Shared:
    """State the fetch thread and the main loop share, under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inbox: deque[tuple[Delivery, TaskRecord | None]] = field(default_factory=deque)
    """Reserved messages, each with its task's result record as it was when reserved."""
    wanted: int = 0
    fetching: bool = True
    idle: bool = False  # the last reserve found nothing
    error: BaseException | None = None
    reserves_begun: int = 0
    """Reserves the fetch thread has begun; one is on its way while this is ahead of
    `reserves_landed`. A message it claimed is in the broker's hands as this worker's,
    but not in `inbox` yet (see `Supervisor._reclaim`)."""
    reserves_landed: int = 0


class Supervisor(Outcomes):
    def __init__(
        self,
        app: App,
        slots: list[Slot],
        *,
        queues: Sequence[str],
        concurrency: int,
        prefetch: int,
        lease: float,
        adaptive: bool = False,
        heartbeat_interval: float,
        pool: str,
        name: str | None = None,
        poll: float = 0.5,
    ) -> None:
        self.app = app
        self.keys = app.keys
        self.clock = app.clock
        self.expires = app.result_expires
        self.slots = slots
        self.queues = list(queues)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.adaptive = adaptive
        """Reserve further ahead, and queue several jobs per slot, while tasks are short."""
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.pool = pool
        self.poll = poll
        self.hostname = _hostname()
        self.name = name or f"{self.hostname}:{os.getpid()}:{id(self) % 10_000:04d}"
        self.started_at = self.clock()
        self.processed = 0
        self.held: dict[str, Running] = {}  # delivery id -> held message
        self.waiting: deque[Running] = deque()  # admitted, not handed to a slot yet
        self._stores: list[Stored] = []  # outcomes of this pass, stored by _flush
        self._store_thread: ThreadPoolExecutor | None = None
        self._storing: tuple[list[Stored], Future[None]] | None = None
        self.unstored: list[Unstored] = []
        self.durations: dict[str, float] = {}  # task name -> recent mean run time (s)
        self.reports: deque[tuple[Slot, dict[str, Any]]] = deque()  # from thread slots
        for slot in slots:
            if isinstance(slot, ThreadSlot):
                slot.report = self._report
        self.shared = _Shared()
        self.wake_r, self.wake_w = os.pipe()
        self._poll = select.poll()
        self._poll.register(self.wake_r, select.POLLIN)
        self._poll_map: dict[int, tuple[Slot, str]] = {}  # see _poller
        os.set_blocking(self.wake_w, False)
        self._woken = False  # a wake-up byte is in the pipe, unread
        self.soft_stop = threading.Event()
        self.hard_stop = threading.Event()
        self.burst = False
        self._fetcher: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._next_renewal = 0.0
        self._next_revoke_check = 0.0
        self._demand = threading.Event()  # set when the fetch thread may have work
        self._stopping = False
        self._task_log = True  # a line per task received, started, succeeded (INFO)

    # -- control (called from signal handlers or other threads) ------------------------

    def wake(self) -> None:
        if self._woken:
            return  # a byte is in the pipe already: the loop will look at everything
        self._woken = True
        try:
            os.write(self.wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full, so the loop is awake anyway

    def request_stop(self, *, hard: bool = False) -> None:
        (self.hard_stop if hard else self.soft_stop).set()
        self.wake()

    # -- the fetch thread --------------------------------------------------------------

    def _fetch_loop(self) -> None:
        shared = self.shared
        pause = 0.05
        while True:
            with shared.lock:
                if not shared.fetching:
                    return
                wanted = shared.wanted
                if wanted > 0:
                    shared.reserves_begun += 1
            if wanted <= 0:
                # Nothing to fetch for: the main loop notifies when a slot frees.
                self._wait_for_demand()
                continue
            try:
                got = self.broker.reserve(
                    self.queues, timeout=self.poll, lease=self.lease, limit=wanted
                )
                pause = 0.05
            except Exception as exc:  # a broker outage must not kill the worker
                with shared.lock:
                    shared.reserves_landed = shared.reserves_begun
                log.warning("reserve failed (%s); retrying in %.1f s", exc, pause)
                self.hard_stop.wait(pause)
                pause = min(pause * 2, 5.0)
                continue
            with shared.lock:
                if got:
                    shared.inbox.extend(zip(got, self._records(got), strict=True))
                    shared.wanted -= len(got)
                shared.reserves_landed = shared.reserves_begun
                shared.idle = not got
                keep = shared.fetching
            self.wake()
            if not keep:
                return

    def _records(self, got: list[Delivery]) -> list[TaskRecord | None]:
        """The stored records of reserved messages (read here, off the main loop): a
        finished, revoked or parked (chord) task is told apart at admission."""
        if not got:
            return []
        try:
            return self.backend.get_many([d.id for d in got])
        except Exception as exc:
            log.warning("could not read result records (%s); running without them", exc)
            return [None] * len(got)

    def _wait_for_demand(self) -> None:
        self._demand.clear()
        with self.shared.lock:  # checked again after clearing, so no wake-up is missed
            idle = self.shared.wanted <= 0 and self.shared.fetching
        if idle:
            self._demand.wait(0.2)

    def _demand_changed(self) -> None:
        if not self._demand.is_set():  # a plain read: no lock while the fetcher is busy
            self._demand.set()

    def _update_demand(self) -> None:
        short = self._short_mode()
        depth = self._depth(max(self.durations.values())) if short else 1
        free = sum(max(0, depth - len(s.jobs)) for s in self.slots)
        ahead = self.prefetch
        if short:
            ahead = max(ahead, depth * len(self.slots))
        # Finished messages are leased until their outcomes are stored and acked: those
        # waiting for the store thread, or on it, count against the prefetch.
        storing = len(self._stores) + (len(self._storing[0]) if self._storing else 0)
        with self.shared.lock:
            queued = len(self.shared.inbox)
            self.shared.wanted = max(0, free + ahead - len(self.waiting) - queued - storing)
            wanted = self.shared.wanted
        if wanted:
            self._demand_changed()

    def _short_mode(self) -> bool:
        """True while every task seen recently was short (adaptive prefetch only)."""
        return (
            self.adaptive
            and bool(self.durations)
            and all(d < SHORT_TASK for d in self.durations.values())
        )

    def _depth(self, mean: float | None) -> int:
        """How many jobs a slot may hold while its first job's task averages `mean`
        seconds: 1 for a task not known to be short, else `AHEAD` worth (2 to `MAX_DEPTH`)."""
        if not self.adaptive or mean is None or mean >= SHORT_TASK:
            return 1
        return max(2, min(MAX_DEPTH, int(AHEAD / max(mean, 1e-6))))

    def _report(self, slot: Slot, outcome: dict[str, Any]) -> None:
        """A thread slot's outcome (called from its thread)."""
        self.reports.append((slot, outcome))
        self.wake()

    # -- main loop ---------------------------------------------------------------------

    def run(self, *, burst: bool = False, ready: threading.Event | None = None) -> int:
        self.burst = burst
        # The first children start before the broker and backend open: forked, they are
        # copies of this process, and need not carry a transport's client (redis-py is
        # about 20 MB) they never use.
        for slot in self.slots:
            slot.start()
        try:
            self.broker, self.backend = self.app.broker, self.app.backend
        except BaseException:  # a bad URL option, say: nothing ran, stop what started
            for slot in self.slots:
                slot.kill()  # a process at once
                slot.close(timeout=1)  # a thread's loop ends
            self._close()
            raise
        self.workflows = Workflows(
            self.broker, self.backend, keys=self.keys, expires=self.expires, clock=self.clock
        )
        if self.backend.capabilities.shared_between_processes:
            # A backend shared between processes is a round trip away (a file, a database,
            # a server): storing on a thread of its own keeps the loop handing out jobs.
            self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="pluq-store")
        self._update_demand()
        self._fetcher = threading.Thread(target=self._fetch_loop, name="pluq-fetch", daemon=True)
        self._fetcher.start()
        log.info(
            "worker %s ready: queues %s, %d %s, pid %d",
            self.name, ",".join(self.queues), self.concurrency, self.pool, os.getpid(),
        )  # fmt: skip
        if ready is not None:
            ready.set()
        try:
            while not self.hard_stop.is_set():
                self._task_log = log.isEnabledFor(logging.INFO)  # once a pass, not a task
                self._take_stored()
                self._take_inbox()
                self._dispatch()
                self._flush()
                self._retry_unstored()
                self._housekeeping()
                if self.soft_stop.is_set():
                    if not self._stopping:
                        self._stopping = True
                        log.info(
                            "warm shutdown: finishing %d running task(s), returning the rest",
                            sum(1 for s in self.slots if s.busy is not None),
                        )
                    self._stop_fetching()
                    self._release_waiting("the worker is shutting down")
                    busy = (
                        any(s.jobs for s in self.slots)
                        or self._stores
                        or self._storing
                        or self.unstored
                    )
                    if not busy:
                        break
                elif self.burst and self._drained():
                    self.soft_stop.set()
                    continue
                self._wait_for_events()
            return self._shutdown()
        finally:
            self._close()

    def _wait_for_events(self) -> None:
        timeout = 0.0 if self.reports else self._next_deadline()
        poller = self._poller()
        pids = {slot.index: slot.pid for slot in self.slots}  # before any is replaced
        died: list[tuple[Slot, int | None]] = []
        for fd, _ in poller.poll(timeout * 1000):
            if fd == self.wake_r:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                # Reset before looking at reports, the inbox and the stop flags: whatever
                # is set from now on writes a new byte.
                self._woken = False
                continue
            slot, kind = self._poll_map[fd]
            if kind == "conn" and slot.conn is not None and slot.conn.fileno() == fd:
                self._receive(slot)
            elif kind == "sentinel":
                died.append((slot, pids[slot.index]))
        while self.reports:
            slot, outcome = self.reports.popleft()
            self._finish(slot, outcome)
        for slot, pid in died:
            if slot.pid == pid:  # not replaced already (its pipe's EOF told first)
                self._child_died(slot)
        self._enforce_time_limits()
        self._dispatch()  # the children first: storing the outcomes can wait a moment

    def _poller(self) -> select.poll:
        """One poll object for the wake-up pipe, the children's pipes and their process
        sentinels, rebuilt only when a child is replaced."""
        wanted: dict[int, tuple[Slot, str]] = {}
        for slot in self.slots:
            if slot.conn is not None:
                wanted[slot.conn.fileno()] = (slot, "conn")
            if slot.sentinel is not None:
                wanted[slot.sentinel] = (slot, "sentinel")
        if wanted != self._poll_map:
            self._poll = select.poll()
            self._poll.register(self.wake_r, select.POLLIN)
            for fd in wanted:
                self._poll.register(fd, select.POLLIN)
            self._poll_map = wanted
        return self._poll

    def _next_deadline(self) -> float:
        now = time.monotonic()
        limit = min(1.0, max(0.0, self._next_renewal - now), max(0.0, self._next_heartbeat - now))
        for slot in self.slots:
            held = slot.busy
            if held is None:
                continue
            if held.deadline is not None:
                limit = min(limit, max(0.0, held.deadline - now))
            if not held.started_stored and held.started is not None:
                limit = min(limit, max(0.0, held.started + STARTED_AFTER - now))
        if self.unstored:
            limit = min(limit, 0.05)
        return limit

    def _drained(self) -> bool:
        with self.shared.lock:
            idle = self.shared.idle and not self.shared.inbox
        if not idle or self.held or self.unstored or self._stores or self._storing:
            return False
        counts = self.broker.counts(self.queues)
        return all(c.ready == 0 and c.delayed == 0 for c in counts.values())

    def _busy(self) -> bool:
        return bool(self.waiting) or any(slot.jobs for slot in self.slots)

    # -- admission ---------------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self.shared.lock:
            batch = list(self.shared.inbox)
            self.shared.inbox.clear()
        if not batch:
            return
        for delivery, record in batch:
            self._admit(delivery, record)
        self._update_demand()

    def _admit(self, delivery: Delivery, existing: TaskRecord | None) -> None:
        mine = self._still_held(delivery)
        if mine is not None:
            self._take_back(mine, delivery)
            return
        now = self.clock()
        try:
            header, body = msg.decode(delivery.message)
            if header.id != delivery.id:
                raise MessageError(
                    f"the header's id {header.id!r} is not the broker's id {delivery.id!r}"
                )
            msg.verify(header, body, self.keys)
        except (MessageError, SignatureError) as exc:
            kind = "bad signature" if isinstance(exc, SignatureError) else "malformed message"
            self._reject(delivery, None, f"{kind}: {exc}", exception_name(exc))
            return
        if existing is not None and existing.state in (SUCCESS, FAILURE):
            # Stored but not acked before (a crash between the two): it ran; don't rerun,
            # but finish what may not have been done after storing (idempotent by id).
            log.info("task %s already finished (%s); acking", header.id, existing.state)
            followups = existing.meta.get("followups", []) if existing.state == SUCCESS else []
            done = header if existing.state == SUCCESS else None

            def finish() -> None:
                self.workflows.after_success(done, followups)
                self.broker.ack(delivery)

            self._settle(delivery, finish)
            return
        if existing is not None and existing.state == REVOKED:
            log.info("task %s[%s] was revoked; dropping it", header.task, header.id)
            self._settle(delivery, lambda: self.broker.ack(delivery))
            return
        if header.expires is not None and now > header.expires:
            reason = f"expired at {time.ctime(header.expires)} before it could start"
            revoked = self._base(header, existing).evolve(
                state=REVOKED,
                exc_type="pluq.errors.TaskRevokedError",
                exc_message=f"task {header.id} {reason}",
                finished_at=now,
            )
            self._store_then(
                Running(delivery, header, body, revoked),
                revoked,
                lambda: self.broker.dead_letter(delivery, reason=reason),
            )
            return
        if not header.by_value and header.task not in self.app.tasks:
            where = "this worker has no app (-A)" if not self.app.tasks else "unknown here"
            self._reject(
                delivery,
                header,
                f"unknown task {header.task!r} ({where}); start the worker with the app that "
                f"registers it",
                "pluq.errors.NotRegistered",
            )
            return
        history = list(existing.history) if existing is not None else []
        lost_now = max(0, delivery.attempt - 1 - header.seen)
        seen_numbers = {a.number for a in history} if lost_now else set()
        for number in range(header.seen + 1, delivery.attempt):  # empty unless lost_now
            if number not in seen_numbers:
                history.append(
                    Attempt(
                        number=number,
                        state="LOST",
                        exc_type="pluq.errors.WorkerLostError",
                        exc_message=f"delivery {number} was lost: its worker stopped without "
                        f"reporting (killed, or its lease expired)",
                    )
                )
        lost = header.lost + lost_now
        limit = header.max_retries if header.max_retries is not None else POISON_LIMIT
        if lost and header.retries + lost > limit:
            held = Running(delivery, header, body, self._base(header, existing))
            held.record = held.record.evolve(history=tuple(history))
            self._fail(
                held,
                "pluq.errors.WorkerLostError",
                f"delivered {delivery.attempt} times and its worker died each time without "
                f"reporting (a poison pill?); giving up after {lost} lost deliveries",
                None,
            )
            return
        # A fresh task's STARTED record is built only if something needs it (`Running`).
        held = Running(delivery, header, body, None, worker=self.name, admitted=now)
        if existing is not None:
            base = self._base(header, existing)
            if "chord_message" in base.meta:
                meta = {k: v for k, v in base.meta.items() if k != "chord_message"}
                base = base.evolve(meta=meta)
            held.record = base.evolve(
                state=STARTED,
                retries=header.retries,
                worker=self.name,
                started_at=now,
                finished_at=None,
                history=tuple(history),
            )
        elif history:  # deliveries lost before this one, and no record of its own
            held.record = held.record.evolve(history=tuple(history))
        self.held[delivery.id] = held
        self.waiting.append(held)
        if self._task_log:
            log.info("task %s[%s] received (attempt %d)", header.task, header.id, delivery.attempt)
        if lost_now:
            held.header = header.evolve(lost=lost, seen=delivery.attempt - 1)

    def _base(self, header: msg.Header, existing: TaskRecord | None) -> TaskRecord:
        base = existing or TaskRecord(id=header.id, created_at=header.created)
        return base.evolve(task=header.task, queue=header.queue)

    def _reject(
        self, delivery: Delivery, header: msg.Header | None, reason: str, exc_type: str
    ) -> None:
        """Dead-letter a message that cannot run, recording FAILURE so no caller waits."""
        log.error("dead-lettering %s: %s", delivery.id, reason)
        now = self.clock()
        record = TaskRecord(
            id=delivery.id,
            state=FAILURE,
            task=header.task if header else None,
            queue=delivery.queue,
            exc_type=exc_type,
            exc_message=reason,
            worker=self.name,
            finished_at=now,
            history=(Attempt(number=delivery.attempt, state=FAILURE, exc_type=exc_type,
                             exc_message=reason, finished_at=now, worker=self.name),),
        )  # fmt: skip
        stub = header or msg.Header(id=delivery.id, task="?", queue=delivery.queue, serializer="?")
        self._store_then(
            Running(delivery, stub, b"", record),
            record,
            lambda: self.broker.dead_letter(delivery, reason=reason),
        )

    # -- dispatch ----------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Hand waiting jobs to slots: every idle slot first, then (short tasks only) a
        few more behind the running one, so a slot never waits for the supervisor."""
        if self.soft_stop.is_set():
            return
        for slot in self.slots:
            if not self.waiting:
                break
            if not slot.jobs:
                self._start(slot, self.waiting.popleft())
        if self.waiting and self.adaptive:
            # Only behind short jobs (the first decides: later ones are all short).
            durations, waiting = self.durations, self.waiting
            depths = {
                s: self._depth(durations.get(s.jobs[0].header.task)) for s in self.slots if s.jobs
            }
            held = {s: len(s.jobs) for s in depths}
            open_slots = [s for s, depth in depths.items() if held[s] < depth]
            while open_slots and waiting:
                mean = durations.get(waiting[0].header.task)
                if mean is None or mean >= SHORT_TASK:
                    break
                slot = min(open_slots, key=held.__getitem__)  # the one holding fewest
                self._start(slot, waiting.popleft())
                held[slot] = len(slot.jobs)
                if not held[slot] or held[slot] >= depths[slot]:
                    open_slots.remove(slot)
        for slot in self.slots:
            try:
                slot.flush()
            except OSError:
                self._child_died(slot)
        self._update_demand()

    def _start(self, slot: Slot, held: Running) -> None:
        header = held.header
        job = {
            "token": header.id,
            "id": header.id,
            "task": header.task,
            "queue": header.queue,
            "retries": header.retries,
            "max_retries": header.max_retries,
            "attempt": held.delivery.attempt,
            "eta": header.eta,
            "expires": header.expires,
            "serializer": header.serializer,
            "hostname": self.hostname,
        }
        members = header.meta.get("chord_members")
        if members is not None:
            gathered = self.workflows.gather(members)
            if isinstance(gathered, str):
                self._fail(held, "pluq.errors.TaskError", gathered, None)
                return
            job["chord_results"] = gathered
        held.slot = slot
        slot.jobs.append(held)
        if len(slot.jobs) == 1:
            self._began(held)
        if self._task_log:
            log.info("task %s[%s] started", header.task, header.id)
        if isinstance(slot, SoloSlot):
            self._store_started([held])  # the solo slot blocks this loop: say so first
            outcome = run_job(job, held.body, slot.resolve)
            self._finish(slot, outcome)
            return
        slot.send(job, held.body)  # written by _dispatch, with the slot's other new jobs

    def _began(self, held: Running) -> None:
        """`held` is now the first job of its slot: it runs from about now."""
        held.started = time.monotonic()
        limit = self._time_limit(held.header)
        held.deadline = held.started + limit if limit else None

    def _store_started(self, running: list[Running]) -> None:
        """Record STARTED for tasks that run for a while (informative: failures only log)."""
        now = self.clock()
        records = []
        for held in running:
            held.started_stored = True
            if not self._lease_holds(held):
                continue  # another worker has it now: its record is not ours to touch
            records.append(
                msg.sign_record(
                    held.record.evolve(started_at=now - (time.monotonic() - held.started))
                    if held.started is not None
                    else held.record,
                    self.keys,
                )
            )
        try:
            self.backend.put_many(records, expires=self.expires)
        except Exception as exc:
            log.warning("could not record STARTED for %d task(s) (%s)", len(records), exc)

    def _time_limit(self, header: msg.Header) -> float | None:
        task = None if header.by_value else self.app.tasks.get(header.task)
        if task is not None:
            return task.time_limit
        limit = header.meta.get("time_limit")
        return float(limit) if isinstance(limit, int | float) else None

    # -- outcomes ----------------------------------------------------------------------

    def _receive(self, slot: Slot) -> None:
        """Take every outcome the slot's pipe holds now (one read)."""
        try:
            outcomes = slot.receive()
        except (EOFError, OSError):
            self._child_died(slot)
            return
        for data in outcomes:
            self._finish(slot, loads(data.decode()))

    def _finish(self, slot: Slot, outcome: dict[str, Any]) -> None:
        if not slot.jobs:
            return
        held: Running = slot.jobs.popleft()
        if slot.jobs:
            self._began(slot.jobs[0])
        self.processed += 1
        status = outcome["status"]
        if status == "success":
            took = outcome["finished_at"] - outcome["started_at"]
            mean = self.durations.get(held.header.task)
            self.durations[held.header.task] = took if mean is None else 0.8 * mean + 0.2 * took
            self._succeed(held, outcome)
        elif status == "retry":
            self._retry(held, outcome, float(outcome["not_before"]), outcome.get("max_retries"))
        else:
            self.durations.pop(held.header.task, None)
            self._fail(held, outcome["exc_type"], outcome["exc_message"], outcome)

    def _requeue(self, slot: Slot) -> None:
        """Jobs queued behind the first in a slot that is gone never started: they go
        back to the front of the waiting line, in order, to run elsewhere."""
        while slot.jobs:
            held = slot.jobs.pop()
            held.slot = None
            held.started = held.deadline = None
            self.waiting.appendleft(held)

    def _child_died(self, slot: Slot) -> None:
        if slot.jobs and slot.conn is not None:
            # It may have sent outcomes just before it exited: take those first.
            try:
                while slot.jobs and select.select((slot.conn,), (), (), 0)[0]:
                    for data in slot.receive():
                        self._finish(slot, loads(data.decode()))
            except (EOFError, OSError, ValueError):
                pass
        held: Running | None = slot.jobs.popleft() if slot.jobs else None
        self._requeue(slot)
        slot.kill()  # reaps it, so that its exit code is known
        code = slot.exitcode()
        if self.hard_stop.is_set():
            if held is not None:
                self.held.pop(held.delivery.id, None)
                self._release_held(held)
            return
        slot.start()
        if held is None:
            return
        self.processed += 1
        message = f"the child process running the task died (exit code {code})"
        log.error("task %s[%s]: %s", held.header.task, held.header.id, message)
        outcome = {"exc_type": "pluq.errors.WorkerLostError", "exc_message": message}
        limit = held.header.max_retries
        if held.header.retries < (POISON_LIMIT if limit is None else limit):
            self._retry(held, outcome, self.clock())
        else:
            self._fail(held, outcome["exc_type"], message, outcome)

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            held = slot.busy
            if held is None or held.deadline is None or now < held.deadline:
                continue
            limit = self._time_limit(held.header)
            if slot.pid is None:
                log.warning(
                    "task %s ran past its time limit; threads cannot be killed", held.header.id
                )
                held.deadline = None
                continue
            slot.jobs.popleft()
            self._requeue(slot)
            slot.kill()
            slot.start()
            self.processed += 1
            message = f"the task ran longer than its time_limit of {limit} s and was killed"
            self._fail(held, "pluq.errors.TimeLimitExceeded", message, None)

    # -- housekeeping ------------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now >= self._next_renewal:
            self._renew_leases()
            self._next_renewal = now + self.lease / 3
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.heartbeat_interval
        if now >= self._next_revoke_check:
            self._terminate_revoked()
            self._next_revoke_check = now + REVOKE_CHECK_INTERVAL
        due = [
            s.jobs[0]
            for s in self.slots
            if s.jobs
            and not s.jobs[0].started_stored
            and s.jobs[0].started is not None
            and now - s.jobs[0].started >= STARTED_AFTER
        ]
        if due:
            self._store_started(due)

    def _terminate_revoked(self) -> None:
        """Kill the children of running tasks revoked with `terminate=True`."""
        running = [s for s in self.slots if s.busy is not None and s.pid is not None]
        if not running:
            return
        try:
            records = self.backend.get_many([s.busy.delivery.id for s in running])
        except Exception as exc:
            log.warning("could not check for revoked tasks (%s)", exc)
            return
        for slot, record in zip(running, records, strict=True):
            if record is None or record.state != REVOKED or not record.meta.get("terminate"):
                continue
            held: Running = slot.jobs.popleft()
            self._requeue(slot)
            slot.kill()
            slot.start()
            self.processed += 1
            self._drop(held)
            log.warning("task %s[%s] revoked: terminated", held.header.task, held.header.id)
            self._settle(held.delivery, functools.partial(self.broker.ack, held.delivery))

    def _renew_leases(self) -> None:
        soon = self.clock() + self.lease * 2 / 3
        with self.shared.lock:
            waiting = [delivery for delivery, _ in self.shared.inbox]
        for delivery in waiting:
            if delivery.lease_deadline < soon:
                self._extend_inbox(delivery)
        for held in list(self.held.values()):
            if held.storing or held.delivery.lease_deadline >= soon:
                continue  # one being stored is settled within moments
            try:
                held.delivery = self.broker.extend(held.delivery, lease=self.lease)
            except LeaseLost:
                if not self._reclaim(held):
                    held.lost_lease = True
                    log.warning("lease of %s was lost while it ran here", held.delivery.id)
            except Exception as exc:
                log.warning("could not renew the lease of %s (%s)", held.delivery.id, exc)

    def _reclaim(self, held: Running, *, wait: bool = False) -> bool | None:
        """Take the message back from the inbox if the fetch thread reserved it again.

        A message found lost was claimed before `extend` said so. The reserve that claimed
        it may be this worker's own, still on its way to the inbox: with `wait`, that is
        None (not yet known) while the reserve in flight then has not landed. Only that
        reserve is waited for (`held.awaiting`), not the ones after it: the fetch thread
        reserves again at once, and a message another worker holds would wait forever.
        """
        shared = self.shared
        with shared.lock:
            for i, (delivery, _) in enumerate(shared.inbox):
                if delivery.id == held.delivery.id:
                    del shared.inbox[i]
                    break
            else:
                if not wait:
                    return False
                if not held.awaiting and shared.reserves_begun > shared.reserves_landed:
                    held.awaiting = shared.reserves_begun
                    log.warning(
                        "lease of %s was lost; the message may be in a reserve still on "
                        "its way here: its outcome waits for that reserve",
                        held.delivery.id,
                    )
                if held.awaiting > shared.reserves_landed:
                    return None
                held.awaiting = 0
                return False
        self._take_back(held, delivery)
        return True

    def _still_held(self, delivery: Delivery) -> Running | None:
        """The message this worker holds already under the id of a new `delivery`, if
        any: one whose outcome is on the store thread is settled first, most likely."""
        mine = self.held.get(delivery.id)
        if mine is not None and mine.storing:
            self._take_stored(wait=True)
            mine = self.held.get(delivery.id)
        return mine

    def _take_back(self, held: Running, delivery: Delivery) -> None:
        """`delivery` is a new lease of the message `held` holds: its lease ran out while
        this worker still had it (the broker was locked or unreachable, or this process
        was paused), and this worker's fetch thread reserved it again. `held` (waiting,
        running, or its outcome waiting to be stored) goes on under the new lease rather
        than run a second time."""
        log.warning("task %s came back while this worker still had it", delivery.id)
        held.delivery = delivery
        held.lost_lease = False
        held.awaiting = 0

    def _extend_inbox(self, delivery: Delivery) -> None:
        try:
            renewed = self.broker.extend(delivery, lease=self.lease)
        except Exception:
            return
        with self.shared.lock:
            for i, (d, record) in enumerate(self.shared.inbox):
                if d.id == delivery.id:
                    self.shared.inbox[i] = (renewed, record)

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.name,
            hostname=self.hostname,
            pid=os.getpid(),
            queues=tuple(self.queues),
            concurrency=self.concurrency,
            pool=self.pool,
            started_at=self.started_at,
            heartbeat_at=self.clock(),
            processed=self.processed,
        )

    def _heartbeat(self) -> None:
        try:
            self.broker.heartbeat(self.info(), ttl=self.heartbeat_interval * 3)
        except Exception as exc:
            log.warning("heartbeat failed (%s)", exc)

    # -- stopping ----------------------------------------------------------------------

    def _stop_fetching(self) -> None:
        with self.shared.lock:
            self.shared.fetching = False
        self._demand_changed()
        if self._fetcher is not None and self._fetcher is not threading.current_thread():
            self._fetcher.join()
            self._fetcher = None
        self._take_inbox_for_release()

    def _take_inbox_for_release(self) -> None:
        with self.shared.lock:
            batch = list(self.shared.inbox)
            self.shared.inbox.clear()
        for delivery, _ in batch:
            mine = self._still_held(delivery)
            if mine is not None:
                self._take_back(mine, delivery)  # released with it, or its outcome stored
            else:
                self._release_delivery(delivery)

    def _release_waiting(self, why: str) -> None:
        while self.waiting:
            held = self.waiting.popleft()
            self.held.pop(held.delivery.id, None)
            self._release_held(held)

    def _release_held(self, held: Running) -> None:
        # Handed back on purpose: not a lost delivery, and not a retry.
        data = msg.encode(held.header.evolve(seen=held.delivery.attempt), held.body, self.keys)
        try:
            self.broker.release(held.delivery, message=data if held.body else None)
        except PluqError as exc:
            log.warning("could not release %s (%s); its lease will expire", held.delivery.id, exc)

    def _release_delivery(self, delivery: Delivery) -> None:
        """Hand back a message this worker reserved but never admitted.

        Only a message that verifies is re-encoded (re-signing an unverified one would let
        it through next time); its lost deliveries are carried forward, so a poison pill
        stays bounded across graceful restarts.
        """
        data: bytes | None = None
        try:
            header, body = msg.decode(delivery.message)
            msg.verify(header, body, self.keys)
            lost = header.lost + max(0, delivery.attempt - 1 - header.seen)
            data = msg.encode(header.evolve(seen=delivery.attempt, lost=lost), body, self.keys)
        except (MessageError, SignatureError):
            data = None
        try:
            self.broker.release(delivery, message=data)
        except PluqError as exc:
            log.warning("could not release %s (%s); its lease will expire", delivery.id, exc)

    def _shutdown(self) -> int:
        hard = self.hard_stop.is_set()
        self._stop_fetching()
        if hard:
            for slot in self.slots:
                jobs, slot.jobs = list(slot.jobs), deque()
                slot.kill()
                for held in jobs:
                    self.held.pop(held.delivery.id, None)
                    self._release_held(held)
        self._take_stored(wait=True)
        self._flush(inline=True)
        self._release_waiting("the worker is shutting down")
        for item in self.unstored:  # the backend never came back: the lease will expire
            log.error("outcome of %s was never stored; it will run again", item.item.record.id)
        for slot in self.slots:
            slot.close(timeout=10)
        try:
            self.broker.unregister(self.name)
        except Exception as exc:
            log.warning("could not unregister (%s)", exc)
        log.info("worker %s stopped (%s)", self.name, "cold" if hard else "warm")
        return 130 if hard else 0

    def _close(self) -> None:
        if self._store_thread is not None:
            self._store_thread.shutdown(wait=True)
            self._store_thread = None
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
