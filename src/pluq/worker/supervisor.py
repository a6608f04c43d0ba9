"""The supervisor: owns the broker and backend, feeds children, records every outcome.

One fetch thread blocks in `Broker.reserve` (never taking more than the free slots plus a
small prefetch) and hands deliveries to the main loop, which

- checks each message's header and signature (it never unpickles a body),
- writes STARTED and hands the job to a free child over its pipe,
- waits on the children's pipes and process sentinels at once,
- stores each outcome in the backend, and only then acks, releases (a retry) or
  dead-letters the message,
- renews the leases of everything it holds, enforces hard time limits, replaces children
  that die (their task goes back to the queue with `WorkerLostError` in its history),
- sends heartbeats, and reacts to the stop flags that signal handlers set.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_any
from typing import TYPE_CHECKING, Any

from pluq import message as msg
from pluq._outcome import exception_name
from pluq.backend import FAILURE, RETRY, REVOKED, STARTED, SUCCESS, Attempt, TaskRecord
from pluq.broker import Delivery, WorkerInfo
from pluq.errors import LeaseLost, MessageError, PluqError, SignatureError
from pluq.worker.child import join_job, run_job
from pluq.worker.pool import Slot, SoloSlot
from pluq.worker.workflows import Workflows

if TYPE_CHECKING:
    from pluq.app import App

__all__ = ["Supervisor"]

log = logging.getLogger("pluq.worker")

REVOKE_CHECK_INTERVAL = 1.0
"""Seconds between checks for running tasks revoked with terminate=True."""

POISON_LIMIT = 10
"""Lost deliveries after which a task with no retry limit is dead-lettered anyway."""


@dataclass(slots=True)
class Running:
    """A message this worker holds: admitted, maybe running in a slot."""

    delivery: Delivery
    header: msg.Header
    body: bytes
    record: TaskRecord
    slot: Slot | None = None
    deadline: float | None = None  # monotonic hard time limit
    lost_lease: bool = False


@dataclass(slots=True)
class Unstored:
    """An outcome the backend refused for now; the message waits (unacked) until stored."""

    held: Running
    record: TaskRecord
    then: Callable[[], None]
    next_try: float = 0.0
    pause: float = 0.1


@dataclass(slots=True)
class _Shared:
    """State the fetch thread and the main loop share, under `lock`."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    inbox: deque[Delivery] = field(default_factory=deque)
    wanted: int = 0
    fetching: bool = True
    idle: bool = False  # the last reserve found nothing
    error: BaseException | None = None


class Supervisor:
    def __init__(
        self,
        app: App,
        slots: list[Slot],
        *,
        queues: Sequence[str],
        concurrency: int,
        prefetch: int,
        lease: float,
        heartbeat_interval: float,
        pool: str,
        name: str | None = None,
        poll: float = 0.5,
    ) -> None:
        self.app = app
        self.broker = app.broker
        self.backend = app.backend
        self.keys = app.keys
        self.clock = app.clock
        self.expires = app.result_expires
        self.workflows = Workflows(
            self.broker, self.backend, keys=self.keys, expires=self.expires, clock=self.clock
        )
        self.slots = slots
        self.queues = list(queues)
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease = lease
        self.heartbeat_interval = heartbeat_interval
        self.pool = pool
        self.poll = poll
        self.hostname = socket.gethostname()
        self.name = name or f"{self.hostname}:{os.getpid()}:{id(self) % 10_000:04d}"
        self.started_at = self.clock()
        self.processed = 0
        self.held: dict[str, Running] = {}  # delivery id -> held message
        self.unstored: list[Unstored] = []
        self.shared = _Shared()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.soft_stop = threading.Event()
        self.hard_stop = threading.Event()
        self.burst = False
        self._fetcher: threading.Thread | None = None
        self._next_heartbeat = 0.0
        self._next_renewal = 0.0
        self._next_revoke_check = 0.0
        self._demand = threading.Condition()
        self._stopping = False

    # -- control (called from signal handlers or other threads) ------------------------

    def wake(self) -> None:
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
                log.warning("reserve failed (%s); retrying in %.1f s", exc, pause)
                self.hard_stop.wait(pause)
                pause = min(pause * 2, 5.0)
                continue
            with shared.lock:
                if got:
                    shared.inbox.extend(got)
                    shared.wanted -= len(got)
                shared.idle = not got
                keep = shared.fetching
            self.wake()
            if not keep:
                return

    def _wait_for_demand(self) -> None:
        with self._demand:
            self._demand.wait(0.2)

    def _demand_changed(self) -> None:
        with self._demand:
            self._demand.notify_all()

    def _update_demand(self) -> None:
        free = sum(1 for s in self.slots if s.busy is None)
        waiting = sum(1 for h in self.held.values() if h.slot is None)
        with self.shared.lock:
            queued = len(self.shared.inbox)
            self.shared.wanted = max(0, free + self.prefetch - waiting - queued)
            wanted = self.shared.wanted
        if wanted:
            self._demand_changed()

    # -- main loop ---------------------------------------------------------------------

    def run(self, *, burst: bool = False, ready: threading.Event | None = None) -> int:
        self.burst = burst
        for slot in self.slots:
            slot.start()
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
                self._take_inbox()
                self._dispatch()
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
                    if not any(s.busy for s in self.slots) and not self.unstored:
                        break
                elif self.burst and self._drained():
                    self.soft_stop.set()
                    continue
                self._wait_for_events()
            return self._shutdown()
        finally:
            self._close()

    def _wait_for_events(self) -> None:
        waitables: list[Any] = [self.wake_r]
        for slot in self.slots:
            if slot.busy is not None and slot.conn is not None:
                waitables.append(slot.conn)
            if slot.sentinel is not None:
                waitables.append(slot.sentinel)
        timeout = self._next_deadline()
        for ready in wait_any(waitables, timeout):
            if ready == self.wake_r:
                try:
                    os.read(self.wake_r, 4096)
                except BlockingIOError:
                    pass
                continue
            for slot in self.slots:
                if ready is slot.conn:
                    self._receive(slot)
                    break
                if ready == slot.sentinel:
                    self._child_died(slot)
                    break
        self._enforce_time_limits()

    def _next_deadline(self) -> float:
        now = time.monotonic()
        limit = min(1.0, max(0.0, self._next_renewal - now), max(0.0, self._next_heartbeat - now))
        for slot in self.slots:
            held = slot.busy
            if held is not None and held.deadline is not None:
                limit = min(limit, max(0.0, held.deadline - now))
        if self.unstored:
            limit = min(limit, 0.05)
        return limit

    def _drained(self) -> bool:
        with self.shared.lock:
            idle = self.shared.idle and not self.shared.inbox
        if not idle or self.held or self.unstored:
            return False
        counts = self.broker.counts(self.queues)
        return all(c.ready == 0 and c.delayed == 0 for c in counts.values())

    # -- admission ---------------------------------------------------------------------

    def _take_inbox(self) -> None:
        with self.shared.lock:
            batch = list(self.shared.inbox)
            self.shared.inbox.clear()
        if not batch:
            return
        try:
            records = self.backend.get_many([d.id for d in batch])
        except Exception as exc:
            log.warning("could not read result records (%s); running without them", exc)
            records = [None] * len(batch)
        for delivery, record in zip(batch, records, strict=True):
            self._admit(delivery, record)
        self._update_demand()

    def _admit(self, delivery: Delivery, existing: TaskRecord | None) -> None:
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
            self._settle(delivery, lambda: self._succeeded(delivery, done, followups))
            return
        if existing is not None and existing.state == REVOKED:
            log.info("task %s[%s] was revoked; dropping it", header.task, header.id)
            self._settle(delivery, lambda: self.broker.ack(delivery))
            return
        if header.expires is not None and now > header.expires:
            reason = f"expired at {time.ctime(header.expires)} before it could start"
            record = self._base(header, existing).evolve(
                state=REVOKED,
                exc_type="pluq.errors.TaskRevokedError",
                exc_message=f"task {header.id} {reason}",
                finished_at=now,
            )
            self._store_then(
                Running(delivery, header, body, record),
                record,
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
        seen_numbers = {a.number for a in history}
        lost_now = max(0, delivery.attempt - 1 - header.seen)
        for number in range(header.seen + 1, delivery.attempt):
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
        base = self._base(header, existing)
        if "chord_message" in base.meta:
            base = base.evolve(meta={k: v for k, v in base.meta.items() if k != "chord_message"})
        record = base.evolve(
            state=STARTED,
            retries=header.retries,
            worker=self.name,
            started_at=now,
            finished_at=None,
            history=tuple(history),
        )
        held = Running(delivery, header, body, record)
        self.held[delivery.id] = held
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
        if self.soft_stop.is_set():
            return
        for slot in self.slots:
            if slot.busy is not None:
                continue
            held = next((h for h in self.held.values() if h.slot is None), None)
            if held is None:
                break
            self._start(slot, held)
        self._update_demand()

    def _start(self, slot: Slot, held: Running) -> None:
        header = held.header
        try:
            self.backend.put(msg.sign_record(held.record, self.keys), expires=self.expires)
        except Exception as exc:  # STARTED is informative; the outcome is what must be stored
            log.warning("could not record STARTED for %s (%s)", header.id, exc)
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
        slot.busy = held
        limit = self._time_limit(header)
        held.deadline = time.monotonic() + limit if limit else None
        log.info("task %s[%s] started", header.task, header.id)
        if isinstance(slot, SoloSlot):
            outcome = run_job(job, held.body, slot.resolve)
            self._finish(slot, outcome)
            return
        assert slot.conn is not None
        try:
            slot.conn.send_bytes(join_job(job, held.body))
        except OSError:
            self._child_died(slot)

    def _time_limit(self, header: msg.Header) -> float | None:
        task = None if header.by_value else self.app.tasks.get(header.task)
        if task is not None:
            return task.time_limit
        limit = header.meta.get("time_limit")
        return float(limit) if isinstance(limit, int | float) else None

    # -- outcomes ----------------------------------------------------------------------

    def _receive(self, slot: Slot) -> None:
        assert slot.conn is not None
        try:
            data = slot.conn.recv_bytes()
        except (EOFError, OSError):
            self._child_died(slot)
            return
        self._finish(slot, json.loads(data))

    def _finish(self, slot: Slot, outcome: dict[str, Any]) -> None:
        held: Running | None = slot.busy
        slot.busy = None
        if held is None:
            return
        self.processed += 1
        status = outcome["status"]
        if status == "success":
            self._succeed(held, outcome)
        elif status == "retry":
            self._retry(held, outcome, float(outcome["not_before"]), outcome.get("max_retries"))
        else:
            self._fail(held, outcome["exc_type"], outcome["exc_message"], outcome)

    def _attempt(self, held: Running, state: str, outcome: dict[str, Any] | None) -> Attempt:
        outcome = outcome or {}
        return Attempt(
            number=held.delivery.attempt,
            state=state,
            exc_type=outcome.get("exc_type"),
            exc_message=outcome.get("exc_message"),
            traceback=outcome.get("traceback"),
            started_at=outcome.get("started_at", held.record.started_at),
            finished_at=outcome.get("finished_at", self.clock()),
            worker=self.name,
        )

    def _succeed(self, held: Running, outcome: dict[str, Any]) -> None:
        record = held.record.evolve(
            state=SUCCESS,
            result=outcome["result"],
            result_encoding=outcome["result_encoding"],
            result_repr=outcome.get("result_repr"),
            exc_type=None,
            exc_message=None,
            traceback=None,
            finished_at=outcome["finished_at"],
            history=(*held.record.history, self._attempt(held, SUCCESS, None)),
        )
        followups = outcome.get("publish") or []
        if followups:  # kept with the result, so a redelivery can publish them again
            record = record.evolve(meta={**record.meta, "followups": followups})
        ms = (outcome["finished_at"] - outcome["started_at"]) * 1000
        log.info("task %s[%s] succeeded in %.1f ms", held.header.task, held.header.id, ms)
        self._store_then(
            held, record, lambda: self._succeeded(held.delivery, held.header, followups)
        )

    def _retry(
        self,
        held: Running,
        outcome: dict[str, Any],
        not_before: float,
        max_retries: int | None = None,
    ) -> None:
        header = held.header
        retries = header.retries + 1
        new_header = header.evolve(
            retries=retries,
            seen=held.delivery.attempt,
            eta=not_before,
            max_retries=max_retries if max_retries is not None else header.max_retries,
        )
        record = held.record.evolve(
            state=RETRY,
            retries=retries,
            exc_type=outcome.get("exc_type"),
            exc_message=outcome.get("exc_message"),
            traceback=outcome.get("traceback"),
            history=(*held.record.history, self._attempt(held, RETRY, outcome)),
        )
        data = msg.encode(new_header, held.body, self.keys)
        delay = max(0.0, not_before - self.clock())
        log.warning(
            "task %s[%s] will retry in %.1f s (retry %d): %s: %s",
            header.task, header.id, delay, retries, outcome.get("exc_type"),
            outcome.get("exc_message"),
        )  # fmt: skip
        self._store_then(
            held,
            record,
            lambda: self.broker.release(
                held.delivery, not_before=not_before if delay > 0 else None, message=data
            ),
        )

    def _fail(
        self, held: Running, exc_type: str, exc_message: str, outcome: dict[str, Any] | None
    ) -> None:
        outcome = dict(outcome or {}, exc_type=exc_type, exc_message=exc_message)
        record = held.record.evolve(
            state=FAILURE,
            result=outcome.get("result"),
            result_encoding=outcome.get("result_encoding"),
            result_repr=None,
            exc_type=exc_type,
            exc_message=exc_message,
            traceback=outcome.get("traceback"),
            finished_at=outcome.get("finished_at", self.clock()),
            history=(*held.record.history, self._attempt(held, FAILURE, outcome)),
        )
        reason = f"{exc_type}: {exc_message}"
        log.error("task %s[%s] failed, dead-lettered: %s", held.header.task, held.header.id, reason)
        self.workflows.fail_downstream(held.header, record)
        # Back from the dead-letter queue it starts with a fresh retry budget.
        fresh = held.header.evolve(retries=0, seen=held.delivery.attempt, lost=0)
        data = msg.encode(fresh, held.body, self.keys) if held.body else None
        self._store_then(
            held,
            record,
            lambda: self.broker.dead_letter(held.delivery, reason=reason, message=data),
        )

    def _child_died(self, slot: Slot) -> None:
        if slot.busy is not None and slot.conn is not None:
            # It may have sent its outcome just before it exited: take that first.
            try:
                if slot.conn.poll():
                    self._finish(slot, json.loads(slot.conn.recv_bytes()))
            except (EOFError, OSError, ValueError):
                pass
        held: Running | None = slot.busy
        slot.busy = None
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
            slot.busy = None
            slot.kill()
            slot.start()
            self.processed += 1
            message = f"the task ran longer than its time_limit of {limit} s and was killed"
            self._fail(held, "pluq.errors.TimeLimitExceeded", message, None)

    def _succeeded(
        self, delivery: Delivery, header: msg.Header | None, followups: list[dict[str, Any]]
    ) -> None:
        self.workflows.after_success(header, followups)
        self.broker.ack(delivery)

    # -- storing, then settling --------------------------------------------------------

    def _store_then(self, held: Running, record: TaskRecord, then: Callable[[], None]) -> None:
        """Store the outcome, and only once it is stored, act on the message.

        The lease is renewed first: a worker that was stopped past its lease (SIGSTOP, a
        long GC pause) must not overwrite the outcome of the worker that has it now.
        """
        try:
            # Renewals keep a live worker's lease well ahead; one close to its end (or
            # past it) means this worker was stopped: check before writing anything.
            if held.lost_lease or held.delivery.lease_deadline - self.clock() < self.lease / 3:
                held.delivery = self.broker.extend(held.delivery, lease=self.lease)
        except LeaseLost:
            log.warning(
                "lease of %s was lost before its outcome was stored; dropping the outcome",
                held.delivery.id,
            )
            self.held.pop(held.delivery.id, None)
            return
        except Exception as exc:  # the broker is down: store anyway; the ack will tell
            log.warning("could not renew the lease of %s (%s)", held.delivery.id, exc)
        signed = msg.sign_record(record, self.keys)
        try:
            self.backend.put(signed, expires=self.expires)
        except Exception as exc:
            log.warning("could not store the outcome of %s (%s); will retry", record.id, exc)
            self.unstored.append(Unstored(held, signed, then, time.monotonic() + 0.1))
            self.held.setdefault(held.delivery.id, held)
            return
        self._settle(held.delivery, then)

    def _settle(self, delivery: Delivery, then: Callable[[], None]) -> None:
        self.held.pop(delivery.id, None)
        try:
            then()
        except LeaseLost:
            log.warning("lease of %s was lost (expired, another worker has it)", delivery.id)
        except PluqError as exc:
            log.error("could not settle %s with the broker: %s", delivery.id, exc)

    def _retry_unstored(self) -> None:
        if not self.unstored:
            return
        now = time.monotonic()
        pending, self.unstored = self.unstored, []
        for item in pending:
            if now < item.next_try:
                self.unstored.append(item)
                continue
            try:
                self.backend.put(item.record, expires=self.expires)
            except Exception:
                item.pause = min(item.pause * 2, 5.0)
                item.next_try = now + item.pause
                self.unstored.append(item)
                continue
            self._settle(item.held.delivery, item.then)

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
            held: Running = slot.busy
            slot.busy = None
            slot.kill()
            slot.start()
            self.processed += 1
            log.warning("task %s[%s] revoked: terminated", held.header.task, held.header.id)
            self._settle(held.delivery, functools.partial(self.broker.ack, held.delivery))

    def _renew_leases(self) -> None:
        soon = self.clock() + self.lease * 2 / 3
        with self.shared.lock:
            waiting = list(self.shared.inbox)
        for delivery in waiting:
            if delivery.lease_deadline < soon:
                self._extend_inbox(delivery)
        for held in list(self.held.values()):
            if held.delivery.lease_deadline >= soon:
                continue
            try:
                held.delivery = self.broker.extend(held.delivery, lease=self.lease)
            except LeaseLost:
                held.lost_lease = True
                log.warning("lease of %s was lost while it ran here", held.delivery.id)
            except Exception as exc:
                log.warning("could not renew the lease of %s (%s)", held.delivery.id, exc)

    def _extend_inbox(self, delivery: Delivery) -> None:
        try:
            renewed = self.broker.extend(delivery, lease=self.lease)
        except Exception:
            return
        with self.shared.lock:
            for i, d in enumerate(self.shared.inbox):
                if d.id == delivery.id:
                    self.shared.inbox[i] = renewed

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
        for delivery in batch:
            self._release_delivery(delivery)

    def _release_waiting(self, why: str) -> None:
        for held in [h for h in self.held.values() if h.slot is None]:
            if any(u.held is held for u in self.unstored):
                continue
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
                held = slot.busy
                slot.busy = None
                slot.kill()
                if held is not None:
                    self.held.pop(held.delivery.id, None)
                    self._release_held(held)
        self._release_waiting("the worker is shutting down")
        for item in self.unstored:  # the backend never came back: the lease will expire
            log.error("outcome of %s was never stored; it will run again", item.record.id)
        for slot in self.slots:
            slot.close(timeout=10)
        try:
            self.broker.unregister(self.name)
        except Exception as exc:
            log.warning("could not unregister (%s)", exc)
        log.info("worker %s stopped (%s)", self.name, "cold" if hard else "warm")
        return 130 if hard else 0

    def _close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
