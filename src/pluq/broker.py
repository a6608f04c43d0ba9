"""The Broker interface: named queues with leased, at-least-once delivery.

This file is the specification. Every transport (`memory://`, `file://`, `sqlite://`,
`redis://`, and third-party ones) implements `Broker`, and the contract kit in the top-level
`transports/` folder has a test named after each guarantee stated here.

Transports take and return **bytes**: they know nothing of tasks, serializers or the app.

Time is seconds as floats, read from the transport's injectable `clock` (default
`time.time`). `timeout` and `lease` are relative; `not_before` and `lease_deadline` are
absolute times on that clock.

A Broker instance may be used from several threads at once (the worker reserves on one
thread and acknowledges on another).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Self

from pluq._frozen import positional
from pluq.errors import LeaseLost

__all__ = [
    "Broker",
    "Capabilities",
    "Clock",
    "DeadLetter",
    "Delivery",
    "Outgoing",
    "QueueCounts",
    "WorkerInfo",
]

Clock = Callable[[], float]
"""Returns the current time in seconds (a float), like `time.time`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """What a transport can do beyond the guarantees every transport gives.

    The contract kit skips a test only when a capability it needs is missing, never by
    the transport's name. Every guarantee stated on `Broker` and `ResultBackend` is *not* a
    capability: every transport must pass those.
    """

    shared_between_processes: bool = True
    """Another process opening the same URL sees the same queues and results."""
    shared_between_hosts: bool = False
    """Processes on other machines can open the same URL (a network server)."""
    durable: bool = False
    """Queued messages and results survive a restart of every process using them."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One reservation of one message: the message plus the proof of who holds it."""

    id: str
    """The id given to `publish`; stable across redeliveries."""
    queue: str
    message: bytes
    """The message bytes as last published or released (opaque to the broker)."""
    attempt: int
    """1 on the first reservation, +1 on every reservation after it (after a release and
    after an expired lease alike)."""
    lease_id: str
    """A new random token for each reservation."""
    lease_deadline: float
    """Absolute clock time at which the lease expires unless extended."""


make_delivery: Final = positional(Delivery)
"""`Delivery(...)` from its six values in declaration order (id, queue, message, attempt,
lease_id, lease_deadline), at about a third of the cost of the keyword call: for a
transport's `reserve`, which makes one for every message it hands out."""


class Outgoing(NamedTuple):
    """One message for `Broker.publish_many`."""

    queue: str
    message: bytes
    id: str
    not_before: float | None = None


class _Fields:
    """Read access by key as well as by attribute: `counts["ready"] == counts.ready`."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(frozen=True, slots=True)
class QueueCounts(_Fields):
    """How many messages of one queue are in each place."""

    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0

    @property
    def running(self) -> int:
        """Leased messages: reserved by a worker and not yet acknowledged."""
        return self.leased

    @property
    def total(self) -> int:
        return self.ready + self.delayed + self.leased + self.dead


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter(_Fields):
    """A message moved to the dead-letter queue, with the reason it was moved."""

    id: str
    queue: str
    message: bytes
    reason: str
    attempt: int
    dead_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo(_Fields):
    """A live worker as it registered itself through `Broker.heartbeat`."""

    id: str
    hostname: str
    pid: int
    queues: tuple[str, ...] = ()
    concurrency: int = 1
    pool: str = "processes"
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    processed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Broker(abc.ABC):
    """Named queues with leased, at-least-once delivery.

    Guarantees, each a test of the same name in the contract kit:

    - publish_is_idempotent_on_id: publishing an id that is already known queues nothing.
    - fifo_among_ready: within one queue, ready messages are reserved in publish order.
    - delayed_wait_in_broker: a message with `not_before` is not reservable before then,
      and is ready once the clock passes it; no consumer holds it meanwhile.
    - reserve_blocks_until_ready_or_timeout: `reserve` returns as soon as a message is
      ready, or an empty list after `timeout`; it does not spin while it waits.
    - lease_expiry_returns_message: a leased message whose lease ran out without ack,
      release or dead_letter is ready again (at-least-once: nothing is lost).
    - stale_lease_is_rejected: ack/release/dead_letter/extend with a lease that expired
      and was taken by another reservation raise `pluq.errors.LeaseLost`.
    - attempt_counts_deliveries: `Delivery.attempt` counts every reservation.
    """

    capabilities: Capabilities = Capabilities()

    # -- producer side -------------------------------------------------------------------

    @abc.abstractmethod
    def publish(
        self, queue: str, message: bytes, *, id: str, not_before: float | None = None
    ) -> bool:
        """Queue `message` on `queue` under `id`.

        Idempotent on id: if `id` is already known (ready, delayed, leased or dead, or
        acknowledged less than `dedupe_window` seconds ago: a URL option of every
        transport, default 300), nothing is queued and the call returns False. Otherwise
        the message is stored (as durably as the transport stores) before this returns
        True.

        With `not_before` (an absolute clock time) the message waits in the broker and
        becomes ready when the clock reaches it.
        """

    def publish_many(self, messages: Iterable[Outgoing]) -> list[bool]:
        """Publish several messages; one bool per message, as `publish` returns.

        Transports override this to batch round trips; the guarantees are `publish`'s,
        message by message, and the messages of one queue keep their order.
        """
        return [
            self.publish(m.queue, m.message, id=m.id, not_before=m.not_before) for m in messages
        ]

    # -- consumer side -------------------------------------------------------------------

    @abc.abstractmethod
    def reserve(
        self, queues: Sequence[str], *, timeout: float, lease: float, limit: int = 1
    ) -> list[Delivery]:
        """Lease up to `limit` ready messages, blocking up to `timeout` seconds for the first.

        Queues are tried in the order given (earlier ones first). Returns as soon as at
        least one message is ready, or an empty list when `timeout` passes; `timeout=0`
        does not wait. Each returned message is leased for `lease` seconds: it stays in the
        broker, invisible to other reservations, until it is acked, released,
        dead-lettered, or its lease expires (then it is ready again, at-least-once).
        Every reservation counts one `attempt` and gets a new `lease_id`.
        """

    @abc.abstractmethod
    def ack(self, delivery: Delivery) -> None:
        """Remove the message for good: its work is done and its outcome is stored.

        Raises `LeaseLost` if the lease expired and another reservation took the message
        (or it was already acked by this lease).
        """

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        """Ack several messages at once: one bool per delivery, True when it was acked,
        False where `ack` would have raised `LeaseLost` (this never raises it).

        Transports override this to settle a whole batch in one round trip or transaction;
        the guarantees are `ack`'s, delivery by delivery. Any other error (the broker is
        unreachable) raises, and then any subset may have been acked: acking again reports
        False for those.
        """
        done: list[bool] = []
        for delivery in deliveries:
            try:
                self.ack(delivery)
            except LeaseLost:
                done.append(False)
            else:
                done.append(True)
        return done

    @abc.abstractmethod
    def release(
        self, delivery: Delivery, *, not_before: float | None = None, message: bytes | None = None
    ) -> None:
        """Give the message back to its queue: ready now, or delayed until `not_before`.

        `message`, when given, replaces the stored bytes (a retry carries its new count).
        The released message keeps its id and its attempt count. Raises `LeaseLost` like
        `ack`.
        """

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, *, reason: str, message: bytes | None = None) -> None:
        """Move the message to the dead-letter queue with a human-readable `reason`.

        It stays there, listed by `dead_letters`, until `retry_dead` or `purge_dead`.
        `message`, when given, replaces the stored bytes. Raises `LeaseLost` like `ack`.
        """

    @abc.abstractmethod
    def extend(self, delivery: Delivery, *, lease: float) -> Delivery:
        """Renew the lease: it now ends `lease` seconds from now. Returns the updated
        delivery (same `lease_id`, new `lease_deadline`). Raises `LeaseLost` like `ack`."""

    def cancel(self, id: str) -> bool:
        """Remove a ready or delayed message by id, so it never runs (a revoke).

        Returns False when no such message waits (unknown, leased, dead or done). The id
        stays known to `publish`. The default says False: a transport that cannot find a
        message by id leaves revocation to the worker's check of the result record.
        """
        return False

    # -- admin ---------------------------------------------------------------------------

    @abc.abstractmethod
    def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueCounts]:
        """Message counts per queue: every queue given, or every queue the broker knows
        of (one that has or had a message) when `queues` is None. Expired leases count as
        ready."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Remove every ready and delayed message of `queue`; return how many. Leased and
        dead messages stay."""

    @abc.abstractmethod
    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        """The dead messages (of one queue, or all), oldest first."""

    @abc.abstractmethod
    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        """Put dead messages (the ones named, or all) back on their queues, ready now, with
        their attempt count kept. Returns how many moved; unknown ids are ignored."""

    @abc.abstractmethod
    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead messages (the ones named, or all); return how many."""

    @abc.abstractmethod
    def heartbeat(self, worker: WorkerInfo, *, ttl: float) -> None:
        """Register or refresh a worker; it counts as alive for `ttl` seconds from now."""

    @abc.abstractmethod
    def unregister(self, worker_id: str) -> None:
        """Forget a worker at once (it stopped cleanly)."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The workers whose last heartbeat has not expired."""

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files. The broker must not be used afterwards."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
