"""Dramatiq's bench actors: Redis broker, results in Redis through the Results middleware."""

# mypy: allow-untyped-decorators, allow-untyped-calls

from __future__ import annotations

import os
import time

import dramatiq  # type: ignore[import-not-found, import-untyped, unused-ignore]
from dramatiq.brokers.redis import RedisBroker  # type: ignore[import-not-found, import-untyped, unused-ignore]
from dramatiq.results import Results  # type: ignore[import-not-found, import-untyped, unused-ignore]
from dramatiq.results.backends import RedisBackend  # type: ignore[import-not-found, import-untyped, unused-ignore]

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6380/0")

backend = RedisBackend(url=URL)
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True)
def noop(x: int) -> int:
    return x


@dramatiq.actor(store_results=True)
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@dramatiq.actor(store_results=True)
def stamp(x: int) -> float:
    return time.time()
