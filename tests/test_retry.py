"""The retry policy computes each delay exactly (jitter within its bounds)."""

from __future__ import annotations

import pytest

import pluq
from pluq.retry import RetryPolicy


def test_default_delay_is_used_without_backoff() -> None:
    policy = RetryPolicy(default_retry_delay=60)
    assert [policy.delay(n) for n in range(4)] == [60.0] * 4


def test_an_explicit_countdown_wins() -> None:
    assert RetryPolicy(retry_backoff=True).delay(5, countdown=7) == 7.0
    assert RetryPolicy().delay(0, countdown=-3) == 0.0


def test_exponential_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(retry_backoff=True, retry_backoff_max=600, retry_jitter=False)
    assert [policy.delay(n) for n in range(12)] == [
        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 600.0, 600.0,
    ]  # fmt: skip


def test_a_numeric_backoff_is_the_factor() -> None:
    policy = RetryPolicy(retry_backoff=3, retry_backoff_max=100, retry_jitter=False)
    assert [policy.delay(n) for n in range(6)] == [3.0, 6.0, 12.0, 24.0, 48.0, 96.0]
    assert policy.delay(6) == 100.0


def test_full_jitter_draws_between_zero_and_the_backoff() -> None:
    policy = RetryPolicy(retry_backoff=True, retry_backoff_max=600, retry_jitter=True)
    seen: list[tuple[float, float]] = []
    assert policy.delay(4, uniform=lambda a, b: seen.append((a, b)) or b / 2) == 8.0
    assert seen == [(0.0, 16.0)]
    for n in range(20):
        assert 0.0 <= policy.delay(n) <= min(600.0, 2.0**n)


def test_huge_retry_counts_do_not_overflow() -> None:
    assert RetryPolicy(retry_backoff=True, retry_jitter=False).delay(5000) == 600.0


def test_may_retry_respects_max_retries_and_none_means_forever() -> None:
    assert RetryPolicy(max_retries=2).may_retry(1)
    assert not RetryPolicy(max_retries=2).may_retry(2)
    assert RetryPolicy(max_retries=None).may_retry(10**6)
    assert RetryPolicy(max_retries=2).may_retry(4, max_retries=5)


def test_bad_policies_are_configuration_errors() -> None:
    with pytest.raises(pluq.ConfigurationError):
        RetryPolicy(max_retries=-1)
    with pytest.raises(pluq.ConfigurationError):
        RetryPolicy(default_retry_delay=-1)
