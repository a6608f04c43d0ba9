"""Producer and consumer processes for the broker-level load test: top-level, picklable.

Each opens the broker from its URL (never an object from the parent) and puts one result on
`out`: ("ok", payload) or ("error", traceback).
"""

from __future__ import annotations

import random
import time
import traceback
from typing import Any

from pluq.registry import open_broker

START_TIMEOUT = 120.0


def produce(out: Any, go: Any, url: str, prefix: str, count: int) -> None:
    """Publish `count` messages one by one, ids `<prefix>-<n>`."""
    try:
        with open_broker(url) as broker:
            broker.counts(["q"])  # open before the start line
            go.wait(START_TIMEOUT)
            refused = 0
            for n in range(count):
                message_id = f"{prefix}-{n:05}"
                if not broker.publish("q", message_id.encode(), id=message_id):
                    refused += 1
            out.put(("ok", {"refused": refused}))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def consume(out: Any, go: Any, produced: Any, url: str, seed: int) -> None:
    """Reserve (1 to 4 at a time, long leases) and ack until the producers are done and
    the queue is empty; report every (id, attempt) claimed."""
    rng = random.Random(seed)
    claimed: list[tuple[str, int]] = []
    try:
        with open_broker(url) as broker:
            broker.counts(["q"])
            go.wait(START_TIMEOUT)
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                finished = produced.is_set()
                got = broker.reserve(["q"], timeout=0.05, lease=300.0, limit=rng.randint(1, 4))
                for delivery in got:
                    claimed.append((delivery.id, delivery.attempt))
                    if delivery.message != delivery.id.encode():
                        raise AssertionError(f"{delivery.id} came with {delivery.message!r}")
                    broker.ack(delivery)
                if not got and finished:
                    break
            out.put(("ok", {"claimed": claimed}))
    except BaseException:
        out.put(("error", traceback.format_exc()))
