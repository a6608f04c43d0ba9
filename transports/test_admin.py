"""Admin: counts, purge, dead letters (list, retry, purge) and worker heartbeats."""

from __future__ import annotations

import pytest

from pluq.broker import Broker, QueueCounts, WorkerInfo

from ._clock import ManualClock
from ._kit import ContractBase

LEASE = 60.0


def dead_letter(broker: Broker, queue: str, id: str, reason: str = "test") -> None:
    broker.publish(queue, id.encode(), id=id)
    (delivery,) = broker.reserve([queue], timeout=0, lease=LEASE)
    assert delivery.id == id, "dead_letter() expects an otherwise empty queue"
    broker.dead_letter(delivery, reason=reason)


def worker(id: str = "w1", **changes: object) -> WorkerInfo:
    fields: dict[str, object] = {
        "id": id,
        "hostname": "host-a",
        "pid": 4242,
        "queues": ("default", "high"),
        "concurrency": 4,
        "pool": "processes",
        "started_at": 1_000_000.0,
        "heartbeat_at": 1_000_000.0,
        "processed": 17,
        "extra": {"version": "0.1.0", "tags": ["a", "b"], "nested": {"k": None}},
    }
    fields.update(changes)
    return WorkerInfo(**fields)  # type: ignore[arg-type]


class AdminContract(ContractBase):
    def test_counts_ready_delayed_leased_dead(self, broker: Broker, clock: ManualClock) -> None:
        dead_letter(broker, "q", "dead")
        for i in range(4):
            broker.publish("q", b"m", id=f"ready{i}")
        for i in range(2):
            broker.publish("q", b"m", id=f"delayed{i}", not_before=clock() + 60)
        broker.reserve(["q"], timeout=0, lease=LEASE)
        broker.publish("other", b"m", id="elsewhere")
        counts = broker.counts(["q", "other"])
        assert counts["q"] == QueueCounts(ready=3, delayed=2, leased=1, dead=1)
        assert counts["q"]["ready"] == counts["q"].ready == 3
        assert (counts["q"].running, counts["q"].total) == (1, 7)
        assert counts["other"] == QueueCounts(ready=1)

    def test_counts_of_every_known_queue(self, broker: Broker) -> None:
        broker.publish("a", b"m", id="m1")
        broker.publish("b", b"m", id="m2")
        counts = broker.counts()
        assert {"a", "b"} <= set(counts)
        assert (counts["a"], counts["b"]) == (QueueCounts(ready=1), QueueCounts(ready=1))

    def test_counts_of_an_unknown_queue_are_zero(self, broker: Broker) -> None:
        assert broker.counts(["never-used"]) == {"never-used": QueueCounts()}

    def test_counts_expired_leases_as_ready(self, broker: Broker, clock: ManualClock) -> None:
        broker.publish("q", b"m", id="m1")
        broker.reserve(["q"], timeout=0, lease=5)
        assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
        clock.advance(6)
        assert broker.counts(["q"])["q"] == QueueCounts(ready=1)

    def test_purge_removes_ready_and_delayed_only(self, broker: Broker, clock: ManualClock) -> None:
        dead_letter(broker, "q", "dead")
        broker.publish("q", b"m", id="leased")
        broker.reserve(["q"], timeout=0, lease=3600)
        for i in range(3):
            broker.publish("q", b"m", id=f"ready{i}")
        for i in range(2):
            broker.publish("q", b"m", id=f"delayed{i}", not_before=clock() + 60)
        broker.publish("other", b"m", id="elsewhere")
        assert broker.purge("q") == 5
        assert broker.counts(["q", "other"]) == {
            "q": QueueCounts(leased=1, dead=1),
            "other": QueueCounts(ready=1),
        }
        clock.advance(61)
        assert broker.reserve(["q"], timeout=0, lease=LEASE) == []
        assert broker.purge("q") == 0
        assert broker.purge("never-used") == 0

    def test_dead_letters_are_listed_oldest_first(self, broker: Broker, clock: ManualClock) -> None:
        dead_letter(broker, "a", "x", reason="first")
        clock.advance(1)
        dead_letter(broker, "b", "y", reason="second")
        clock.advance(1)
        dead_letter(broker, "a", "z", reason="third")
        letters = broker.dead_letters()
        assert [(d.id, d.queue, d.reason) for d in letters] == [
            ("x", "a", "first"),
            ("y", "b", "second"),
            ("z", "a", "third"),
        ]
        assert [d.dead_at for d in letters] == pytest.approx([clock() - 2, clock() - 1, clock()])
        assert [d.message for d in letters] == [b"x", b"y", b"z"]
        assert letters[0]["reason"] == "first"

    def test_dead_letters_filter_by_queue(self, broker: Broker) -> None:
        dead_letter(broker, "a", "x")
        dead_letter(broker, "b", "y")
        dead_letter(broker, "a", "z")
        assert [d.id for d in broker.dead_letters("a")] == ["x", "z"]
        assert [d.id for d in broker.dead_letters("b")] == ["y"]
        assert broker.dead_letters("never-used") == []

    def test_retry_dead_puts_every_dead_message_back(self, broker: Broker) -> None:
        dead_letter(broker, "a", "x")
        dead_letter(broker, "b", "y")
        assert broker.retry_dead() == 2
        assert broker.dead_letters() == []
        counts = broker.counts(["a", "b"])
        assert (counts["a"], counts["b"]) == (QueueCounts(ready=1), QueueCounts(ready=1))
        (x,) = broker.reserve(["a"], timeout=0, lease=LEASE)
        assert (x.id, x.message, x.attempt) == ("x", b"x", 2)  # attempt kept, then counted
        assert broker.retry_dead() == 0

    def test_retry_dead_by_ids_ignores_unknown_ids(self, broker: Broker) -> None:
        dead_letter(broker, "q", "x")
        dead_letter(broker, "q", "y")
        assert broker.retry_dead(["y", "unknown"]) == 1
        assert [d.id for d in broker.dead_letters()] == ["x"]
        (y,) = broker.reserve(["q"], timeout=0, lease=LEASE)
        assert (y.id, y.attempt) == ("y", 2)
        assert broker.retry_dead([]) == 0

    def test_purge_dead_deletes_dead_messages(self, broker: Broker) -> None:
        for id in ("x", "y", "z"):
            dead_letter(broker, "q", id)
        assert broker.purge_dead(["y", "unknown"]) == 1
        assert [d.id for d in broker.dead_letters()] == ["x", "z"]
        assert broker.purge_dead() == 2
        assert broker.dead_letters() == []
        assert broker.counts(["q"])["q"] == QueueCounts()
        assert broker.purge_dead() == 0

    def test_heartbeat_registers_a_worker_until_its_ttl(
        self, broker: Broker, clock: ManualClock
    ) -> None:
        info = worker("w1")
        broker.heartbeat(info, ttl=10)
        assert broker.workers() == [info]
        assert broker.workers()[0]["hostname"] == "host-a"
        clock.advance(9)
        assert broker.workers() == [info]
        clock.advance(2)
        assert broker.workers() == []

    def test_heartbeat_refreshes_the_registration(self, broker: Broker, clock: ManualClock) -> None:
        broker.heartbeat(worker("w1"), ttl=10)
        clock.advance(8)
        newer = worker("w1", processed=99, heartbeat_at=clock())
        broker.heartbeat(newer, ttl=10)
        clock.advance(8)
        assert broker.workers() == [newer]

    def test_workers_lists_each_live_worker(self, broker: Broker, clock: ManualClock) -> None:
        broker.heartbeat(worker("w1"), ttl=10)
        broker.heartbeat(worker("w2", hostname="host-b", queues=()), ttl=30)
        assert sorted(w.id for w in broker.workers()) == ["w1", "w2"]
        clock.advance(11)
        assert [w.id for w in broker.workers()] == ["w2"]
        assert broker.workers()[0] == worker("w2", hostname="host-b", queues=())

    def test_unregister_forgets_a_worker_at_once(self, broker: Broker) -> None:
        broker.heartbeat(worker("w1"), ttl=10)
        broker.heartbeat(worker("w2"), ttl=10)
        broker.unregister("w1")
        assert [w.id for w in broker.workers()] == ["w2"]
        broker.unregister("never-registered")
        assert [w.id for w in broker.workers()] == ["w2"]


class TestAdmin(AdminContract):
    pass
