"""Producer side: idempotent publish, FIFO, delays in the broker, publish_many, cancel, options."""

from __future__ import annotations

import os

import pytest

from pluq.backend import SUCCESS, TaskRecord
from pluq.broker import Broker, Outgoing, QueueCounts
from pluq.errors import ConfigurationError
from pluq.registry import open_backend, open_broker

from ._clock import ManualClock
from ._kit import ContractBase, with_options, with_prefix

LEASE = 60.0


def drain(broker: Broker, queues: list[str]) -> list[str]:
    """Reserve (timeout=0) and ack until nothing is ready; the ids in delivery order."""
    ids: list[str] = []
    while deliveries := broker.reserve(queues, timeout=0, lease=LEASE):
        for delivery in deliveries:
            ids.append(delivery.id)
            broker.ack(delivery)
    return ids


class PublishContract(ContractBase):
    def test_publish_is_idempotent_on_id(self, broker: Broker) -> None:
        # given a published message
        assert broker.publish("q", b"first", id="m1") is True
        # when the same id is published again, on any queue, with any bytes
        again = broker.publish("q", b"second", id="m1")
        elsewhere = broker.publish("other", b"third", id="m1")
        # then nothing more is queued and the original message is the one delivered
        assert (again, elsewhere) == (False, False)
        assert broker.counts(["q", "other"])["q"].ready == 1
        assert broker.counts(["q", "other"])["other"].total == 0
        (delivery,) = broker.reserve(["q", "other"], timeout=0, lease=LEASE)
        assert (delivery.id, delivery.queue, delivery.message) == ("m1", "q", b"first")

    def test_publish_is_idempotent_while_delayed_leased_or_dead(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        broker.publish("q", b"later", id="delayed", not_before=clock() + 60)
        broker.publish("q", b"m", id="leased")
        broker.publish("q", b"m", id="dead")
        (leased,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        (dead,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        broker.dead_letter(dead, reason="test")
        assert [broker.publish("q", b"x", id=i) for i in ("delayed", "leased", "dead")] == [
            False,
            False,
            False,
        ]
        assert broker.counts(["q"])["q"] == QueueCounts(ready=0, delayed=1, leased=1, dead=1)
        assert leased.id == "leased"

    def test_publish_is_idempotent_after_ack_within_dedupe_window(
        self, broker_url: str, clock: ManualClock
    ) -> None:
        # given a broker whose acknowledged ids stay known for 10 s
        with open_broker(with_options(broker_url, dedupe_window="10"), clock=clock) as broker:
            broker.publish("q", b"m", id="m1")
            (delivery,) = broker.reserve(["q"], timeout=0, lease=LEASE)
            broker.ack(delivery)
            # when the id is published again inside the window, then nothing is queued
            clock.advance(9)
            assert broker.publish("q", b"m", id="m1") is False
            assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
            # and once the window has passed, the id may be used again
            clock.advance(2)
            assert broker.publish("q", b"again", id="m1") is True
            (delivery,) = broker.reserve(["q"], timeout=0, lease=LEASE)
            assert (delivery.message, delivery.attempt) == (b"again", 1)

    def test_default_dedupe_window_is_300_seconds(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="m1")
        (delivery,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        broker.ack(delivery)
        clock.advance(299)
        assert broker.publish("q", b"m", id="m1") is False
        clock.advance(2)
        assert broker.publish("q", b"m", id="m1") is True

    def test_fifo_among_ready(self, broker: Broker) -> None:
        ids = [f"m{i:02}" for i in range(25)]
        for i in ids:
            broker.publish("q", i.encode(), id=i)
        got: list[str] = []
        while deliveries := broker.reserve(["q"], timeout=0, lease=LEASE):
            got.extend(d.id for d in deliveries)
        assert got == ids

    def test_fifo_among_ready_with_limit(self, broker: Broker) -> None:
        ids = [f"m{i:02}" for i in range(25)]
        for i in ids:
            broker.publish("q", i.encode(), id=i)
        got: list[str] = []
        while deliveries := broker.reserve(["q"], timeout=0, lease=LEASE, limit=7):
            assert len(deliveries) <= 7
            got.extend(d.id for d in deliveries)
        assert got == ids

    def test_delayed_wait_in_broker(self, broker: Broker, clock: ManualClock) -> None:
        # given a message that may not run for 10 s
        broker.publish("q", b"later", id="m1", not_before=clock() + 10)
        # then it is not reservable before then, and nobody holds it meanwhile
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        counts = broker.counts(["q"])["q"]
        assert (counts.ready, counts.delayed, counts.leased) == (0, 1, 0)
        clock.advance(9.5)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        # when the clock passes not_before, then it is ready: a first attempt
        clock.advance(0.6)
        assert broker.counts(["q"])["q"].ready == 1
        (delivery,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        assert (delivery.id, delivery.message, delivery.attempt) == ("m1", b"later", 1)

    def test_not_before_in_the_past_is_ready_at_once(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        broker.publish("q", b"m", id="m1", not_before=clock() - 5)
        broker.publish("q", b"m", id="m2", not_before=clock())
        assert broker.counts(["q"])["q"].delayed == 0
        assert drain(broker, ["q"]) == ["m1", "m2"]

    def test_delayed_messages_become_ready_when_each_is_due(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        broker.publish("q", b"m", id="late", not_before=clock() + 20)
        broker.publish("q", b"m", id="early", not_before=clock() + 10)
        broker.publish("q", b"m", id="now")
        assert drain(broker, ["q"]) == ["now"]
        clock.advance(10)
        assert drain(broker, ["q"]) == ["early"]
        clock.advance(10)
        assert drain(broker, ["q"]) == ["late"]

    def test_message_bytes_roundtrip_exactly(self, broker: Broker) -> None:
        payloads = {
            "empty": b"",
            "all-bytes": bytes(range(256)) * 4,
            "nul-and-newlines": b"\x00\n\r\n\x00{}[]\"'",
            "one-mib": os.urandom(1 << 20),
        }
        for id, payload in payloads.items():
            broker.publish("q", payload, id=id)
        got = {}
        while deliveries := broker.reserve(["q"], timeout=0, lease=LEASE):
            got.update({d.id: d.message for d in deliveries})
        assert got == payloads

    def test_ids_are_opaque_strings(self, broker: Broker) -> None:
        ids = ["with/slash", "with space", "ünïcode-✓", "dots..", "a:b|c*d?e", "x" * 200]
        for i in ids:
            assert broker.publish("q", i.encode(), id=i) is True
        assert all(broker.publish("q", b"dup", id=i) is False for i in ids)
        assert drain(broker, ["q"]) == ids

    def test_queue_names_are_independent(self, broker: Broker) -> None:
        queues = ["default", "billing.high", "a:b", "q-1_x"]
        for name in queues:
            broker.publish(name, name.encode(), id=f"id-{name}")
        for name in queues:
            (delivery,) = broker.reserve([name], timeout=0, lease=LEASE)
            assert (delivery.queue, delivery.message) == (name, name.encode())

    def test_publish_many_returns_one_bool_per_message_and_keeps_order(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        broker.publish("q", b"old", id="known")
        results = broker.publish_many(
            [
                Outgoing("q", b"1", "a"),
                Outgoing("q", b"x", "known"),
                Outgoing("other", b"2", "b"),
                Outgoing("q", b"3", "c"),
                Outgoing("q", b"dup", "a"),
                Outgoing("q", b"4", "d", not_before=clock() + 30),
            ]
        )
        assert results == [True, False, True, True, False, True]
        assert drain(broker, ["q"]) == ["known", "a", "c"]
        assert drain(broker, ["other"]) == ["b"]
        clock.advance(30)
        assert drain(broker, ["q"]) == ["d"]

    def test_publish_many_of_nothing(self, broker: Broker) -> None:
        assert broker.publish_many([]) == []

    def test_cancel_removes_a_waiting_message(self, broker: Broker, clock: ManualClock) -> None:
        # The base class's `cancel` says False for every id; a transport that overrides it
        # must really cancel ready and delayed messages.
        broker.publish("q", b"m", id="ready")
        broker.publish("q", b"m", id="delayed", not_before=clock() + 10)
        broker.publish("q", b"m", id="kept")
        if type(broker).cancel is Broker.cancel:
            assert broker.cancel("ready") is False
            assert broker.counts(["q"])["q"].ready == 2
            return
        assert broker.cancel("ready") is True
        assert broker.cancel("delayed") is True
        assert broker.cancel("ready") is False
        # the ids stay known to publish, and the rest of the queue is untouched
        assert broker.publish("q", b"m", id="ready") is False
        clock.advance(10)
        assert broker.counts(["q"])["q"].ready == 1
        assert drain(broker, ["q"]) == ["kept"]

    def test_cancel_says_false_for_unknown_leased_dead_and_done(self, broker: Broker) -> None:
        for i in ("leased", "dead", "done"):
            broker.publish("q", b"m", id=i)
        leased, dead, done = (broker.reserve(["q"], timeout=0, lease=LEASE)[0] for _ in range(3))
        broker.dead_letter(dead, reason="test")
        broker.ack(done)
        assert [broker.cancel(i) for i in ("unknown", "leased", "dead", "done")] == [False] * 4
        broker.ack(leased)  # the leased message was not disturbed
        assert broker.counts(["q"])["q"].dead == 1

    def test_unknown_url_options_are_rejected(self, broker_url: str, backend_url: str) -> None:
        with pytest.raises(ConfigurationError):
            open_broker(with_options(broker_url, no_such_option="1"))
        with pytest.raises(ConfigurationError):
            open_backend(with_options(backend_url, no_such_option="1"))

    def test_same_url_opens_the_same_queues(self, broker: Broker, broker_url: str) -> None:
        broker.publish("q", b"m", id="m1")
        with open_broker(broker_url) as other:
            assert broker.publish("q", b"m", id="m2") is True
            assert other.publish("q", b"m", id="m1") is False
            assert other.counts(["q"])["q"].ready == 2

    def test_prefix_isolates_tenants(
        self, broker_url: str, backend_url: str, clock: ManualClock
    ) -> None:
        # given two tenants of one URL that differ only by prefix
        with (
            open_broker(with_prefix(broker_url, "a-"), clock=clock) as a,
            open_broker(with_prefix(broker_url, "b-"), clock=clock) as b,
            open_backend(with_prefix(backend_url, "a-"), clock=clock) as results_a,
            open_backend(with_prefix(backend_url, "b-"), clock=clock) as results_b,
        ):
            # when each publishes under the same id and queue
            assert a.publish("q", b"from a", id="m1") is True
            assert b.publish("q", b"from b", id="m1") is True
            results_a.put(TaskRecord(id="t1", state=SUCCESS, result="a"), expires=60)
            results_a.incr("counter", expires=60)
            # then neither sees the other's messages, records or counters
            (delivery,) = a.reserve(["q"], timeout=0, lease=LEASE)
            assert delivery.message == b"from a"
            assert a.reserve(["q"], timeout=0, lease=LEASE) == []
            assert b.counts(["q"])["q"].ready == 1
            assert results_b.get("t1") is None
            assert results_b.incr("counter", expires=60) == 1


class TestPublish(PublishContract):
    pass
