"""Faults: children and whole workers killed, stopped and terminated at named points.

Each test counts executions in the ledger (one file per execution, written before the task
body runs) and reads every task's record: nothing lost, and nothing run twice unless a
process died while it ran that task.
"""

from __future__ import annotations

import os
import signal
import time
from functools import partial
from pathlib import Path

import fault_tasks as ft
import pytest
from faultkit import (
    WorkerProcess,
    Workers,
    assert_each_ran_once,
    assert_quiet_broker,
    open_gate,
    wait_all_ready,
)

import pluq
from _support import wait_until


def _done_or_dead(result: pluq.AsyncResult[None], worker: WorkerProcess) -> bool:
    return result.ready() or not worker.alive()


def _quiet(app: pluq.App) -> bool:
    return app.stats().queues["default"].total == 0


def _started(ledger: str, task_id: str, count: int = 1) -> bool:
    return len(ft.entries(ledger, task_id)) >= count


# -- a child ---------------------------------------------------------------------------


def test_a_child_killed_mid_task_runs_the_task_again_once(
    fapp: pluq.App, ledger: str, gates: str
) -> None:
    with fapp.worker(concurrency=2, lease=2):
        # given a task running in a child
        result = ft.held.delay(ledger, gates, "go", 7)
        wait_until(lambda: _started(ledger, result.id), what="the task to start")
        [first] = ft.entries(ledger, result.id)
        # when that child is SIGKILLed mid-task
        os.kill(first["pid"], signal.SIGKILL)
        wait_until(lambda: _started(ledger, result.id, 2), what="the task to run again")
        open_gate(gates, "go")
        # then it runs again in a new child, once, and succeeds
        assert result.get(timeout=60) == 7
        assert ft.work.delay(ledger, 1).get(timeout=60) == 1  # the worker goes on
    runs = ft.entries(ledger, result.id)
    assert len(runs) == 2
    assert runs[0]["pid"] != runs[1]["pid"]
    # and its history shows the lost attempt
    assert [a.state for a in result.history] == ["RETRY", "SUCCESS"]
    assert result.history[0].exc_type == "pluq.errors.WorkerLostError"
    assert "died" in (result.history[0].exc_message or "")
    assert [a.number for a in result.history] == [1, 2]
    assert_quiet_broker(fapp)


@pytest.mark.parametrize("how", ["sigkill", "segfault"])
def test_a_poison_pill_is_dead_lettered_after_bounded_deliveries(
    fapp: pluq.App, ledger: str, how: str
) -> None:
    with fapp.worker(concurrency=2, lease=2) as worker:
        # given a task that kills the child running it every time, among normal tasks
        before = [ft.work.delay(ledger, i) for i in range(10)]
        pill = ft.poison.delay(ledger, how)
        after = [ft.work.delay(ledger, i) for i in range(10, 20)]
        # then it fails for good after 1 + max_retries (2) deliveries, with the reason
        with pytest.raises(pluq.WorkerLostError):
            pill.get(timeout=60)
        # and the worker stays healthy: everything else completes, and so does new work
        assert [r.get(timeout=60) for r in before + after] == list(range(20))
        assert ft.work.delay(ledger, 99).get(timeout=60) == 99
        assert worker.exit_code is None
    assert ft.executions(ledger)[pill.id] == 3
    assert [a.state for a in pill.history] == ["RETRY", "RETRY", "FAILURE"]
    [dead] = fapp.dead_letters()
    assert dead.id == pill.id
    assert dead.reason.startswith("pluq.errors.WorkerLostError: the child process")
    code = -signal.SIGKILL if how == "sigkill" else -signal.SIGSEGV
    assert f"exit code {code}" in dead.reason
    assert fapp.stats().queues["default"].total == 1  # only the dead letter


# -- a whole worker --------------------------------------------------------------------


def test_a_poison_pill_that_kills_its_whole_worker_is_dead_lettered(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str
) -> None:
    # given a task that SIGKILLs the whole worker running it, every time
    pill = ft.poison.delay(ledger, "worker")
    # when workers keep being started (a supervisor restarting a crashed service)
    starts = 0
    while not pill.ready():
        assert starts < 6, f"still not dead-lettered after {starts} worker starts"
        starts += 1
        worker = workers.start(shared_url, name=f"w{starts}", lease=1.0)
        wait_until(partial(_done_or_dead, pill, worker), what="the pill or the worker to end")
        if worker.alive():
            worker.terminate()
            assert worker.wait() == 0
        else:
            assert worker.wait() == -signal.SIGKILL
    # then it ran 1 + max_retries times, each lost with its worker; the next delivery is
    # dead-lettered without running, with the reason
    assert ft.executions(ledger)[pill.id] == 3
    assert pill.state == "FAILURE"
    assert pill.record is not None and pill.record.exc_type == "pluq.errors.WorkerLostError"
    assert [a.state for a in pill.history] == ["LOST", "LOST", "LOST", "FAILURE"]
    [dead] = shared_app.dead_letters()
    assert "poison pill" in dead.reason and dead.attempt == 4
    # and a worker started afterwards is healthy
    done = ft.work.delay(ledger, 5)
    healthy = workers.start(shared_url, name="healthy", lease=1.0, burst=True)
    assert healthy.wait(60) == 0
    assert done.get(timeout=10) == 5


def test_a_poison_pill_stays_bounded_when_graceful_restarts_come_between_its_kills(
    tmp_path: Path, workers: Workers, ledger: str
) -> None:
    # The count of lost deliveries lives in the supervisor, not a transport: one shared
    # transport is enough here (file://, the quickest to recover an expired lease).
    url = f"file://{tmp_path}/queue?fsync=false"
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = url
    try:
        # given a task that SIGKILLs its whole worker every time it runs
        pill = ft.poison.delay(ledger, "worker")
        # when, after each such death, a worker reserves it and is stopped gracefully
        # before starting it (a rolling restart), which hands it back unstarted
        for cycle in range(1, 6):
            killed = workers.start(url, name=f"killed{cycle}", lease=1.0)
            wait_until(partial(_done_or_dead, pill, killed), what="the pill or the worker")
            if pill.ready():
                killed.terminate()
                assert killed.wait() == 0
                break
            assert killed.wait() == -signal.SIGKILL
            fault = f"handback_after_reserve:{pill.id}"
            polite = workers.start(url, name=f"polite{cycle}", lease=1.0, faults=[fault])
            assert polite.wait(60) == 0
        # then it still ran at most 1 + max_retries times before it was dead-lettered
        runs = ft.executions(ledger)[pill.id]
        assert pill.ready(), f"ran {runs} times and is still not dead-lettered"
        assert runs == 3
        assert "poison pill" in app.dead_letters()[0].reason
    finally:
        app.close()


def test_a_killed_worker_s_tasks_are_finished_by_another_each_once(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str, gates: str
) -> None:
    # given worker A running two tasks and holding two more it reserved (prefetch)
    running = [ft.held.delay(ledger, gates, "go", i) for i in range(2)]
    queued = [ft.work.delay(ledger, i) for i in range(2, 40)]
    a = workers.start(shared_url, name="a", concurrency=2, prefetch=2, lease=2.0)
    a.wait_ready()
    wait_until(lambda: all(_started(ledger, r.id) for r in running), what="A to run two")
    wait_until(lambda: shared_app.stats().queues["default"].leased == 4, what="A to prefetch")
    # when A is SIGKILLed, children and all, and worker B starts
    a.kill()
    killed_at = time.monotonic()
    b = workers.start(shared_url, name="b", concurrency=2, lease=2.0)
    open_gate(gates, "go")
    records = wait_all_ready(shared_app, [r.id for r in running + queued], timeout=120)
    recovered_in = time.monotonic() - killed_at
    # then B finished everything: the two that died with A ran twice, the rest once
    assert [r.state for r in records] == ["SUCCESS"] * 40
    assert {r.worker for r in records} == {"b"}
    counts = ft.executions(ledger)
    assert [counts[r.id] for r in running] == [2, 2]
    assert [counts[r.id] for r in queued] == [1] * 38
    for record in records[:2]:
        assert [a.state for a in record.history] == ["LOST", "SUCCESS"]
    assert recovered_in < 60
    b.terminate()
    assert b.wait() == 0
    assert_quiet_broker(shared_app)


@pytest.mark.parametrize("point", ["after_reserve", "after_store"])
def test_a_worker_killed_at_a_named_point_loses_nothing_and_repeats_only_what_it_must(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str, point: str
) -> None:
    # given worker A that SIGKILLs itself (process group) at the named point of one task
    target = ft.work.apply_async((ledger, 42), task_id=f"target-{point}")
    a = workers.start(shared_url, name="a", lease=1.0, faults=[f"{point}:{target.id}"])
    assert a.wait(60) == -signal.SIGKILL
    # when worker B comes along
    b = workers.start(shared_url, name="b", lease=2.0)
    # then the task succeeded, once
    assert target.get(timeout=60) == 42
    wait_until(lambda: _quiet(shared_app), what="the message to be acknowledged")
    b.terminate()
    assert b.wait() == 0
    runs = ft.entries(ledger, target.id)
    history = [(a.number, a.state, a.worker) for a in target.history]
    if point == "after_reserve":
        # reserved, never started: B runs it, its history shows the lost delivery
        assert len(runs) == 1 and runs[0]["attempt"] == 2
        assert history == [(1, "LOST", None), (2, "SUCCESS", "b")]
    else:
        # stored before the crash, not acked: B sees the outcome and does not run it again
        assert len(runs) == 1 and runs[0]["attempt"] == 1
        assert history == [(1, "SUCCESS", "a")]
        assert "already finished" in b.log_text()


def test_a_worker_stopped_past_its_lease_has_its_late_ack_refused(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str, gates: str
) -> None:
    # given worker A running a task on a 1 s lease
    result = ft.held.delay(ledger, gates, "go", 1)
    a = workers.start(shared_url, name="a", concurrency=1, lease=1.0)
    wait_until(lambda: _started(ledger, result.id), what="A to start the task")
    # when A is SIGSTOPped (supervisor and child) and worker B takes the task over
    a.stop()
    b = workers.start(shared_url, name="b", concurrency=1, lease=2.0)
    wait_until(lambda: _started(ledger, result.id, 2), timeout=60, what="B to take it over")
    open_gate(gates, "go")
    assert result.get(timeout=60) == 1
    by_b = result.record
    assert by_b is not None and by_b.worker == "b"
    # and A resumes and finishes its (stale) execution
    a.cont()
    wait_until(lambda: "was lost" in a.log_text(), what="A to find out it lost the lease")
    a.terminate()
    assert a.wait() == 0
    b.terminate()
    assert b.wait() == 0
    # then A's late ack was refused and the task is recorded once, by its lease holder B
    fresh = shared_app.AsyncResult(result.id)
    record = fresh.record
    assert record is not None
    assert (record.state, record.worker) == ("SUCCESS", "b")
    assert [(x.number, x.state, x.worker) for x in record.history] == [
        (1, "LOST", None),
        (2, "SUCCESS", "b"),
    ]
    assert record == by_b
    assert_quiet_broker(shared_app)
    assert len(ft.entries(ledger, result.id)) == 2


def test_a_task_longer_than_the_lease_is_not_redelivered_while_its_worker_lives(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str, gates: str
) -> None:
    # given worker A (2 s lease) running a task that holds the GIL in a C call for 4 s and
    # a plain task that runs until told, and an idle worker B ready to take anything
    stuck = ft.hold_gil.delay(ledger, 4)
    long = ft.held.delay(ledger, gates, "go", 2)
    a = workers.start(shared_url, name="a", concurrency=2, lease=2.0)
    wait_until(lambda: _started(ledger, stuck.id) and _started(ledger, long.id), what="A")
    b = workers.start(shared_url, name="b", concurrency=2, lease=2.0)
    b.wait_ready()
    # when both run for two leases and more
    assert stuck.get(timeout=60) == 4
    open_gate(gates, "go")
    assert long.get(timeout=60) == 2
    # then neither was delivered again: A renewed their leases all along
    assert_each_ran_once(ledger, [stuck.id, long.id])
    for result in (stuck, long):
        assert [(x.number, x.state, x.worker) for x in result.history] == [(1, "SUCCESS", "a")]
    for worker in (a, b):
        worker.terminate()
        assert worker.wait() == 0


@pytest.mark.parametrize("to", ["supervisor", "process group"])
def test_sigterm_finishes_running_tasks_and_returns_unstarted_ones_within_a_second(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str, gates: str, to: str
) -> None:
    # given a worker (30 s lease: an expiry cannot explain anything here) running two tasks
    # and holding four more it reserved but did not start
    running = [ft.held.delay(ledger, gates, "go", i) for i in range(2)]
    waiting = [ft.work.delay(ledger, i) for i in range(2, 6)]
    a = workers.start(shared_url, name="a", concurrency=2, prefetch=4, lease=30.0)
    wait_until(lambda: all(_started(ledger, r.id) for r in running), what="two to start")
    wait_until(lambda: shared_app.stats().queues["default"].leased == 6, what="the prefetch")
    # when it gets SIGTERM: from `kill PID`, or sent to its whole process group, as
    # systemd does by default (KillMode=control-group) and a terminal's job control does
    if to == "supervisor":
        a.terminate()
    else:
        a.signal_group(signal.SIGTERM)
    sent = time.monotonic()
    # then the unstarted ones are back in the queue within a second
    wait_until(lambda: shared_app.stats().queues["default"].ready >= 4, timeout=30, what="back")
    back_in = time.monotonic() - sent
    print(f"\nSIGTERM to the {to}: 4 unstarted messages back in {back_in:.3f} s")
    assert back_in < 1.0
    # and the running ones finish before it exits 0
    open_gate(gates, "go")
    assert a.wait() == 0
    assert [r.state for r in running] == ["SUCCESS", "SUCCESS"]
    assert all(r.state == "PENDING" for r in waiting)
    b = workers.start(shared_url, name="b", burst=True)
    assert b.wait(60) == 0
    assert [r.get(timeout=10) for r in waiting] == [2, 3, 4, 5]
    assert_each_ran_once(ledger, [r.id for r in running + waiting])
    assert all(r.retries == 0 for r in waiting)  # handed back, not a retry
