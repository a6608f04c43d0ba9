"""RQ's bench tasks: plain functions, queued by their import path."""

from __future__ import annotations

import time


def noop(x: int) -> int:
    return x


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def stamp(x: int) -> float:
    return time.time()
