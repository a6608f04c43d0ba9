"""sqlite:// specifics; the contract kit tests the general behaviour.

Run the kit on SQLite with:
    pytest transports --transport-url 'sqlite:///{tmp}/pluq.db'
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from transports._clock import ManualClock

from pluq.backend import STARTED, SUCCESS, Attempt, TaskRecord
from pluq.broker import QueueCounts
from pluq.errors import ConfigurationError, TransportError
from pluq.registry import open_backend, open_broker
from pluq.transports.sqlite import SCHEMA_VERSION, SqliteBackend, SqliteBroker

WAIT = 30.0
"""Seconds a test waits for another thread or process: generous on a loaded machine."""


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_000_000.0)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pluq.db"


@pytest.fixture
def url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"  # an absolute path: four slashes in all


@pytest.fixture
def broker(url: str, clock: ManualClock) -> Iterator[SqliteBroker]:
    with open_broker(url, clock=clock) as opened:
        assert isinstance(opened, SqliteBroker)
        yield opened


@pytest.fixture
def broker_on_real_clock(url: str) -> Iterator[SqliteBroker]:
    with open_broker(url) as opened:
        assert isinstance(opened, SqliteBroker)
        yield opened


@pytest.fixture
def backend(url: str, clock: ManualClock) -> Iterator[SqliteBackend]:
    with open_backend(url, clock=clock) as opened:
        assert isinstance(opened, SqliteBackend)
        yield opened


def raw(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    """A plain connection, as another program would open the file."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)


def query(path: Path, sql: str, params: Sequence[object] = ()) -> list[Any]:
    """Run one statement on a connection of its own; its rows."""
    with closing(raw(path)) as conn:
        return conn.execute(sql, params).fetchall()


def script(path: Path, sql: str) -> None:
    """Run statements on a connection of its own, as another program would."""
    with closing(raw(path)) as conn:
        conn.executescript(sql)


# -- the URL ---------------------------------------------------------------------------


def test_three_slashes_give_a_path_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_broker("sqlite:///sub/pluq.db") as broker:
        assert isinstance(broker, SqliteBroker)
        monkeypatch.chdir("/")  # the path was resolved when the URL was opened
        broker.publish("q", b"m", id="1")
        assert broker.path == str(tmp_path / "sub" / "pluq.db")
    assert (tmp_path / "sub" / "pluq.db").is_file()


def test_four_slashes_give_an_absolute_path(tmp_path: Path) -> None:
    with open_broker(f"sqlite:///{tmp_path}/abs.db") as broker:
        assert isinstance(broker, SqliteBroker)
        assert broker.path == str(tmp_path / "abs.db")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite://pluq.db", "sqlite:///d/"])
def test_a_url_without_a_file_path_shows_both_forms(url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        open_broker(url)
    assert "sqlite:///relative/path.db" in str(raised.value)
    assert "sqlite:////absolute/path.db" in str(raised.value)


def test_an_in_memory_database_points_to_memory_transport() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        open_broker("sqlite:///:memory:")


def test_an_old_sqlite_library_is_a_clear_error(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 34, 1))
    with pytest.raises(ConfigurationError, match=r"needs SQLite 3\.35\.0 or newer"):
        open_broker(url)


def test_an_unknown_option_is_an_error_that_lists_the_known_ones(url: str) -> None:
    with pytest.raises(ConfigurationError, match="colour") as raised:
        open_broker(f"{url}?colour=red")
    assert "busy_timeout" in str(raised.value)


@pytest.mark.parametrize(
    "query",
    [
        "busy_timeout=0",
        "busy_timeout=soon",
        "dedupe_window=-1",
        "synchronous=sometimes",
        'prefix=a"b',
        "prefix=a b",
    ],
)
def test_a_bad_option_value_is_an_error(url: str, query: str) -> None:
    with pytest.raises(ConfigurationError, match=query.partition("=")[0]):
        open_broker(f"{url}?{query}")


def test_synchronous_full_is_applied_to_every_connection(url: str) -> None:
    with open_broker(f"{url}?synchronous=full") as broker:
        assert isinstance(broker, SqliteBroker)
        results: list[int] = []

        def read() -> None:
            results.append(broker._db.conn().execute("PRAGMA synchronous").fetchone()[0])

        thread = threading.Thread(target=read)
        thread.start()
        thread.join(WAIT)
        read()
    assert results == [2, 2]  # FULL


# -- the file --------------------------------------------------------------------------


def test_files_are_private_to_their_owner(tmp_path: Path) -> None:
    path = tmp_path / "new" / "deeper" / "pluq.db"
    with open_broker(f"sqlite:///{path}") as broker:
        broker.publish("q", b"m", id="1")  # a write: the -wal and -shm files exist now
        for name in ("pluq.db", "pluq.db-wal", "pluq.db-shm"):
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    for directory in (tmp_path / "new", path.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_the_file_is_in_wal_mode(broker: SqliteBroker, db_path: Path) -> None:
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_random_bytes_are_a_clear_error_naming_the_file(db_path: Path) -> None:
    db_path.write_bytes(os.urandom(8192))
    with pytest.raises(ConfigurationError, match="not a SQLite database") as raised:
        open_broker(f"sqlite:///{db_path}")
    assert str(db_path) in str(raised.value)
    with pytest.raises(ConfigurationError, match=str(db_path)):
        open_backend(f"sqlite:///{db_path}")


def test_a_directory_is_a_clear_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(ConfigurationError, match=str(tmp_path / "dir.db")):
        open_broker(f"sqlite:///{tmp_path}/dir.db")


def test_a_sqlite_file_with_other_tables_is_fine(db_path: Path, clock: ManualClock) -> None:
    script(db_path, "CREATE TABLE customers (name TEXT); INSERT INTO customers VALUES ('ada');")
    with open_broker(f"sqlite:///{db_path}", clock=clock) as broker:
        assert broker.publish("q", b"m", id="1") is True
        assert [d.id for d in broker.reserve(["q"], timeout=0, lease=30)] == ["1"]
    assert query(db_path, "SELECT name FROM customers") == [("ada",)]


def test_tables_that_pluq_did_not_create_are_refused(db_path: Path) -> None:
    script(db_path, "CREATE TABLE pluq_messages (anything TEXT)")
    with pytest.raises(ConfigurationError, match="pluq_messages") as raised:
        open_broker(f"sqlite:///{db_path}")
    assert "prefix" in str(raised.value)
    assert str(db_path) in str(raised.value)
    # another prefix in the same file is fine
    with open_broker(f"sqlite:///{db_path}?prefix=other_") as broker:
        assert broker.publish("q", b"m", id="1") is True


def test_lost_tables_are_a_transport_error_naming_the_file(
    broker: SqliteBroker, db_path: Path
) -> None:
    broker.publish("q", b"m", id="1")
    script(db_path, "DROP TABLE pluq_messages")
    with pytest.raises(TransportError, match="lost pluq's tables") as raised:
        broker.publish("q", b"m", id="2")
    assert str(db_path) in str(raised.value)


def test_a_closed_instance_reopens_when_used_again(broker: SqliteBroker) -> None:
    broker.publish("q", b"m", id="1")
    broker.close()
    assert broker.publish("q", b"m", id="2") is True
    assert broker.counts(["q"]) == {"q": QueueCounts(ready=2)}


# -- readable without pluq -------------------------------------------------------------


def test_tables_are_readable_with_sqlite_utils(
    broker: SqliteBroker, backend: SqliteBackend, db_path: Path, clock: ManualClock
) -> None:
    broker.publish("emails", b"\x00payload", id="m1")
    record = TaskRecord(
        id="t1",
        state=SUCCESS,
        task="mail.send",
        queue="emails",
        result={"sent": 3},
        result_encoding="json",
        retries=1,
        history=(Attempt(number=1, state="RETRY", exc_type="OSError"),),
        meta={"group": "g1"},
    )
    backend.put(record, expires=60)

    with sqlite_utils.Database(db_path) as db:
        tables = set(db.table_names())
        messages, results = (
            list(db.table("pluq_messages").rows),
            list(db.table("pluq_results").rows),
        )
    assert {"pluq_meta", "pluq_messages", "pluq_results", "pluq_counters"} <= tables
    [message] = messages
    assert (message["id"], message["queue"], message["state"]) == ("m1", "emails", "ready")
    assert message["message"] == b"\x00payload"
    [row] = results
    columns = ["id", "state", "task", "queue", "retries", "updated_at", "expires_at", "record"]
    assert list(row) == columns
    assert [row[c] for c in columns[:5]] == ["t1", SUCCESS, "mail.send", "emails", 1]
    assert (row["updated_at"], row["expires_at"]) == (clock(), clock() + 60)
    assert TaskRecord.from_json(row["record"]) == record


def test_the_sqlite_utils_command_in_the_docstring_works(
    backend: SqliteBackend, db_path: Path
) -> None:
    backend.put(TaskRecord(id="t1", state=SUCCESS, task="add"), expires=60)
    shown = subprocess.run(  # `sqlite-utils rows pluq.db pluq_results`
        [sys.executable, "-m", "sqlite_utils", "rows", str(db_path), "pluq_results"],
        capture_output=True,
        check=True,
        text=True,
        timeout=WAIT,
    )
    [row] = json.loads(shown.stdout)
    assert (row["id"], row["state"], row["task"]) == ("t1", SUCCESS, "add")


def test_a_prefix_names_the_tables_and_isolates_tenants(db_path: Path, clock: ManualClock) -> None:
    with (
        open_broker(f"sqlite:///{db_path}?prefix=a_", clock=clock) as a,
        open_broker(f"sqlite:///{db_path}?prefix=b_", clock=clock) as b,
    ):
        assert a.publish("q", b"m", id="1") is True
        assert b.reserve(["q"], timeout=0, lease=30) == []
        assert b.publish("q", b"m", id="1") is True  # ids are per tenant too
    with sqlite_utils.Database(db_path) as db:
        names = set(db.table_names())
    assert {"a_messages", "b_messages", "a_results", "b_results"} <= names


def test_broker_and_backend_may_share_one_file(
    broker: SqliteBroker, backend: SqliteBackend, clock: ManualClock
) -> None:
    broker.publish("q", b"m", id="t1")
    [delivery] = broker.reserve(["q"], timeout=0, lease=30)
    backend.put(TaskRecord(id="t1", state=SUCCESS), expires=60)
    broker.ack(delivery)
    got = backend.get("t1")
    assert got is not None and got.state == SUCCESS
    assert broker.counts(["q"]) == {"q": QueueCounts()}


# -- schema versions -------------------------------------------------------------------

_V1 = """
CREATE TABLE "pluq_meta" ("key" TEXT PRIMARY KEY, "value" TEXT);
INSERT INTO "pluq_meta" VALUES ('schema_version', '1');
CREATE TABLE "pluq_messages" ("seq" INTEGER PRIMARY KEY, "id" TEXT NOT NULL,
  "queue" TEXT NOT NULL, "state" TEXT NOT NULL, "message" BLOB,
  "attempt" INTEGER NOT NULL DEFAULT 0, "until" REAL, "lease_id" TEXT, "reason" TEXT,
  "dead_at" REAL, "published_at" REAL);
CREATE UNIQUE INDEX "pluq_messages_id" ON "pluq_messages"(id);
CREATE INDEX "pluq_messages_ready" ON "pluq_messages"(queue, seq) WHERE state='ready';
CREATE INDEX "pluq_messages_waiting" ON "pluq_messages"(until)
  WHERE state IN ('delayed', 'leased');
CREATE INDEX "pluq_messages_done" ON "pluq_messages"(until) WHERE state='done';
CREATE INDEX "pluq_messages_dead" ON "pluq_messages"(dead_at) WHERE state='dead';
CREATE TABLE "pluq_queues" ("name" TEXT PRIMARY KEY);
CREATE TABLE "pluq_workers" ("id" TEXT PRIMARY KEY, "hostname" TEXT, "pid" INTEGER,
  "heartbeat_at" REAL, "expires_at" REAL, "info" TEXT);
CREATE TABLE "pluq_results" ("id" TEXT PRIMARY KEY, "expires_at" REAL, "record" TEXT);
CREATE TABLE "pluq_counters" ("key" TEXT PRIMARY KEY, "value" INTEGER, "expires_at" REAL);
"""
"""Version 1 of the layout, written out by hand as a pluq of that version left it."""


def test_an_older_schema_is_upgraded_when_opened(db_path: Path, clock: ManualClock) -> None:
    # Given a version 1 file with a queued message and a stored result
    record = TaskRecord(id="t1", state=STARTED, task="add", queue="q", retries=2, started_at=5.0)
    with closing(raw(db_path)) as conn:
        conn.executescript(_V1)
        conn.execute(
            "INSERT INTO pluq_messages (id, queue, state, message) VALUES ('m1', 'q', 'ready', ?)",
            (b"body",),
        )
        conn.execute(
            "INSERT INTO pluq_results VALUES ('t1', ?, ?)", (clock() + 60, record.to_json())
        )
    # When this pluq opens it
    with (
        open_backend(f"sqlite:///{db_path}", clock=clock) as backend,
        open_broker(f"sqlite:///{db_path}", clock=clock) as broker,
    ):
        # Then the data survived and the new readable columns are filled in
        assert backend.get("t1") == record
        [delivery] = broker.reserve(["q"], timeout=0, lease=30)
        assert (delivery.id, delivery.message) == ("m1", b"body")
    assert query(db_path, "SELECT value FROM pluq_meta") == [(str(SCHEMA_VERSION),)]
    readable = query(db_path, "SELECT state, task, queue, retries, updated_at FROM pluq_results")
    assert readable == [(STARTED, "add", "q", 2, 5.0)]


def test_a_newer_schema_is_refused(db_path: Path) -> None:
    script(
        db_path,
        "CREATE TABLE pluq_meta (key TEXT PRIMARY KEY, value TEXT);"
        "INSERT INTO pluq_meta VALUES ('schema_version', '99');",
    )
    with pytest.raises(ConfigurationError, match="newer") as raised:
        open_broker(f"sqlite:///{db_path}")
    assert str(db_path) in str(raised.value)


def test_concurrent_openers_create_the_schema_once(url: str) -> None:
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def open_and_publish(n: int) -> None:
        try:
            start.wait(WAIT)
            with open_broker(url) as broker:
                broker.publish("q", b"m", id=str(n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_and_publish, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert errors == []
    with open_broker(url) as broker:
        assert broker.counts(["q"]) == {"q": QueueCounts(ready=4)}


# -- locks, threads and processes ------------------------------------------------------


def test_publish_waits_for_a_writer_that_holds_the_lock(
    broker: SqliteBroker, db_path: Path
) -> None:
    # Given another connection holding the write lock for ~2 s
    locker = raw(db_path, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    unlock = threading.Timer(2.0, locker.execute, args=("COMMIT",))
    unlock.start()
    try:
        # When we publish, then the call waits for the lock and succeeds
        started = time.monotonic()
        assert broker.publish("q", b"m", id="1") is True
        assert time.monotonic() - started > 1.0
    finally:
        unlock.join(WAIT)
        locker.close()
    assert broker.counts(["q"]) == {"q": QueueCounts(ready=1)}


def test_a_lock_held_past_busy_timeout_is_a_clear_error(db_path: Path, url: str) -> None:
    with open_broker(f"{url}?busy_timeout=0.2") as broker:
        locker = raw(db_path)
        locker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(TransportError, match="busy_timeout") as raised:
                broker.publish("q", b"m", id="1")
            assert str(db_path) in str(raised.value)
        finally:
            locker.execute("COMMIT")
            locker.close()
        # nothing was half-written, and the broker works once the lock is gone
        assert broker.publish("q", b"m", id="1") is True
        assert broker.counts(["q"]) == {"q": QueueCounts(ready=1)}


def test_an_idle_consumer_never_waits_for_the_write_lock(db_path: Path, url: str) -> None:
    # Given a producer that holds the write lock, and an empty queue
    with open_broker(f"{url}?busy_timeout=0.1") as broker:
        locker = raw(db_path)
        locker.execute("BEGIN IMMEDIATE")
        try:
            # When a consumer waits for work, then it only reads: no lock error, no work
            assert broker.reserve(["q"], timeout=0.5, lease=30) == []
        finally:
            locker.execute("COMMIT")
            locker.close()


def test_reserve_wakes_when_a_delayed_message_comes_due(broker_on_real_clock: SqliteBroker) -> None:
    broker_on_real_clock.publish("q", b"m", id="1", not_before=time.time() + 0.2)
    started = time.monotonic()
    [delivery] = broker_on_real_clock.reserve(["q"], timeout=WAIT, lease=30)
    assert delivery.id == "1"
    assert 0.15 < time.monotonic() - started < WAIT


def test_threads_share_an_instance_with_a_connection_each(url: str) -> None:
    per_thread, threads = 100, 3
    expected = {f"{p}-{n}" for p in range(threads) for n in range(per_thread)}
    seen: list[str] = []
    seen_lock, done = threading.Lock(), threading.Event()
    errors: list[BaseException] = []

    with open_broker(url) as broker:

        def produce(p: int) -> None:
            try:
                for n in range(per_thread):
                    broker.publish("q", b"m", id=f"{p}-{n}")
            except BaseException as exc:  # reported below
                errors.append(exc)

        def consume() -> None:
            try:
                while not done.is_set():
                    for delivery in broker.reserve(["q"], timeout=0.05, lease=60, limit=5):
                        broker.ack(delivery)
                        with seen_lock:
                            seen.append(delivery.id)
                            if len(seen) == len(expected):
                                done.set()
            except BaseException as exc:  # reported below
                errors.append(exc)
                done.set()

        workers = [threading.Thread(target=produce, args=(p,)) for p in range(threads)]
        workers += [threading.Thread(target=consume) for _ in range(threads)]
        for worker in workers:
            worker.start()
        assert done.wait(WAIT), f"consumed {len(seen)} of {len(expected)}"
        for worker in workers:
            worker.join(WAIT)
    assert errors == []
    assert sorted(seen) == sorted(expected)  # each message exactly once


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX-only")
def test_a_forked_child_opens_its_own_connection(broker: SqliteBroker) -> None:
    broker.publish("q", b"from parent", id="1")  # the parent's connection is open now
    pid = os.fork()
    if pid == 0:  # the child: use the inherited instance, then leave without cleanup
        code = 1
        try:
            if broker._db._conns:  # the inherited connection must not be used here
                code = 3
            else:
                code = 0 if broker.publish("q", b"from child", id="2") else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the parent's connection still works and sees the child's message
    deliveries = broker.reserve(["q"], timeout=0, lease=30, limit=2)
    assert [d.message for d in deliveries] == [b"from parent", b"from child"]


# -- housekeeping ----------------------------------------------------------------------


def done_rows(path: Path) -> int:
    return int(query(path, "SELECT count(*) FROM pluq_messages WHERE state = 'done'")[0][0])


def test_acked_ids_are_forgotten_after_the_dedupe_window(
    url: str, db_path: Path, clock: ManualClock
) -> None:
    with open_broker(f"{url}?dedupe_window=10", clock=clock) as broker:
        broker.publish("q", b"m", id="1")
        [delivery] = broker.reserve(["q"], timeout=0, lease=30)
        broker.ack(delivery)
        assert broker.publish("q", b"m", id="1") is False
        assert done_rows(db_path) == 1
        clock.advance(10)
        # the id is free again, and the sweep in a later ack removes old tombstones
        broker.publish("q", b"m", id="2")
        [delivery] = broker.reserve(["q"], timeout=0, lease=30)
        broker.ack(delivery)
        assert done_rows(db_path) == 1  # only "2" is still remembered
        assert broker.publish("q", b"m", id="1") is True


def test_get_deletes_an_expired_record(
    backend: SqliteBackend, db_path: Path, clock: ManualClock
) -> None:
    backend.put(TaskRecord(id="t1", state=SUCCESS), expires=1)
    clock.advance(1)
    assert backend.get("t1") is None
    assert query(db_path, "SELECT count(*) FROM pluq_results") == [(0,)]


def test_puts_sweep_expired_records_as_they_go(
    backend: SqliteBackend, db_path: Path, clock: ManualClock
) -> None:
    backend.put(TaskRecord(id="old", state=SUCCESS), expires=10)
    backend.incr("counter", expires=10)
    clock.advance(60)
    backend.put(TaskRecord(id="new", state=SUCCESS), expires=10)
    assert query(db_path, "SELECT id FROM pluq_results") == [("new",)]
    assert query(db_path, "SELECT count(*) FROM pluq_counters") == [(0,)]
