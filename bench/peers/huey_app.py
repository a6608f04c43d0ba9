"""Huey's bench tasks: SqliteHuey on $BENCH_HUEY_SQLITE when set, else RedisHuey."""

# mypy: allow-untyped-decorators, allow-untyped-calls

from __future__ import annotations

import os
import time

from huey import RedisHuey, SqliteHuey  # type: ignore[import-not-found, import-untyped, unused-ignore]

_SQLITE = os.environ.get("BENCH_HUEY_SQLITE")

if _SQLITE:
    huey = SqliteHuey("bench", filename=_SQLITE)
else:
    huey = RedisHuey("bench", url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6380/0"))


@huey.task()
def noop(x: int) -> int:
    return x


@huey.task()
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@huey.task()
def stamp(x: int) -> float:
    return time.time()
