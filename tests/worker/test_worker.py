"""The worker end to end: states, retries, dead letters, lost children, limits, shutdown."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import worker_tasks as wt

import pluq
from _support import wait_until
from pluq import message as msg


def test_a_task_runs_in_a_child_process_and_its_result_comes_back(wapp: pluq.App) -> None:
    # given a running worker with two children
    with wapp.worker(concurrency=2):
        # when a task is queued
        result = wt.add.delay(2, 3)
        # then its value comes back, computed in another process
        assert result.get(timeout=30) == 5
        assert wt.pid.delay().get(timeout=30) != os.getpid()
    assert result.state == "SUCCESS"
    assert result.successful() and result.ready() and not result.failed()
    assert [a.state for a in result.history] == ["SUCCESS"]
    assert result.history[0].worker is not None


def test_many_tasks_all_complete_once(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        results = [wt.add.delay(i, i) for i in range(200)]
        assert [r.get(timeout=60) for r in results] == [2 * i for i in range(200)]
    assert wapp.stats().queues["default"].total == 0


@pytest.mark.parametrize("pool", ["threads", "processes"])
def test_the_main_loop_wakes_on_its_wake_up_pipe(wapp: pluq.App, pool: str) -> None:
    # Thread slots have no pipes of their own: a report or a fetch must wake the loop at
    # once (a loop that slept out its timeout cost every task up to a second).
    supervisor = wapp.Worker(concurrency=1, pool=pool)._build()
    supervisor.wake()
    assert [fd for fd, _ in supervisor._poller().poll(0)] == [supervisor.wake_r]
    supervisor._close()


def test_a_threads_worker_starts_without_the_imports_only_processes_need() -> None:
    # multiprocessing and socket were half of a threads worker's start-up imports (about
    # 20 ms), inside every in-process drain's timing.
    import subprocess
    import sys

    code = (
        "import sys, pluq\n"
        "app = pluq.App('memory://startup', secret='s')\n"
        "double = app.task(lambda x: 2 * x, name='double')\n"
        "result = double.delay(21)\n"
        "with app.worker(concurrency=2, pool='threads'):\n"
        "    assert result.get(timeout=30) == 42\n"
        "print(sorted({'multiprocessing', 'socket'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["[]"]


def test_a_slot_holds_about_twenty_milliseconds_of_short_jobs(wapp: pluq.App) -> None:
    from pluq.worker.supervisor import AHEAD, MAX_DEPTH, SHORT_TASK

    supervisor = wapp.Worker(concurrency=2)._build()  # adaptive: prefetch left to pluq
    try:
        assert supervisor._depth(None) == 1  # never seen: one at a time
        assert supervisor._depth(SHORT_TASK) == 1  # not short
        assert supervisor._depth(0.001) == round(AHEAD / 0.001) == 20
        assert supervisor._depth(0.0019) == 10  # just short: 19 ms held, not more
        assert supervisor._depth(0.00005) == supervisor._depth(0.0) == MAX_DEPTH
        # with the window grown, the worker reserves as many again per slot
        supervisor.durations["noop"] = 0.00005
        supervisor._update_demand()
        assert supervisor.shared.wanted == 2 * MAX_DEPTH + 2 * MAX_DEPTH
    finally:
        supervisor._close()
    fixed = wapp.Worker(concurrency=2, prefetch=3)._build()
    try:
        assert fixed._depth(0.00005) == 1  # a prefetch the user set holds exactly
    finally:
        fixed._close()


@pytest.mark.parametrize("prefetch", [0, None])
def test_a_worker_drains_more_tasks_than_it_holds(wapp: pluq.App, prefetch: int | None) -> None:
    # prefetch=0 reserves only for free slots; None grows the window while tasks are short
    with wapp.worker(concurrency=2, prefetch=prefetch):
        results = [wt.add.delay(i, 1) for i in range(60)]
        assert [r.get(timeout=60) for r in results] == [i + 1 for i in range(60)]


def test_state_is_pending_then_started_then_success(
    wapp: pluq.App, tmp_path: Path, ledger: str
) -> None:
    go = tmp_path / "go"
    result = wt.wait_for_file.delay(str(go), ledger)
    assert result.state == "PENDING"
    with wapp.worker(concurrency=1):
        wait_until(lambda: result.state == "STARTED", what="STARTED")
        go.touch()
        assert result.get(timeout=30) == "done"
    assert result.state == "SUCCESS"


def test_a_bound_task_retries_and_records_every_attempt(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        result = wt.flaky.delay(2)
        assert result.get(timeout=30) == 2
    assert result.retries == 2
    assert [a.state for a in result.history] == ["RETRY", "RETRY", "SUCCESS"]
    assert result.history[0].exc_type == "ConnectionError"
    assert result.history[0].exc_message == "attempt 0 failed"
    assert "ConnectionError" in (result.history[0].traceback or "")


def test_after_max_retries_the_task_fails_and_is_dead_lettered(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=2):
        result = wt.flaky.delay(10)
        with pytest.raises(ConnectionError, match="attempt 3 failed"):
            result.get(timeout=30)
    assert result.state == "FAILURE"
    assert result.retries == 3
    assert [a.state for a in result.history] == ["RETRY"] * 3 + ["FAILURE"]
    assert isinstance(result.result, ConnectionError)
    assert "ConnectionError: attempt 3 failed" in (result.traceback or "")
    [dead] = wapp.dead_letters()
    assert dead.id == result.id
    assert dead.task == "worker_tasks.flaky"
    assert dead.reason == "ConnectionError: attempt 3 failed"


def test_autoretry_for_retries_listed_exceptions_up_to_max_retries(
    wapp: pluq.App, ledger: str
) -> None:
    with wapp.worker(concurrency=1):
        result = wt.auto.delay(ledger)
        with pytest.raises(ConnectionError):
            result.get(timeout=30)
    assert wt.executions(ledger, "auto") == 3
    assert result.retries == 2


def test_an_exception_not_listed_fails_at_once_with_its_traceback(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        result = wt.fail.delay("bad input")
        with pytest.raises(ValueError, match="bad input"):
            result.get(timeout=30)
        assert isinstance(result.get(timeout=1, propagate=False), ValueError)
    assert result.retries == 0
    assert "raise ValueError(message)" in (result.traceback or "")


def test_a_retry_waits_in_the_broker_for_its_countdown(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        started = time.monotonic()
        result = wt.retry_later.delay(0.5)
        wait_until(lambda: result.state == "RETRY", what="RETRY")
        counts = wapp.stats().queues["default"]
        assert counts.delayed == 1 and counts.leased == 0  # not held by the worker
        assert result.get(timeout=30) == "second time"
        assert time.monotonic() - started >= 0.5


def test_countdown_and_eta_hold_the_task_in_the_broker(wapp: pluq.App) -> None:
    first = wt.add.apply_async((1, 1), countdown=0.4)
    second = wt.add.apply_async((2, 2), eta=datetime.now() + timedelta(seconds=0.4))
    assert wapp.stats().queues["default"].delayed == 2
    started = time.monotonic()
    with wapp.worker(concurrency=1):
        assert first.get(timeout=30) == 2 and second.get(timeout=30) == 4
    assert time.monotonic() - started >= 0.3


def test_a_child_killed_mid_task_is_replaced_and_the_task_runs_again(
    wapp: pluq.App, ledger: str
) -> None:
    with wapp.worker(concurrency=2):
        result = wt.die_once.delay(ledger)
        assert result.get(timeout=60) == "survived"
        # and the worker still works with its replacement child
        assert [wt.add.delay(i, 1).get(timeout=30) for i in range(4)] == [1, 2, 3, 4]
    assert wt.executions(ledger, "die_once") == 2
    assert [a.state for a in result.history] == ["RETRY", "SUCCESS"]
    assert result.history[0].exc_type == "pluq.errors.WorkerLostError"


def test_many_tasks_survive_a_child_being_killed(wapp: pluq.App, ledger: str) -> None:
    with wapp.worker(concurrency=2) as worker:
        results = [wt.add.delay(i, 0) for i in range(100)]
        dying = wt.die_once.delay(ledger)
        more = [wt.add.delay(i, 0) for i in range(100, 200)]
        assert dying.get(timeout=60) == "survived"
        assert [r.get(timeout=60) for r in results + more] == list(range(200))
        assert worker.processed >= 202
    assert wapp.stats().queues["default"].total == 0


def test_a_poison_pill_is_dead_lettered_after_its_retries(wapp: pluq.App, ledger: str) -> None:
    with wapp.worker(concurrency=1):
        result = wt.poison.delay(ledger)
        with pytest.raises(pluq.WorkerLostError):
            result.get(timeout=60)
        assert wt.add.delay(1, 1).get(timeout=30) == 2  # the worker is healthy
    assert wt.executions(ledger, "poison") == 3  # max_retries=2: 1 + 2 deliveries
    [dead] = wapp.dead_letters()
    assert "WorkerLostError" in dead.reason


def test_a_hard_time_limit_kills_the_task_and_fails_it(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        result = wt.too_slow.delay(30)
        with pytest.raises(pluq.TimeLimitExceeded):
            result.get(timeout=30)
        assert wt.too_slow.delay(0).get(timeout=30) == "finished"
    assert result.state == "FAILURE"


def test_graceful_stop_finishes_running_tasks_and_returns_the_rest(
    wapp: pluq.App, tmp_path: Path, ledger: str
) -> None:
    go = tmp_path / "go"
    running = wt.wait_for_file.delay(str(go), ledger)
    waiting = [wt.add.delay(i, i) for i in range(3)]
    worker = wapp.Worker(concurrency=1, prefetch=3)
    worker.start()
    wait_until(lambda: running.state == "STARTED", what="the first task to start")
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    wait_until(lambda: wapp.stats().queues["default"].ready == 3, what="unstarted tasks back")
    go.touch()
    stopper.join(30)
    assert not stopper.is_alive()
    assert running.state == "SUCCESS"
    assert all(r.state == "PENDING" for r in waiting)
    assert worker.exit_code == 0
    # nothing lost: a new worker runs the rest
    with wapp.worker(concurrency=1):
        assert [r.get(timeout=30) for r in waiting] == [0, 2, 4]


def test_cold_stop_hands_every_unfinished_message_back(
    wapp: pluq.App, tmp_path: Path, ledger: str
) -> None:
    go = tmp_path / "go"
    running = wt.wait_for_file.delay(str(go), ledger)
    waiting = wt.add.delay(1, 2)
    worker = wapp.Worker(concurrency=1, prefetch=1)
    worker.start()
    wait_until(lambda: running.state == "STARTED", what="the first task to start")
    worker.stop(hard=True, timeout=30)
    assert worker.exit_code == 130
    assert wapp.stats().queues["default"].ready == 2
    go.touch()
    with wapp.worker(concurrency=1):
        assert running.get(timeout=30) == "done"
        assert waiting.get(timeout=30) == 3
    # the interrupted delivery is not counted as a retry
    assert running.retries == 0


def test_malformed_bytes_are_dead_lettered_and_the_worker_goes_on(wapp: pluq.App) -> None:
    wapp.broker.publish("default", b"\x00garbage\xff", id="garbage-1")
    with wapp.worker(concurrency=1):
        record = wapp.backend.wait("garbage-1", timeout=30)
        assert record is not None and record.state == "FAILURE"
        assert wt.add.delay(2, 2).get(timeout=30) == 4
    [dead] = wapp.dead_letters()
    assert dead.id == "garbage-1" and "malformed" in dead.reason
    with pytest.raises(pluq.MessageError):
        wapp.AsyncResult("garbage-1").get(timeout=1)


def test_an_unknown_task_name_is_dead_lettered_with_a_failure_record(wapp: pluq.App) -> None:
    result = wapp.send_task("worker_tasks.no_such_task", (1,))
    with wapp.worker(concurrency=1), pytest.raises(pluq.NotRegistered, match="no_such_task"):
        result.get(timeout=30)
    [dead] = wapp.dead_letters()
    assert "unknown task" in dead.reason


def test_an_expired_task_does_not_run_and_is_revoked(wapp: pluq.App, ledger: str) -> None:
    result = wt.canary.apply_async((ledger,), expires=datetime.now() - timedelta(seconds=1))
    with wapp.worker(concurrency=1), pytest.raises(pluq.TaskRevokedError):
        result.get(timeout=30)
    assert result.state == "REVOKED"
    assert wt.executions(ledger, "canary") == 0
    assert "expired" in wapp.dead_letters()[0].reason


def test_a_revoked_task_never_starts(wapp: pluq.App, ledger: str) -> None:
    result = wt.canary.delay(ledger)
    result.revoke()
    assert result.state == "REVOKED"
    with wapp.worker(concurrency=1):
        assert wt.add.delay(1, 1).get(timeout=30) == 2
    assert wt.executions(ledger, "canary") == 0


def test_a_result_that_cannot_be_stored_fails_the_task(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        result = wt.unpicklable_result.delay()
        with pytest.raises(pluq.SerializationError, match="cannot be stored"):
            result.get(timeout=30)


def test_a_task_raising_system_exit_fails_and_the_child_lives(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        before = wt.pid.delay().get(timeout=30)
        result = wt.raise_system_exit.delay()
        with pytest.raises(SystemExit):
            result.get(timeout=30)
        assert wt.pid.delay().get(timeout=30) == before


def test_burst_runs_until_the_queues_are_empty_then_returns(wapp: pluq.App) -> None:
    results = [wt.add.delay(i, 1) for i in range(20)]
    retried = wt.flaky.delay(1)
    assert wapp.Worker(concurrency=2).run(burst=True) == 0
    assert [r.get(timeout=1) for r in results] == list(range(1, 21))
    assert retried.get(timeout=1) == 1


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_threads_and_solo_pools_run_the_same_core(wapp: pluq.App, pool: str) -> None:
    with wapp.worker(pool=pool, concurrency=2 if pool == "threads" else 1):
        assert wt.add.delay(2, 2).get(timeout=30) == 4
        assert wt.flaky.delay(1).get(timeout=30) == 1
        assert wt.pid.delay().get(timeout=30) == os.getpid()
        with pytest.raises(ValueError):
            wt.fail.delay("x").get(timeout=30)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_every_start_method_runs_tasks(wapp: pluq.App, ledger: str, method: str) -> None:
    with wapp.worker(concurrency=1, start_method=method):
        assert wt.add.delay(20, 22).get(timeout=60) == 42
        assert wt.die_once.delay(ledger).get(timeout=60) == "survived"


def test_a_worker_with_a_secret_refuses_unsigned_messages(wapp: pluq.App, ledger: str) -> None:
    # given a producer without the secret, on the same transport
    producer = pluq.App(wapp.broker_url, allow_unsigned_pickle=True)
    unsigned = producer.send_task("worker_tasks.canary", (ledger,))
    signer = pluq.App(wapp.broker_url, secret="wrong secret")
    forged = signer.send_task("worker_tasks.canary", (ledger,))
    wapp.keys = (b"the right secret",)
    try:
        with wapp.worker(concurrency=1):
            signed = wt.add.delay(1, 2)
            assert signed.get(timeout=30) == 3
            for bad in (unsigned, forged):
                record = wapp.backend.wait(bad.id, timeout=30)
                assert record is not None and record.state == "FAILURE"
    finally:
        wapp.keys = ()
    assert wt.executions(ledger, "canary") == 0
    reasons = sorted(d.reason for d in wapp.dead_letters())
    assert all("signature" in r or "signed" in r for r in reasons)


def test_a_tampered_header_is_refused(wapp: pluq.App, ledger: str) -> None:
    wapp.keys = (b"secret",)
    try:
        out = wapp._build(wt.canary, wt.canary.name, (ledger,), {})
        header, body = msg.decode(out.message)
        forged = msg.encode(header.evolve(task="worker_tasks.add"), body)  # unsigned rewrite
        forged = forged.replace(b'"sig":null', f'"sig":"{header.sig}"'.encode())
        wapp.broker.publish("default", forged, id=header.id)
        with wapp.worker(concurrency=1):
            record = wapp.backend.wait(header.id, timeout=30)
        assert record is not None and record.state == "FAILURE"
        assert "signature" in (record.exc_message or "")
    finally:
        wapp.keys = ()


def test_sigterm_to_a_worker_process_drains_gracefully(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "run_worker.py"
    script.write_text(
        "import logging, sys, pluq\n"
        "logging.basicConfig(filename=sys.argv[1] + '.log', level=logging.INFO)\n"
        "app = pluq.App('memory://sigterm')\n"
        "@app.task\n"
        "def slow(path):\n"
        "    import os, time\n"
        "    open(path + '.started', 'w').close()\n"
        "    while not os.path.exists(path):\n"
        "        time.sleep(0.01)\n"
        "    return 'ok'\n"
        "r = slow.delay(sys.argv[1])\n"
        "later = [slow.delay(sys.argv[1]) for _ in range(2)]\n"
        "code = app.Worker(concurrency=1, prefetch=2).run()\n"
        "print(code, r.state, app.stats().queues['default'].ready, flush=True)\n"
    )
    go = tmp_path / "go"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(go)], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        wait_until(lambda: Path(str(go) + ".started").exists(), what="the task to start")
        proc.send_signal(signal.SIGTERM)
        log = Path(str(go) + ".log")
        wait_until(lambda: "warm shutdown" in log.read_text(), what="the shutdown to begin")
        go.touch()
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert out.split() == ["0", "SUCCESS", "2"]


def test_revoke_with_terminate_kills_a_running_task(
    wapp: pluq.App, tmp_path: Path, ledger: str
) -> None:
    never = tmp_path / "never"
    with wapp.worker(concurrency=1):
        running = wt.wait_for_file.delay(str(never), ledger)
        wait_until(lambda: running.state == "STARTED", what="the task to start")
        running.revoke(terminate=True)
        assert wt.add.delay(1, 1).get(timeout=30) == 2  # the slot was freed and replaced
    assert running.state == "REVOKED"
    assert wt.executions(ledger, "finished") == 0
    assert wapp.stats().queues["default"].total == 0
