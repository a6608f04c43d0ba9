"""What the supervisor does with an outcome: build the record, store it, then settle.

The order never changes: the outcome is stored in the backend first, and only once it is
stored is the message acked, released (a retry) or dead-lettered. A crash in between leaves
a stored outcome and an unacked message, which the next delivery recognises and acks
without running the task again.

Successes, the common case, are batched: every outcome that arrives in one pass of the
supervisor's loop is stored with one `ResultBackend.put_many` and acked with one
`Broker.ack_many`. Retries, failures and dead letters are settled one by one.

While the children are busy, a batch is stored and settled on the store thread, so that
the loop goes on handing out jobs during the round trips; the outcomes that arrive
meanwhile make the next batch (one batch at a time, in order). With nothing else to do,
or on a backend inside this process (memory://), the loop stores the batch itself.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from pluq import message as msg
from pluq._frozen import positional
from pluq.backend import FAILURE, RETRY, SUCCESS, Attempt, TaskRecord
from pluq.broker import Delivery
from pluq.errors import LeaseLost, PluqError

if TYPE_CHECKING:
    from pluq.backend import ResultBackend
    from pluq.broker import Broker, Clock
    from pluq.worker.supervisor import Running
    from pluq.worker.workflows import Workflows

__all__ = ["ACK", "Outcomes", "Stored", "Unstored"]

log = logging.getLogger("pluq.worker")

ACK: Callable[[], None] = lambda: None  # noqa: E731 - a marker: "ack it, in the batch"
_make_attempt: Final = positional(Attempt)


@dataclass(slots=True)
class Stored:
    """An outcome waiting for this pass's batched store, and what to do once it is stored."""

    held: Running
    record: TaskRecord
    then: Callable[[], None]
    """ACK (acked in the batch), or the settling call (release, dead letter, ...)."""
    followups: list[dict[str, Any]] | None = None
    """For a success: the chain's next steps to publish before the ack."""
    signed: bool = False
    """The record is signed already (a success is, as it is made): `_flush` signs the rest."""


@dataclass(slots=True)
class Unstored:
    """An outcome the backend refused for now; the message waits (unacked) until stored."""

    item: Stored
    next_try: float = 0.0
    pause: float = 0.1


class Outcomes:
    """Record-building and the store-then-settle steps, mixed into the Supervisor."""

    broker: Broker
    backend: ResultBackend
    workflows: Workflows
    keys: tuple[bytes, ...]
    clock: Clock
    name: str
    lease: float
    expires: float
    held: dict[str, Running]
    unstored: list[Unstored]
    _stores: list[Stored]
    _store_thread: ThreadPoolExecutor | None
    """Stores and settles batches off the loop (None: the loop does it itself)."""
    _storing: tuple[list[Stored], Future[None]] | None
    """The batch on the store thread now, if any."""
    _task_log: bool
    """Whether the INFO lines of each task are wanted (the supervisor asks once a pass)."""

    def wake(self) -> None:
        raise NotImplementedError

    def _busy(self) -> bool:
        """True while the loop has jobs to hand out or outcomes to wait for."""
        return False

    def _reclaim(self, held: Running, *, wait: bool = False) -> bool | None:
        """True when the message whose lease `held` lost was reserved again by this very
        worker (it is in the fetch thread's hands): `held` takes over that delivery. With
        `wait`, None while a reserve that may hold it is still on its way."""
        return False

    def _drop(self, held: Running) -> None:
        """Forget a message: it is settled, or no longer ours."""
        self.held.pop(held.delivery.id, None)

    def _attempt(self, held: Running, state: str, outcome: dict[str, Any] | None) -> Attempt:
        outcome = outcome or {}
        started_at = outcome.get("started_at")
        finished_at = outcome.get("finished_at")
        return Attempt(
            number=held.delivery.attempt,
            state=state,
            exc_type=outcome.get("exc_type"),
            exc_message=outcome.get("exc_message"),
            traceback=outcome.get("traceback"),
            started_at=held.record.started_at if started_at is None else started_at,
            finished_at=self.clock() if finished_at is None else finished_at,
            worker=self.name,
        )

    def _succeed(self, held: Running, outcome: dict[str, Any]) -> None:
        header = held.header
        started, finished = outcome["started_at"], outcome["finished_at"]
        # number, state, exc_type, exc_message, traceback, started_at, finished_at, worker
        attempt = _make_attempt(
            held.delivery.attempt, SUCCESS, None, None, None, started, finished, self.name
        )
        if held.fresh:
            # The usual case, in one dict: `held.fields()` (no record built) changed as the
            # `else` branch changes it. Declaration order: it is what gets signed.
            fields = {
                "id": header.id,
                "state": SUCCESS,
                "task": header.task,
                "queue": header.queue,
                "result": outcome["result"],
                "result_encoding": outcome["result_encoding"],
                "result_repr": outcome.get("result_repr"),
                "exc_type": None,
                "exc_message": None,
                "traceback": None,
                "retries": header.retries,
                "history": (attempt,),
                "worker": held.worker,
                "created_at": header.created,
                "started_at": started,
                "finished_at": finished,
                "meta": {},
                "signature": None,
            }
        else:
            fields = held.fields()
            fields.update(
                state=SUCCESS,
                result=outcome["result"],
                result_encoding=outcome["result_encoding"],
                result_repr=outcome.get("result_repr"),
                exc_type=None,
                exc_message=None,
                traceback=None,
                started_at=started,
                finished_at=finished,
                history=(*fields["history"], attempt),
            )
        followups = outcome.get("publish") or []
        if followups:  # kept with the result, so a redelivery can publish them again
            fields["meta"] = {**fields["meta"], "followups": followups}
        # Signed as it is made: one new record, where changing then signing makes two.
        record = msg.signed_record(fields, self.keys)
        if self._task_log:
            ms = (finished - started) * 1000
            log.info("task %s[%s] succeeded in %.1f ms", held.header.task, held.header.id, ms)
        self._stores.append(Stored(held, record, ACK, followups, signed=True))

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
            "task %s[%s] will retry in %.2f s (retry %d): %s: %s",
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
        self,
        held: Running,
        exc_type: str,
        exc_message: str,
        outcome: dict[str, Any] | None,
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

    def _store_then(self, held: Running, record: TaskRecord, then: Callable[[], None]) -> None:
        """Queue an outcome for this pass's store; `then` runs once it is stored."""
        self._stores.append(Stored(held, record, then))

    # -- storing, then settling --------------------------------------------------------

    def _lease_holds(self, held: Running, *, wait: bool = False) -> bool | None:
        """False when another worker holds the message now, so that this one must not
        write its record. Renewals keep a live worker's lease well ahead; one close to its
        end (or past it) means this worker was stopped (SIGSTOP, a long pause): it asks
        the broker before writing anything. With `wait`, None while this worker's own
        reserve may be bringing the message back (`_reclaim`)."""
        if held.lost_lease or held.delivery.lease_deadline - self.clock() < self.lease / 3:
            try:
                held.delivery = self.broker.extend(held.delivery, lease=self.lease)
            except LeaseLost:
                back = self._reclaim(held, wait=wait)
                if back is False:
                    held.lost_lease = True
                return back
            except Exception as exc:  # the broker is down: write anyway; the ack tells
                log.warning("could not renew the lease of %s (%s)", held.delivery.id, exc)
            else:
                held.lost_lease = False
        return True

    def _flush(self, *, inline: bool = False) -> None:
        """Store this pass's outcomes in one batch, then settle each message.

        The lease is checked first where it may have run out (`_lease_holds`). The batch
        goes to the store thread while the loop has other work (`inline` forbids it);
        while one batch is there, the next one waits its turn.
        """
        if not self._stores or self._storing is not None:
            return
        batch, self._stores = self._stores, []
        fresh: list[Stored] = []
        soon = self.clock() + self.lease / 3  # a lease ending before then is asked about
        for item in batch:
            held = item.held
            if held.lost_lease or held.delivery.lease_deadline < soon:
                holds = self._lease_holds(held, wait=True)
                if holds is None:  # the fetch thread wakes the loop when it lands
                    self._stores.append(item)
                    continue
                if not holds:
                    log.warning(
                        "lease of %s was lost before its outcome was stored; dropping it",
                        held.delivery.id,
                    )
                    self._drop(held)
                    continue
            if not item.signed:
                item.record = msg.sign_record(item.record, self.keys)
                item.signed = True
            fresh.append(item)
        if not fresh:
            return
        # Only acks go to the store thread: a released or dead-lettered message may come
        # straight back, and must not find itself still held here.
        acks_only = all(item.then is ACK for item in fresh)
        if self._store_thread is not None and acks_only and not inline and self._busy():
            for item in fresh:
                item.held.storing = True
            future = self._store_thread.submit(self._store_and_settle, fresh)
            future.add_done_callback(lambda _: self.wake())
            self._storing = (fresh, future)
            return
        try:
            self._store_and_settle(fresh)
        except Exception as exc:
            self._unstored(fresh, exc)
            return
        self._stored(fresh)

    def _take_stored(self, *, wait: bool = False) -> None:
        """Finish the store thread's batch once it is done (`wait`: wait for it)."""
        if self._storing is None:
            return
        items, future = self._storing
        if not (wait or future.done()):
            return
        self._storing = None
        for item in items:
            item.held.storing = False
        exc = future.exception()
        if exc is not None:
            self._unstored(items, exc)
        else:
            self._stored(items)

    def _store_and_settle(self, items: list[Stored]) -> None:
        """Store the batch, then settle each message (on the store thread, or the loop).

        Raises only when the batch was not stored; a failure to settle is logged, and the
        message's lease runs out: a redelivery finds the stored outcome and acks it.
        """
        self.backend.put_many([item.record for item in items], expires=self.expires)
        try:
            self._settle_stored(items)
        except Exception:
            log.exception("could not settle %d stored outcome(s)", len(items))

    def _stored(self, items: list[Stored]) -> None:
        forget = self.held.pop  # as `_drop`, for each
        for item in items:
            forget(item.held.delivery.id, None)

    def _unstored(self, items: list[Stored], exc: BaseException) -> None:
        others = f" and {len(items) - 1} more" if len(items) > 1 else ""
        log.warning(
            "could not store the outcome of %s%s (%s); will retry",
            items[0].record.id, others, exc,
        )  # fmt: skip
        retry_at = time.monotonic() + 0.1
        self.unstored.extend(Unstored(item, retry_at) for item in items)

    def _settle_stored(self, items: list[Stored]) -> None:
        acks: list[Delivery] = []
        for item in items:
            delivery = item.held.delivery
            if item.then is not ACK:
                self._settle(delivery, item.then)
                continue
            header = item.held.header
            if item.followups or "chord" in header.meta:
                try:
                    self.workflows.after_success(header, item.followups or [])
                except PluqError as exc:  # not acked: a redelivery takes these steps again
                    log.error("could not take the next workflow step of %s: %s", delivery.id, exc)
                    continue
            acks.append(delivery)
        if not acks:
            return
        try:
            settled = self.broker.ack_many(acks)
        except PluqError as exc:  # the leases expire; a redelivery finds the stored outcome
            log.error("could not ack %d message(s) with the broker: %s", len(acks), exc)
            return
        for delivery, ok in zip(acks, settled, strict=True):
            if not ok:
                log.warning("lease of %s was lost (expired, another worker has it)", delivery.id)

    def _settle(self, delivery: Delivery, then: Callable[[], None]) -> None:
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
        due = [u for u in self.unstored if now >= u.next_try]
        if not due:
            return
        try:
            self.backend.put_many([u.item.record for u in due], expires=self.expires)
        except Exception:
            for u in due:
                u.pause = min(u.pause * 2, 5.0)
                u.next_try = now + u.pause
            return
        self.unstored = [u for u in self.unstored if now < u.next_try]
        items = [u.item for u in due]
        try:
            self._settle_stored(items)
        finally:
            self._stored(items)
