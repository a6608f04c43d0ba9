"""Helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Wait for `condition()` to be true: an event we cannot block on directly.

    Checks every few milliseconds up to a generous deadline (tests run on a loaded
    2-core machine); fails with `what` if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    pause = 0.002
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
