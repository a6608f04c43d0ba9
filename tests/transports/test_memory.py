"""memory:// specifics; the general Broker/ResultBackend behaviour is tested by the kit."""

from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest

from pluq.backend import SUCCESS, TaskRecord
from pluq.broker import Broker
from pluq.errors import ConfigurationError
from pluq.registry import open_backend, open_broker, transport_for


def _name() -> str:
    return f"test-{uuid.uuid4().hex}"


def test_same_name_shares_state() -> None:
    name = _name()
    first, second = open_broker(f"memory://{name}"), open_broker(f"memory://{name}")
    assert first.publish("q", b"m", id="1") is True
    assert [d.id for d in second.reserve(["q"], timeout=0, lease=30)] == ["1"]


def test_names_isolate_state() -> None:
    first, second = open_broker(f"memory://{_name()}"), open_broker(f"memory://{_name()}")
    first.publish("q", b"m", id="1")
    assert second.reserve(["q"], timeout=0, lease=30) == []
    assert second.publish("q", b"m", id="1") is True


def test_prefix_isolates_state_within_a_name() -> None:
    name = _name()
    plain, tenant = open_broker(f"memory://{name}"), open_broker(f"memory://{name}?prefix=t:")
    plain.publish("q", b"m", id="1")
    assert tenant.counts() == {}
    assert tenant.publish("q", b"m", id="1") is True


def test_anonymous_url_is_fresh_each_time() -> None:
    first, second = open_broker("memory://"), open_broker("memory://")
    first.publish("q", b"m", id="1")
    assert second.counts() == {}
    assert first.counts()["q"].ready == 1


def test_names_are_case_sensitive() -> None:
    name = _name()
    lower, upper = open_broker(f"memory://{name}"), open_broker(f"memory://{name.upper()}")
    lower.publish("q", b"m", id="1")
    assert upper.counts() == {}


def test_broker_and_backend_of_one_name_are_separate() -> None:
    name = _name()
    broker, backend = open_broker(f"memory://{name}"), open_backend(f"memory://{name}")
    broker.publish("q", b"m", id="1")
    assert backend.get("1") is None
    assert open_backend(f"memory://{name}").incr("k", expires=60) == 1
    assert backend.incr("k", expires=60) == 2


def test_capabilities_say_not_shared_and_not_durable() -> None:
    caps = transport_for("memory://").capabilities
    assert not caps.shared_between_processes
    assert not caps.shared_between_hosts
    assert not caps.durable


@pytest.mark.parametrize(
    "url", ["memory://x?colour=red", "memory://x?dedupe_window=-1", "memory://x/path"]
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_broker(url)
    with pytest.raises(ConfigurationError):
        open_backend(url)


def test_dedupe_window_zero_forgets_acked_ids() -> None:
    broker = open_broker("memory://?dedupe_window=0")
    broker.publish("q", b"m", id="1")
    (delivery,) = broker.reserve(["q"], timeout=0, lease=30)
    broker.ack(delivery)
    assert broker.publish("q", b"m", id="1") is True


def test_stored_record_is_a_copy() -> None:
    backend = open_backend("memory://")
    record = TaskRecord(id="t", state=SUCCESS, meta={"k": [1]})
    backend.put(record, expires=60)
    record.meta["k"].append(2)
    got = backend.get("t")
    assert got is not None
    assert got.meta == {"k": [1]}


def test_reserve_wakes_a_waiting_thread_on_publish() -> None:
    broker = open_broker("memory://")
    started = threading.Event()
    got: list[str] = []

    def consume() -> None:
        started.set()
        got.extend(d.id for d in broker.reserve(["q"], timeout=30, lease=30))

    thread = threading.Thread(target=consume)
    thread.start()
    assert started.wait(10)
    broker.publish("q", b"m", id="1")
    thread.join(10)
    assert got == ["1"]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_fresh_locks() -> None:
    # given a thread that holds the state's lock while the process forks
    broker = open_broker(f"memory://{_name()}")
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with broker._state.cond:  # type: ignore[attr-defined]
            holding.set()
            done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    context = multiprocessing.get_context("fork")
    try:
        assert holding.wait(10)
        child = context.Process(target=_publish_in_child, args=(broker,))
        child.start()
        # then the child can still use the broker (the lock is not held there)
        child.join(30)
        if child.is_alive():
            child.kill()
            child.join()
    finally:
        done.set()
        thread.join(10)
    assert child.exitcode == 0
    assert broker.counts() == {}  # and nothing it did reached the parent


def _publish_in_child(broker: Broker) -> None:
    broker.publish("q", b"m", id="1")
    assert broker.counts()["q"].ready == 1
