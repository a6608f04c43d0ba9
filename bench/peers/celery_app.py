"""Celery's bench tasks: Redis broker and Redis result backend from $BENCH_REDIS_URL."""

# mypy: allow-untyped-decorators, allow-untyped-calls

from __future__ import annotations

import os
import time

from celery import Celery  # type: ignore[import-not-found, import-untyped, unused-ignore]

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6380/0")

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_ignore_result=False,
)


@app.task
def noop(x: int) -> int:
    return x


@app.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def stamp(x: int) -> float:
    return time.time()
