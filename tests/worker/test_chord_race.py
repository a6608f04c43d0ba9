"""Two workers finishing a chord's members at the same instant run its callback once."""

from __future__ import annotations

import pytest
import worker_tasks as wt

import pluq


def test_two_workers_racing_on_chord_members_call_back_exactly_once(
    wapp: pluq.App, ledger: str
) -> None:
    # Two supervisors (on threads of this process) share the broker on every transport,
    # memory:// included, so their children finish members of one chord side by side.
    chords = 25
    with wapp.worker(concurrency=2, name="w1"), wapp.worker(concurrency=2, name="w2"):
        results = [
            pluq.chord([wt.add.s(i, 0), wt.add.s(0, i)], wt.record_call.s(ledger))()
            for i in range(chords)
        ]
        assert [r.get(timeout=120) for r in results] == ["called"] * chords
    assert wt.executions(ledger, "callback") == chords
    assert wapp.stats().queues["default"].total == 0


@pytest.mark.parametrize("size", [1, 3])
def test_small_chords_complete(wapp: pluq.App, size: int) -> None:
    with wapp.worker(concurrency=2):
        result = pluq.chord([wt.add.s(i, i) for i in range(size)], wt.total.s())()
        assert result.get(timeout=60) == sum(2 * i for i in range(size))
