"""Faults in the stores: a result store down, SQLite locked, a full disk, Redis restarted.

In each, the worker keeps running, nothing is acknowledged before its outcome is stored,
errors say what happened, and everything completes once the store is back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import fault_tasks as ft
import pytest
from faultkit import HERE, Workers, assert_each_ran_once, open_gate, wait_all_ready
from transports._servers import RedisServer

import pluq
from _support import wait_until
from pluq.errors import TransportError
from pluq.registry import open_backend, open_broker


def _ran_at_least(ledger: str, count: int) -> bool:
    return sum(ft.executions(ledger).values()) >= count


def _quiet(app: pluq.App) -> bool:
    return app.stats().queues["default"].total == 0


# -- the result store unreachable ------------------------------------------------------


def test_no_ack_until_the_outcome_is_stored_while_the_result_store_is_down(
    tmp_path: Path,
    start_redis_server: Callable[..., RedisServer],
    workers: Workers,
    ledger: str,
) -> None:
    # given a worker whose broker is SQLite and whose result store is a Redis server
    server = start_redis_server()
    broker = f"sqlite:///{tmp_path}/broker.db"
    backend = f"redis://{server.address}/0?prefix=down:&socket_timeout=1"
    app = ft.app
    app.close()
    app.broker_url, app.backend_url = broker, backend
    worker = workers.start(broker, backend=backend, name="a", lease=10.0)
    try:
        warm = ft.work.delay(ledger, 1)
        assert warm.get(timeout=60) == 1
        # (its result shows before the worker has read Redis's reply, let alone acked)
        wait_until(lambda: _quiet(app), what="the warm-up task's ack")
        # when the result store goes away and a task runs meanwhile
        server.kill()
        result = ft.work.delay(ledger, 2)
        wait_until(
            lambda: f"could not store the outcome of {result.id}" in worker.log_text(),
            what="the worker to fail to store the outcome",
        )
        # then its message is not acknowledged: it stays leased to the worker
        assert app.broker.counts(["default"])["default"].leased == 1
        # and once the store is back, the outcome is stored, then the message acked
        server.start()
        assert result.get(timeout=60) == 2
        wait_until(lambda: _quiet(app), what="the ack after the store")
        assert_each_ran_once(ledger, [warm.id, result.id])
        assert worker.alive()
        worker.terminate()
        assert worker.wait() == 0
    finally:
        app.close()


# -- SQLite locked ---------------------------------------------------------------------

_LOCKER = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
print("released", flush=True)
"""


def test_sqlite_locked_by_another_writer_for_five_seconds(
    tmp_path: Path, workers: Workers, ledger: str
) -> None:
    # given a worker on a SQLite file that gives up on a lock after 1 s, with work to do
    url = f"sqlite:///{tmp_path}/pluq.db?busy_timeout=1"
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = f"sqlite:///{tmp_path}/pluq.db"  # waits up to 30 s
    try:
        before = app.enqueue_many(ft.work, [(ledger, i) for i in range(100)])
        worker = workers.start(url, name="a", lease=2.0)
        worker.wait_ready()
        # when another process holds the write lock for 5 s
        locker = subprocess.Popen(
            [sys.executable, "-c", _LOCKER, str(tmp_path / "pluq.db"), "5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        locked_at = time.monotonic()
        # then a producer with a short busy_timeout gets a clear error and stores nothing
        impatient = pluq.App(url)
        with pytest.raises(TransportError, match=r"pluq\.db stayed locked .*busy_timeout"):
            impatient.send_task(ft.work.name, (ledger, -1), task_id="refused")
        # and a patient producer (default busy_timeout) waits and succeeds
        during = ft.work.delay(ledger, 100)
        waited = time.monotonic() - locked_at
        assert locker.wait(30) == 0
        locker.stdout.close()
        assert waited > 3.0
        # and once the lock is gone the worker, which kept running, completes everything once
        everything = [*before, during]
        assert [r.get(timeout=60) for r in everything] == [*range(100), 100]
        assert worker.alive()
        assert impatient.broker.publish("default", b"x", id="refused")  # it never existed
        impatient.broker.purge("default")
        impatient.close()
        wait_until(lambda: _quiet(app), what="every message acknowledged")
        assert_each_ran_once(ledger, [r.id for r in everything])
        log = worker.log_text()
        assert "pluq.db stayed locked" in log  # the worker's own errors name the file
        worker.terminate()
        assert worker.wait() == 0
    finally:
        app.close()


_OPEN_CLOSE = "import sys; from pluq.registry import open_broker; open_broker(sys.argv[1]).close()"
_COUNT = (
    "import sys; from pluq.registry import open_broker; "
    "print(open_broker(sys.argv[1]).counts(['q'])['q'].ready)"
)


def test_sqlite_commits_stay_visible_when_one_process_opens_the_file_twice(
    tmp_path: Path,
) -> None:
    # given a process with a broker and a backend on one SQLite file (what every App has)
    url = f"sqlite:///{tmp_path}/pluq.db"
    with open_broker(url) as broker:
        assert broker.publish("q", b"first", id="1")
        with open_backend(url):
            # when another process opens and closes the file
            subprocess.run([sys.executable, "-c", _OPEN_CLOSE, url], check=True)
            # then a message this process publishes afterwards is seen by other processes
            assert broker.publish("q", b"second", id="2")
            seen = subprocess.run(
                [sys.executable, "-c", _COUNT, url], capture_output=True, text=True, check=True
            )
            assert broker.counts(["q"])["q"].ready == 2
            assert seen.stdout.strip() == "2"


# -- a full disk -----------------------------------------------------------------------


def _unshare() -> list[str]:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return []
    probe = ["unshare", "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        probe.insert(1, "--map-root-user")
    check = subprocess.run([*probe, "true"], capture_output=True)
    return probe if check.returncode == 0 else []


def test_a_full_disk_gives_clear_errors_and_everything_completes_once_space_returns(
    tmp_path: Path,
) -> None:
    # given a private mount namespace with a 4 MiB tmpfs holding a file:// queue (the
    # scenario runs in a child process: the mount vanishes with it, whatever happens)
    prefix = _unshare()
    if not prefix:
        message = "cannot mount a tmpfs here (need root or user namespaces: unshare -rm)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [*prefix, sys.executable, str(HERE / "diskfull_scenario.py"), str(tmp_path), str(report)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=HERE,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    facts = json.loads(report.read_text())
    # then publishing onto the full disk fails with a TransportError that says so
    assert facts["publish_errors"], "the disk never filled up"
    assert {e["type"] for e in facts["publish_errors"]} == {"pluq.errors.TransportError"}
    assert all("disk is full" in e["message"] for e in facts["publish_errors"])
    # and nothing half-written is visible: every queued file is a whole, readable message
    assert facts["unreadable_messages"] == []
    assert facts["ready_while_full"] == facts["accepted"]
    # and the worker ran tasks while full but acked nothing whose outcome was not stored
    assert facts["ran_while_full"] > 0
    assert facts["acked_while_full"] == 0
    assert facts["store_errors_logged"] > 0
    # and once space returned, everything completed, each task exactly once
    assert facts["states"] == {"SUCCESS": facts["accepted"] + facts["republished"]}
    assert facts["duplicates"] == []
    assert facts["left_in_broker"] == 0


# -- Redis restarted -------------------------------------------------------------------


def test_redis_restarted_and_connections_reset_mid_drain(
    start_redis_server: Callable[..., RedisServer],
    workers: Workers,
    ledger: str,
    gates: str,
) -> None:
    import redis

    # given two workers draining 1,000 tasks from a Redis server with AOF (fsync always)
    server = start_redis_server(aof=True)
    url = f"redis://{server.address}/0?prefix=restart:"
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = url
    try:
        results = app.enqueue_many(ft.work, [(ledger, i) for i in range(1000)])
        pair = [workers.start(url, name=n, concurrency=2, prefetch=0, lease=2.0) for n in "ab"]
        # when the server is SIGKILLed after 300 tasks ran, and restarted 2 s later
        wait_until(partial(_ran_at_least, ledger, 300), what="300 tasks")
        server.kill()
        down_at = time.monotonic()
        wait_until(lambda: time.monotonic() - down_at > 2.0, what="two seconds of outage")
        server.start()
        # and every client connection is reset twice while they drain the rest
        admin = redis.Redis(host=server.host, port=server.port)
        for progress in (350, 500):
            wait_until(partial(_ran_at_least, ledger, progress), what=f"{progress} tasks")
            admin.client_kill_filter(_type="normal", skipme=True)
        admin.close()
        # then all complete
        records = wait_all_ready(app, [r.id for r in results], timeout=120)
        assert {r.state for r in records} == {"SUCCESS"}
        # with duplicates only for tasks in flight at the outage (2 workers x 2 slots)
        counts = ft.executions(ledger)
        assert set(counts) == {r.id for r in results}
        assert sum(counts.values()) - 1000 <= 4
        # and no worker is left alive but idle: each takes new work at once
        late = [ft.held.delay(ledger, gates, "late", i) for i in range(4)]
        late_ids = {r.id for r in late}
        wait_until(
            lambda: late_ids <= set(ft.executions(ledger)),
            timeout=30,
            what="both workers to take new work",
        )
        open_gate(gates, "late")
        assert [r.get(timeout=30) for r in late] == [0, 1, 2, 3]
        assert {r.record.worker for r in late if r.record is not None} == {"a", "b"}
        wait_until(lambda: _quiet(app), what="every message acknowledged")
        for worker in pair:
            assert worker.alive()
            worker.terminate()
            assert worker.wait() == 0
    finally:
        app.close()
