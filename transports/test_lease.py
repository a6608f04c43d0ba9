"""Leases on the manual clock: ack, release, dead_letter, extend, expiry, stale leases, attempts."""

from __future__ import annotations

import pytest

from pluq.broker import Broker, Delivery, Outgoing, QueueCounts
from pluq.errors import LeaseLost

from ._clock import ManualClock
from ._kit import ContractBase

LEASE = 10.0


def reserve_one(broker: Broker, queue: str = "q", lease: float = LEASE) -> Delivery:
    deliveries = broker.reserve([queue], timeout=0, lease=lease)
    assert len(deliveries) == 1, f"expected one ready message on {queue!r}, got {deliveries}"
    return deliveries[0]


class LeaseContract(ContractBase):
    def test_ack_removes_the_message(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        broker.ack(reserve_one(broker))
        assert broker.counts(["q"])["q"] == QueueCounts()
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []

    def test_ack_twice_raises_lease_lost(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        delivery = reserve_one(broker)
        broker.ack(delivery)
        with pytest.raises(LeaseLost):
            broker.ack(delivery)

    def test_release_makes_the_message_ready_again(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        broker.release(reserve_one(broker))
        assert broker.counts(["q"])["q"] == QueueCounts(ready=1)
        again = reserve_one(broker)
        assert (again.id, again.message, again.attempt) == ("m1", b"m", 2)

    def test_release_with_delay_waits_in_the_broker(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        broker.publish("q", b"m", id="m1")
        broker.release(reserve_one(broker), not_before=clock() + 30)
        assert broker.counts(["q"])["q"] == QueueCounts(delayed=1)
        clock.advance(29)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        clock.advance(1.5)
        assert reserve_one(broker).attempt == 2

    def test_release_replaces_the_message_bytes(self, broker: Broker) -> None:
        broker.publish("q", b"attempt one", id="m1")
        broker.release(reserve_one(broker), message=b"attempt two")
        again = reserve_one(broker)
        assert (again.id, again.message) == ("m1", b"attempt two")

    def test_dead_letter_keeps_the_reason(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="m1")
        delivery = reserve_one(broker)
        broker.dead_letter(delivery, reason="ValueError: bad input")
        assert broker.counts(["q"])["q"] == QueueCounts(dead=1)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        (letter,) = broker.dead_letters()
        assert (letter.id, letter.queue, letter.message) == ("m1", "q", b"m")
        assert (letter.reason, letter.attempt) == ("ValueError: bad input", 1)
        assert letter.dead_at == pytest.approx(clock(), abs=0.01)
        with pytest.raises(LeaseLost):
            broker.ack(delivery)

    def test_dead_letter_replaces_the_message_bytes(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        broker.dead_letter(reserve_one(broker), reason="r", message=b"annotated")
        assert [d.message for d in broker.dead_letters()] == [b"annotated"]

    def test_extend_renews_the_lease(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="m1")
        delivery = reserve_one(broker)
        clock.advance(8)
        extended = broker.extend(delivery, lease=LEASE)
        assert extended.lease_id == delivery.lease_id
        assert extended.lease_deadline == pytest.approx(clock() + LEASE, abs=0.01)
        assert (extended.id, extended.attempt, extended.message) == ("m1", 1, b"m")
        # past the first deadline, the message is still leased
        clock.advance(8)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
        broker.ack(extended)
        assert broker.counts(["q"])["q"] == QueueCounts()

    def test_lease_expiry_returns_message(self, broker: Broker, clock: ManualClock) -> None:
        # given a reserved message whose holder never acts on it
        broker.publish("q", b"m", id="m1")
        first = reserve_one(broker)
        clock.advance(LEASE - 0.5)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        # when its lease runs out, then it counts as ready and is delivered again
        clock.advance(1)
        assert broker.counts(["q"])["q"] == QueueCounts(ready=1)
        second = reserve_one(broker)
        assert (second.id, second.message, second.attempt) == ("m1", b"m", 2)
        assert second.lease_id != first.lease_id

    def test_stale_lease_is_rejected(self, broker: Broker, clock: ManualClock) -> None:
        # given a lease that expired and was taken by another reservation
        broker.publish("q", b"m", id="m1")
        stale = reserve_one(broker)
        clock.advance(LEASE + 1)
        current = reserve_one(broker)
        # then every action with the stale lease raises LeaseLost and changes nothing
        with pytest.raises(LeaseLost):
            broker.ack(stale)
        with pytest.raises(LeaseLost):
            broker.release(stale)
        with pytest.raises(LeaseLost):
            broker.dead_letter(stale, reason="stale")
        with pytest.raises(LeaseLost):
            broker.extend(stale, lease=LEASE)
        assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
        assert broker.dead_letters() == []
        broker.ack(current)
        assert broker.counts(["q"])["q"] == QueueCounts()

    def test_acting_on_an_expired_lease_nobody_took_is_safe(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        # The contract allows either outcome here: the ack succeeds (kinder: nobody else
        # holds the message) or raises LeaseLost. Either way nothing is lost or doubled.
        broker.publish("q", b"m", id="m1")
        delivery = reserve_one(broker)
        clock.advance(LEASE + 1)
        try:
            broker.ack(delivery)
        except LeaseLost:
            assert reserve_one(broker).attempt == 2
        else:
            assert broker.counts(["q"])["q"] == QueueCounts()
            assert broker.reserve(["q"], timeout=0, lease=LEASE) == []

    def test_attempt_counts_deliveries(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="m1")
        first = reserve_one(broker)  # 1
        clock.advance(LEASE + 1)  # the lease runs out: a lost delivery still counts
        second = reserve_one(broker)  # 2
        broker.release(second)
        third = reserve_one(broker)  # 3
        broker.release(third, not_before=clock() + 5)
        clock.advance(5)
        fourth = reserve_one(broker)  # 4
        broker.dead_letter(fourth, reason="r")
        assert broker.dead_letters()[0].attempt == 4
        broker.retry_dead()
        fifth = reserve_one(broker)  # 5
        assert [d.attempt for d in (first, second, third, fourth, fifth)] == [1, 2, 3, 4, 5]
        assert len({d.lease_id for d in (first, second, third, fourth, fifth)}) == 5

    def test_leases_are_per_message(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="short")
        broker.publish("q", b"m", id="long")
        short = reserve_one(broker, lease=5)
        reserve_one(broker, lease=50)
        clock.advance(6)
        again = reserve_one(broker)
        assert (again.id, again.attempt) == ("short", 2)
        assert short.lease_id != again.lease_id
        assert broker.counts(["q"])["q"] == QueueCounts(leased=2)

    def test_ack_many_acks_every_delivery(self, broker: Broker, clock: ManualClock) -> None:
        # given leased messages on two queues
        for i in range(3):
            broker.publish("q", b"m", id=f"q-{i}")
            broker.publish("other", b"m", id=f"other-{i}")
        deliveries = broker.reserve(["q"], timeout=0, lease=LEASE, limit=3)
        deliveries += broker.reserve(["other"], timeout=0, lease=LEASE, limit=3)
        assert len(deliveries) == 6
        # when they are acked in one batch, then each is acked
        assert broker.ack_many(deliveries) == [True] * 6
        assert broker.counts(["q", "other"]) == {"q": QueueCounts(), "other": QueueCounts()}
        # and they never come back: not after their leases end, not when published again
        clock.advance(LEASE + 1)
        assert broker.reserve(["q", "other"], timeout=0, lease=LEASE, limit=10) == []
        assert broker.publish("q", b"m", id="q-0") is False
        # acking them again reports each lease lost, and never raises
        assert broker.ack_many(deliveries) == [False] * 6

    def test_ack_many_reports_a_stale_lease_and_acks_the_rest(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        # given a lease that expired and was taken by another reservation, and two current
        broker.publish("q", b"m", id="stale")
        stale = reserve_one(broker, lease=5)
        broker.publish("q", b"m", id="b")
        broker.publish("q", b"m", id="c")
        b, c = broker.reserve(["q"], timeout=0, lease=50, limit=2)
        clock.advance(6)
        current = reserve_one(broker)
        assert (current.id, current.attempt) == ("stale", 2)
        # when the batch holds the stale lease, then only that one is refused
        assert broker.ack_many([b, stale, c]) == [True, False, True]
        assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
        # and the current holder still owns its message
        broker.ack(current)
        assert broker.counts(["q"])["q"] == QueueCounts()

    def test_ack_many_settles_a_delivery_once_per_lease(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        delivery = reserve_one(broker)
        assert broker.ack_many([delivery, delivery]) == [True, False]

    def test_ack_many_of_nothing_is_an_empty_list(self, broker: Broker) -> None:
        broker.publish("q", b"m", id="m1")
        assert broker.ack_many([]) == []
        assert broker.counts(["q"])["q"] == QueueCounts(ready=1)

    def test_ack_many_acks_a_batch_larger_than_any_chunk(self, broker: Broker) -> None:
        count = 1100  # transports that chunk their round trips split this several times
        broker.publish_many(Outgoing("q", b"m", f"m{i}") for i in range(count))
        deliveries: list[Delivery] = []
        while batch := broker.reserve(["q"], timeout=0, lease=LEASE, limit=count):
            deliveries += batch
        assert len(deliveries) == count
        stale = deliveries[700]
        broker.ack(stale)
        assert broker.ack_many(deliveries) == [i != 700 for i in range(count)]
        assert broker.counts(["q"])["q"] == QueueCounts()


class TestLease(LeaseContract):
    pass
