"""A large group and chord: 10,000 members through the threads pool on memory://."""

from __future__ import annotations

import pluq


def test_a_chord_of_ten_thousand_members_calls_back_once(app: pluq.App) -> None:
    @app.task
    def square(x: int) -> int:
        return x * x

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    with app.worker(pool="threads", concurrency=4, prefetch=64):
        group_result = pluq.group(square.s(i) for i in range(10_000))()
        assert group_result.get(timeout=300)[-1] == 9999 * 9999
        result = pluq.chord(pluq.group(square.s(i) for i in range(10_000)), total.s())()
        assert result.get(timeout=300) == sum(i * i for i in range(10_000))
