"""Workflows on a real worker: chains, groups and chords, on every transport."""

from __future__ import annotations

import pytest
import worker_tasks as wt

import pluq


def test_a_chain_passes_each_result_to_the_next_step(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        assert pluq.chain(wt.add.s(1, 2), wt.add.s(10))().get(timeout=30) == 13
        assert (wt.add.s(2, 2) | wt.mul.s(4) | wt.add.s(1))().get(timeout=30) == 17
        assert pluq.chain(wt.add.s(1), wt.add.s(10))(5).get(timeout=30) == 16


def test_an_immutable_step_ignores_the_previous_result(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        assert (wt.add.s(1, 1) | wt.add.si(5, 5))().get(timeout=30) == 10


def test_a_failing_step_stops_the_chain_and_the_result_names_it(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        result = (wt.add.s(1, 1) | wt.div.s(0) | wt.add.s(1))()
        with pytest.raises(ZeroDivisionError):
            result.get(timeout=30)
    record = result.record
    assert record is not None and record.state == "FAILURE"
    assert record.meta["failed_task"] == "worker_tasks.div"


def test_a_group_returns_results_in_order(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        result = pluq.group(wt.add.s(i, i) for i in range(20))()
        assert isinstance(result, pluq.GroupResult)
        assert result.get(timeout=60) == [2 * i for i in range(20)]
        assert result.ready() and result.completed_count() == 20 and len(result) == 20


def test_a_chord_calls_back_once_with_every_result(wapp: pluq.App, ledger: str) -> None:
    with wapp.worker(concurrency=2):
        result = pluq.chord(pluq.group(wt.add.s(i, i) for i in range(10)), wt.total.s())()
        assert result.get(timeout=60) == 90
        once = pluq.chord([wt.add.s(1, 1), wt.add.s(2, 2)], wt.record_call.s(ledger))()
        assert once.get(timeout=60) == "called"
    assert wt.executions(ledger, "callback") == 1


def test_a_chord_with_a_failed_member_fails_with_an_error_naming_it(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        result = pluq.chord([wt.add.s(1, 1), wt.div.s(1, 0)], wt.total.s())()
        with pytest.raises(pluq.TaskError, match=r"chord member .* failed: ZeroDivisionError"):
            result.get(timeout=60)


def test_a_group_piped_into_a_signature_is_a_chord(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        assert (pluq.group(wt.add.s(1, 1), wt.add.s(2, 2)) | wt.total.s())().get(timeout=60) == 6


def test_a_partial_signature_is_completed_at_call_time(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        assert wt.add.s(2).delay(4).get(timeout=30) == 6
        assert wt.add.s(2).set(countdown=0.1).delay(5).get(timeout=30) == 7
