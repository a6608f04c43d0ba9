"""A clock the tests move by hand, so leases, delays and expiries need no sleeping."""

from __future__ import annotations

import threading

__all__ = ["ManualClock"]


class ManualClock:
    """A callable clock (seconds as floats, like `time.time`) that only moves on `advance`.

    Pass it to `pluq.registry.open_broker(url, clock=clock)`; every deadline the transport
    computes (not_before, lease_deadline, record and heartbeat expiry) then follows it.
    Blocking waits still time out on real time, so tests using it reserve with `timeout=0`.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock forward by `seconds` (never back) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a ManualClock only moves forward, not by {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def __repr__(self) -> str:
        return f"ManualClock({self():.3f})"
