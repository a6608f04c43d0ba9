"""Several consumers at once: threads, processes, a SIGKILLed holder, a fork."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

from pluq.broker import Broker, Capabilities, Delivery, Outgoing, QueueCounts
from pluq.errors import LeaseLost

from . import _procs
from ._kit import CHILD_TIMEOUT, Children, ContractBase, requires

MESSAGES = 2000
CONSUMERS = 4


class ConcurrencyContract(ContractBase):
    def test_threads_sharing_one_broker_get_each_message_once(self, broker: Broker) -> None:
        # given 400 messages and one broker instance shared by five threads: four reserve,
        # one acknowledges what the others reserved (as the worker does)
        ids = [f"m{i:03}" for i in range(400)]
        assert all(broker.publish_many(Outgoing("q", i.encode(), i) for i in ids))
        handed: queue.Queue[Delivery | None] = queue.Queue()
        errors: list[BaseException] = []
        reserved: list[str] = []
        lock = threading.Lock()

        def reserve() -> None:
            try:
                while deliveries := broker.reserve(["q"], timeout=0, lease=600, limit=3):
                    with lock:
                        reserved.extend(d.id for d in deliveries)
                    for delivery in deliveries:
                        handed.put(delivery)
            except BaseException as exc:
                errors.append(exc)

        def ack() -> None:
            try:
                while (delivery := handed.get()) is not None:
                    broker.ack(delivery)
            except BaseException as exc:
                errors.append(exc)

        acker = threading.Thread(target=ack)
        reservers = [threading.Thread(target=reserve) for _ in range(4)]
        for thread in [acker, *reservers]:
            thread.start()
        for thread in reservers:
            thread.join(60)
        handed.put(None)
        acker.join(60)
        # then every message was reserved exactly once and acknowledged
        assert errors == []
        assert sorted(reserved) == ids
        assert broker.counts(["q"])["q"] == QueueCounts()

    @requires("shared_between_processes")
    def test_four_processes_two_thousand_messages_exactly_once(
        self, live_broker: Broker, broker_url: str, report: Callable[[str, float, str], None]
    ) -> None:
        # given 2,000 messages and four consumer processes with long leases (two reserve
        # one message at a time, two ten at a time)
        ids = [f"m{i:04}" for i in range(MESSAGES)]
        for start in range(0, MESSAGES, 250):
            batch = [Outgoing("q", i.encode(), i) for i in ids[start : start + 250]]
            assert all(live_broker.publish_many(batch))
        with Children() as children:
            readies = [children.event() for _ in range(CONSUMERS)]
            go = children.event()
            for n, ready in enumerate(readies):
                limit = 1 if n % 2 == 0 else 10
                args = (ready, go, broker_url, "q", limit, 600.0, 2.0)
                children.start(_procs.consume_all, *args)
            for ready in readies:
                children.wait(ready, "opened the broker")
            # when they all start at once and consume until the queue is empty
            go.set()
            results = [children.get(timeout=180) for _ in range(CONSUMERS)]
            children.join()
        # then every message was delivered exactly once, on its first attempt
        delivered = Counter(i for result in results for i in result["ids"])
        assert sorted(i for i, n in delivered.items() if n > 1) == []
        assert sorted(set(ids) - set(delivered)) == []
        assert {a for result in results for a in result["attempts"]} == {1}
        assert live_broker.counts(["q"])["q"] == QueueCounts()
        seconds = max(result["seconds"] for result in results)
        report("four_consumers_throughput", MESSAGES / max(seconds, 1e-6), "messages/s")

    @requires("shared_between_processes")
    def test_leases_of_a_killed_consumer_come_back(
        self, live_broker: Broker, broker_url: str, report: Callable[[str, float, str], None]
    ) -> None:
        ids = ["m0", "m1", "m2"]
        for i in ids:
            live_broker.publish("q", i.encode(), id=i)
        # given a consumer process holding three messages on a short lease, SIGKILLed
        with Children() as children:
            holder = children.start(_procs.hold_leases, broker_url, "q", 3, 0.5)
            held = [Delivery(**fields) for fields in children.get()["deliveries"]]
            assert holder.pid is not None
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(CHILD_TIMEOUT)
            assert holder.exitcode == -signal.SIGKILL
        assert sorted(d.id for d in held) == ids
        # when the leases run out, then a blocked reserve gets every message back
        recovered: dict[str, Delivery] = {}
        give_up = time.monotonic() + 30
        while len(recovered) < len(ids) and time.monotonic() < give_up:
            for delivery in live_broker.reserve(
                ["q"], timeout=give_up - time.monotonic(), lease=60, limit=3
            ):
                recovered[delivery.id] = delivery
        late = time.time() - max(d.lease_deadline for d in held)
        report("redelivery_after_lease_expiry_ms", late * 1000, "ms")
        assert sorted(recovered) == ids
        assert [recovered[i].attempt for i in ids] == [2, 2, 2]
        # and the killed consumer's leases are stale
        with pytest.raises(LeaseLost):
            live_broker.ack(held[0])
        with pytest.raises(LeaseLost):
            live_broker.release(held[1])
        # ack removes
        acked, released, dead = (recovered[i] for i in ids)
        live_broker.ack(acked)
        # release with a delay waits in the broker, then comes back (third attempt)
        not_before = time.time() + 1.0
        live_broker.release(released, not_before=not_before)
        assert live_broker.counts(["q"])["q"].delayed == 1
        (again,) = live_broker.reserve(["q"], timeout=30, lease=60)
        assert time.time() >= not_before - 0.05
        assert (again.id, again.attempt) == ("m1", 3)
        live_broker.ack(again)
        # extend renews; dead_letter keeps the reason
        extended = live_broker.extend(dead, lease=120)
        assert extended.lease_id == dead.lease_id
        assert extended.lease_deadline > dead.lease_deadline
        live_broker.dead_letter(extended, reason="consumer killed; giving up")
        (letter,) = live_broker.dead_letters("q")
        assert (letter.id, letter.reason, letter.attempt) == ("m2", "consumer killed; giving up", 2)
        assert live_broker.counts(["q"])["q"] == QueueCounts(dead=1)

    @pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists on POSIX only")
    @pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
    def test_broker_survives_fork(self, live_broker: Broker, capabilities: Capabilities) -> None:
        # given a broker in use (connections open, a message leased)
        live_broker.publish("q", b"m", id="before-fork")
        (delivery,) = live_broker.reserve(["q"], timeout=0, lease=60)
        # when a forked child uses the very same instance
        context = multiprocessing.get_context("fork")
        results = context.Queue()
        child = context.Process(
            target=_procs.use_inherited_broker, args=(results, live_broker, "q")
        )
        child.start()
        try:
            kind, payload = results.get(timeout=CHILD_TIMEOUT)
            child.join(CHILD_TIMEOUT)
        finally:
            if child.is_alive():
                child.kill()
                child.join()
            results.close()
            results.join_thread()
        assert kind == "result", payload
        assert child.exitcode == 0
        assert payload["published"] is True
        # then the parent's instance still works, and sees the child's message if shared
        live_broker.ack(delivery)
        shared = capabilities.shared_between_processes
        assert live_broker.counts(["q"])["q"] == QueueCounts(ready=1 if shared else 0)
        assert payload["ready"] == 1


class TestConcurrency(ConcurrencyContract):
    pass
