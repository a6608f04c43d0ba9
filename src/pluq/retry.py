"""The retry policy: how long a failed task waits before its next attempt.

Pure functions, no I/O, so every delay can be tested exactly. The rules follow Celery's:

- an explicit `countdown` (or `eta`) given to `self.retry()` wins;
- otherwise, with `retry_backoff`, the delay grows exponentially: `factor * 2 ** retries`
  seconds (`factor` is `retry_backoff` itself when it is a number, else 1), capped by
  `retry_backoff_max`, and with `retry_jitter` a uniformly random value between 0 and
  that ("full jitter", so that many failing tasks do not retry in lockstep);
- otherwise `default_retry_delay`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    max_retries: int | None = 3
    """How many retries after the first attempt; None retries forever."""
    default_retry_delay: float = 180.0
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True

    def __post_init__(self) -> None:
        from pluq.errors import ConfigurationError

        if self.max_retries is not None and self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0 or None, not {self.max_retries}")
        if self.default_retry_delay < 0 or self.retry_backoff_max < 0:
            raise ConfigurationError("retry delays must be >= 0 seconds")
        if not isinstance(self.retry_backoff, bool) and self.retry_backoff < 0:
            raise ConfigurationError("retry_backoff must be True, False or a factor >= 0")

    def may_retry(self, retries: int, max_retries: int | None = None) -> bool:
        """Whether a task that has been retried `retries` times may be retried again."""
        limit = self.max_retries if max_retries is None else max_retries
        return limit is None or retries < limit

    def delay(
        self,
        retries: int,
        *,
        countdown: float | None = None,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> float:
        """Seconds to wait before retry number `retries + 1` (`retries` done so far)."""
        if countdown is not None:
            return max(0.0, float(countdown))
        if self.retry_backoff is False:
            return float(self.default_retry_delay)
        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        ceiling = min(float(self.retry_backoff_max), factor * 2.0 ** min(retries, 62))
        return uniform(0.0, ceiling) if self.retry_jitter else ceiling
