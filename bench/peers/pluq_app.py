"""pluq's bench tasks; the broker and backend URL come from $BENCH_PLUQ_URL.

The app signs its messages (a secret), as pluq asks on a network transport, and keeps the
default serializer (cloudpickle).
"""

from __future__ import annotations

import os
import time

import pluq

SECRET = "pluq-bench-secret"

app = pluq.App(os.environ.get("BENCH_PLUQ_URL", "memory://bench"), secret=SECRET)


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
