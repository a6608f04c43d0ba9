"""Consumer side: blocking reserve, wake-up latency, idle cost, queue preference, limit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pluq.broker import Broker, Delivery
from pluq.registry import open_broker

from . import _procs
from ._clock import ManualClock
from ._kit import Children, ContractBase, requires

LEASE = 60.0
WAKE_BOUND = 0.5
"""Seconds within which a blocked reserve must return after a publish (generous: the
measured figure is in the run summary)."""
IDLE_SECONDS = 1.5
IDLE_CPU_SHARE = 0.2


def settle(seconds: float) -> None:
    """Let a consumer sink into its idle wait before publishing: the case being measured
    is a consumer that has been waiting a while. Correctness never depends on it: had the
    publish come first, reserve would return at once and the bounds would still hold."""
    threading.Event().wait(seconds)


class ReserveContract(ContractBase):
    def test_reserve_blocks_until_ready_or_timeout(self, broker: Broker) -> None:
        # given an empty queue, reserve waits for the whole timeout and returns nothing
        started = time.monotonic()
        assert broker.reserve(["q"], timeout=0.3, lease=LEASE) == []
        assert 0.25 <= time.monotonic() - started < 10
        # when a message is published while it waits, it returns with it long before
        timer = threading.Timer(0.2, broker.publish, args=("q", b"m"), kwargs={"id": "m1"})
        started = time.monotonic()
        timer.start()
        try:
            deliveries = broker.reserve(["q"], timeout=30, lease=LEASE)
        finally:
            timer.join()
        assert [d.id for d in deliveries] == ["m1"]
        assert time.monotonic() - started < 10

    def test_reserve_timeout_zero_does_not_wait(self, broker: Broker) -> None:
        started = time.monotonic()
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        assert time.monotonic() - started < 1.0

    def test_reserve_from_an_unknown_queue_is_empty(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        assert broker.reserve(["nobody-publishes-here"], timeout=0, lease=LEASE) == []

    def test_reserve_wakes_on_publish_from_another_thread(
        self, broker: Broker, report: Callable[[str, float, str], None]
    ) -> None:
        latency, _ = self._wake_latency(broker, lambda: broker.publish("q", b"m", id="m1"))
        report("wake_latency_ms", latency * 1000, "ms")

    def test_reserve_wakes_on_publish_from_another_instance(
        self,
        broker: Broker,
        broker_url: str,
        clock: ManualClock,
        report: Callable[[str, float, str], None],
    ) -> None:
        with open_broker(broker_url, clock=clock) as producer:
            latency, _ = self._wake_latency(broker, lambda: producer.publish("q", b"m", id="m1"))
        report("wake_latency_ms", latency * 1000, "ms")

    def test_reserve_wakes_on_release_and_retry_dead(
        self, broker: Broker, broker_url: str, clock: ManualClock
    ) -> None:
        broker.publish("q", b"m", id="m1")
        (delivery,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        with open_broker(broker_url, clock=clock) as other:
            _, again = self._wake_latency(broker, lambda: other.release(delivery))
            assert again.attempt == 2
            broker.dead_letter(again, reason="test")
            _, retried = self._wake_latency(broker, lambda: other.retry_dead())
            assert retried.attempt == 3

    def test_blocked_reserve_returns_when_a_delayed_message_comes_due(
        self, live_broker: Broker, report: Callable[[str, float, str], None]
    ) -> None:
        not_before = time.time() + 0.5
        live_broker.publish("q", b"m", id="m1", not_before=not_before)
        deliveries = live_broker.reserve(["q"], timeout=30, lease=LEASE)
        late = time.time() - not_before
        report("delayed_message_lateness_ms", late * 1000, "ms")
        assert [d.id for d in deliveries] == ["m1"]
        assert -0.05 <= late < WAKE_BOUND

    def _wake_latency(self, consumer: Broker, act: Callable[[], object]) -> tuple[float, Delivery]:
        """Seconds from `act()` (run here) to the return of a reserve blocked on a thread
        (which must get message "m1"), and the delivery it got."""
        result: dict[str, float | list[Delivery]] = {}
        waiting = threading.Event()

        def consume() -> None:
            waiting.set()
            result["deliveries"] = consumer.reserve(["q"], timeout=30, lease=LEASE)
            result["woke_at"] = time.monotonic()

        thread = threading.Thread(target=consume)
        thread.start()
        try:
            assert waiting.wait(30)
            settle(0.5)
            acted_at = time.monotonic()
            act()
        finally:
            thread.join(60)
        deliveries = result["deliveries"]
        assert isinstance(deliveries, list)
        assert [d.id for d in deliveries] == ["m1"]
        latency = float(result["woke_at"]) - acted_at  # type: ignore[arg-type]
        assert latency < WAKE_BOUND
        return latency, deliveries[0]

    @requires("shared_between_processes")
    def test_reserve_wakes_within_milliseconds_of_a_publish_from_another_process(
        self, live_broker: Broker, broker_url: str, report: Callable[[str, float, str], None]
    ) -> None:
        with Children() as children:
            # given a consumer process blocked in reserve on an empty queue
            ready = children.event()
            children.start(_procs.reserve_once, ready, broker_url, ["q"], 30.0, LEASE)
            children.wait(ready, "opened the broker")
            settle(0.5)
            # when this process publishes
            published_at = time.monotonic()
            live_broker.publish("q", b"m", id="m1")
            result = children.get()
            children.join()
        # then the consumer returns with the message within a fraction of a second
        latency = result["woke_at"] - published_at
        report("cross_process_wake_latency_ms", latency * 1000, "ms")
        assert result["ids"] == ["m1"]
        assert latency < WAKE_BOUND

    def test_idle_reserve_costs_almost_no_cpu(
        self, broker_url: str, report: Callable[[str, float, str], None]
    ) -> None:
        # A child process idles in one reserve on an empty queue and measures its own
        # CPU time (every thread of the process) against the wall time it waited.
        with Children() as children:
            children.start(_procs.idle_reserve, broker_url, "idle", IDLE_SECONDS)
            result = children.get()
            children.join()
        share = result["cpu"] / result["wall"]
        report("idle_reserve_cpu_percent", share * 100, "% of one core")
        assert result["got"] == 0
        assert result["wall"] >= IDLE_SECONDS - 0.1
        assert share < IDLE_CPU_SHARE

    def test_reserve_respects_queue_order(self, broker: Broker) -> None:
        broker.publish("low", b"m", id="low-1")
        broker.publish("high", b"m", id="high-1")
        broker.publish("low", b"m", id="low-2")
        broker.publish("high", b"m", id="high-2")
        # earlier queues first, whatever the publish order
        order: list[str] = []
        while deliveries := broker.reserve(["high", "low"], timeout=0, lease=LEASE):
            order.extend(d.id for d in deliveries)
        assert order == ["high-1", "high-2", "low-1", "low-2"]

    def test_reserve_prefers_earlier_queues_with_limit(self, broker: Broker) -> None:
        broker.publish("low", b"m", id="low-1")
        broker.publish("low", b"m", id="low-2")
        broker.publish("high", b"m", id="high-1")
        first = broker.reserve(["high", "low"], timeout=0, lease=LEASE, limit=3)
        assert first[0].id == "high-1"
        assert [d.id for d in first] == ["high-1", "low-1", "low-2"][: len(first)]
        rest: list[str] = []
        while deliveries := broker.reserve(["high", "low"], timeout=0, lease=LEASE, limit=3):
            rest.extend(d.id for d in deliveries)
        assert [d.id for d in first] + rest == ["high-1", "low-1", "low-2"]

    def test_reserve_with_limit_leases_up_to_limit_messages(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        for i in range(10):
            broker.publish("q", b"m", id=f"m{i}")
        deliveries = broker.reserve(["q"], timeout=0, lease=LEASE, limit=4)
        assert 1 <= len(deliveries) <= 4
        assert [d.id for d in deliveries] == [f"m{i}" for i in range(len(deliveries))]
        assert len({d.lease_id for d in deliveries}) == len(deliveries)
        assert all(d.attempt == 1 for d in deliveries)
        assert all(d.lease_deadline == pytest.approx(clock() + LEASE, abs=0.01) for d in deliveries)
        counts = broker.counts(["q"])["q"]
        assert (counts.ready, counts.leased) == (10 - len(deliveries), len(deliveries))

    def test_delivery_describes_the_reservation(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"payload", id="m1")
        (delivery,) = broker.reserve(["q"], timeout=0, lease=42.0)
        assert (delivery.id, delivery.queue, delivery.message) == ("m1", "q", b"payload")
        assert delivery.attempt == 1
        assert isinstance(delivery.lease_id, str)
        assert delivery.lease_id
        assert delivery.lease_deadline == pytest.approx(clock() + 42.0, abs=0.01)

    def test_leased_message_is_invisible_to_other_reservations(
        self, broker: Broker, broker_url: str, clock: ManualClock
    ) -> None:
        broker.publish("q", b"m", id="m1")
        assert len(broker.reserve(["q"], timeout=0, lease=LEASE)) == 1
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        with open_broker(broker_url, clock=clock) as other:
            assert other.reserve(["q"], timeout=0, lease=LEASE) == []


class TestReserve(ReserveContract):
    pass
