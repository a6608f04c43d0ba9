"""A message whose lease ran out while it ran, and that this worker's own fetch thread
reserved again, keeps its outcome: the task runs once, whatever the two threads' order.

The window: the fetch thread's reserve has claimed the message in the broker but has not
handed it to the main loop yet, when the main loop finds the finished task's lease lost.
The test holds the fetch thread in exactly that window, with a clock it moves by hand.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pluq

LEASE = 30.0
WAIT = 60.0  # seconds before a step that never comes fails the test


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class LogWaiter(logging.Handler):
    """Sets `seen` once a record whose message contains `text` is logged."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


started, finish = threading.Event(), threading.Event()
runs: list[int] = []


def hold(x: int) -> int:
    """The task: it runs until the test lets it finish (the threads pool shares this
    module's events)."""
    runs.append(x)
    started.set()
    assert finish.wait(WAIT)
    return x * 2


@pytest.fixture(params=["memory://race-{uid}", "sqlite:///{tmp}/race.db"], ids=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    template: str = request.param
    return template.format(uid=uuid.uuid4().hex, tmp=tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(url: str, clock: Clock) -> Iterator[pluq.App]:
    started.clear()
    finish.clear()
    runs.clear()
    app = pluq.App(url, secret="race", clock=clock)
    yield app
    app.close()


@pytest.mark.parametrize("then", ["it lands", "the worker stops"])
def test_a_lease_lost_to_this_worker_s_own_reserve_in_flight_keeps_the_outcome(
    app: pluq.App, clock: Clock, then: str
) -> None:
    slow = app.task(hold)
    handle = slow.delay(21)

    # The fetch thread stops between the broker's claim and the main loop's inbox.
    claimed, let_go = threading.Event(), threading.Event()
    broker: Any = app.broker
    reserve = broker.reserve

    def held_reserve(*args: Any, **kwargs: Any) -> list[Any]:
        got = reserve(*args, **kwargs)
        if any(d.id == handle.id and d.attempt == 2 for d in got):
            claimed.set()
            assert let_go.wait(WAIT)
        return got

    broker.reserve = held_reserve
    kept_back = LogWaiter("its outcome waits for that reserve")
    stopping = LogWaiter("warm shutdown")
    logger = logging.getLogger("pluq")
    level = logger.level
    logger.setLevel(logging.INFO)  # "warm shutdown" is an INFO line
    for waiter in (kept_back, stopping):
        logger.addHandler(waiter)
    worker = app.Worker(concurrency=1, pool="threads", lease=LEASE, poll=0.05)
    stopper = threading.Thread(target=worker.stop)
    try:
        worker.start()
        assert started.wait(WAIT)
        clock.now += LEASE + 1  # the lease ran out: the fetch thread claims it again
        assert claimed.wait(WAIT)
        finish.set()  # the task ends; its lease is found lost
        assert kept_back.seen.wait(WAIT), "the outcome was not kept back for the reserve"
        if then == "the worker stops":
            # Stopping hands back what the fetch thread brings: not this message.
            stopper.start()
            assert stopping.seen.wait(WAIT)
        let_go.set()
        assert handle.get(timeout=WAIT) == 42
        assert handle.state == "SUCCESS"
    finally:
        let_go.set()
        finish.set()
        if stopper.is_alive() or not stopper.ident:
            stopper = threading.Thread(target=worker.stop)
            stopper.start()
        stopper.join(WAIT)
        for waiter in (kept_back, stopping):
            logger.removeHandler(waiter)
        logger.setLevel(level)
        broker.reserve = reserve
    assert not stopper.is_alive()
    assert worker.exit_code == 0
    assert runs == [21]
    assert app.stats().queues["default"].total == 0
