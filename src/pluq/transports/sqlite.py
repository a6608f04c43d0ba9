"""SQLite transport: queues and task records in one local SQLite file, in WAL mode.

Features:
    - Broker and ResultBackend; several producer and worker processes (and their threads)
      share one file on one host. Capabilities: shared between processes, not between
      hosts (WAL does not work over a network file system), durable.
    - A claim is one indexed ``UPDATE ... RETURNING`` inside ``BEGIN IMMEDIATE``: a message
      is never only in a worker's memory. Delayed messages that came due and expired leases
      become ready in the same transaction, so no daemon is needed. Needs SQLite 3.35 or
      newer (``sqlite3.sqlite_version``) for ``RETURNING``. ``publish_many``,
      ``ack_many`` and ``put_many`` each write their whole batch in one transaction.
    - ``reserve`` and ``ResultBackend.wait`` wait adaptively: they read ``PRAGMA
      data_version`` (a cheap read that changes when another connection commits) after 1 ms,
      then less and less often (x1.5 each time, at most every 50 ms) while nothing changes,
      and fast again after a change. A commit from this process (any thread, any instance
      on the same file) wakes them at once; they also wake at the next ``not_before`` or
      lease deadline. Idle, a blocked ``reserve`` costs well under 1 % of a core; a publish
      from another process is seen within the current interval (a few ms under load, up
      to 50 ms after a long idle spell). A waiter with nothing to claim only reads: it
      takes the write lock only when there is a message to lease.
    - Another connection that holds the write lock makes callers wait (``busy_timeout``,
      then a bounded retry with backoff), never lose a message; after ``busy_timeout``
      seconds the call fails with a ``TransportError`` naming the file.
    - One connection per thread. A forked child that uses an instance opens connections of
      its own and never uses or closes the inherited ones, as SQLite asks. SQLite's lock
      bookkeeping is per process and fork() copies it, though: for children that use the
      file and may outlive their parent, prefer the spawn or forkserver start method.

URL grammar (SQLAlchemy's rule):
    sqlite:///relative/path.db[?option=value&...]    relative to the current directory
    sqlite:////absolute/path.db[?option=value&...]   absolute (four slashes)

    The default broker of pluq is ``sqlite:///pluq.db``. A broker and a backend may use the
    same URL (one file, separate tables) or different files.

Options:
    prefix          prepended to every table name (default ``pluq_``): tenants in one file.
    dedupe_window   seconds an acknowledged or cancelled id stays known to ``publish``
                    (default 300).
    busy_timeout    seconds a call waits for another connection's write lock before it
                    fails (default 30).
    synchronous     ``normal`` (default) or ``full``; see Durability.

Layout (tables, shown with the default prefix):
    pluq_meta       key, value: ``schema_version`` (see Schema versions).
    pluq_messages   one row per message id: seq (the order of the ready queue), id, queue,
                    state, message (BLOB), attempt, until, lease_id, reason, dead_at,
                    published_at. state is ``ready``; ``delayed`` (until = not_before);
                    ``leased`` (until = lease deadline); ``dead`` (with reason); or ``done``,
                    an acknowledged or cancelled id kept without its bytes until ``until``
                    so that ``publish`` still knows it (pruned as acks go on).
    pluq_queues     every queue name ever published to (``counts()`` lists them).
    pluq_workers    id, hostname, pid, heartbeat_at, expires_at, info (WorkerInfo JSON).
    pluq_results    id, state, task, queue, retries, updated_at, expires_at, record (the
                    ``TaskRecord.to_json()`` document).
    pluq_counters   key, value, expires_at (group and chord counters).

    A message joins the back of its queue (takes the next seq) whenever it becomes ready:
    on publish, release, when its not_before comes, when its lease expires and on
    retry_dead, as ``memory://`` does. An expired lease keeps its lease_id until the next
    reservation, so its old holder may still ack, release, dead-letter or extend it; it
    counts as ready, and ``purge`` and ``cancel`` take it like a ready message. ``purge``
    and ``purge_dead`` delete rows: their ids are forgotten at once.

    Read it without pluq::

        sqlite-utils tables pluq.db --counts
        sqlite-utils rows pluq.db pluq_messages
        sqlite-utils query pluq.db "select id, state, retries, updated_at from pluq_results"

Durability: a transaction is committed before a call returns. In WAL mode with
``synchronous=normal`` a committed transaction survives the crash of any process; after a
power loss or an operating-system crash the last transactions committed before it may be
rolled back (the file stays consistent). ``synchronous=full`` makes every commit survive a
power loss too, at the cost of an fsync per commit. Expired records are deleted when read
and swept as writes go on. The file and its -wal and -shm companions are created 0600, and
missing parent directories 0700.

Schema versions: ``pluq_meta.schema_version`` counts the steps of ``_STEPS`` applied to
the file. Opening a file runs the missing steps (in one ``BEGIN IMMEDIATE`` transaction,
so concurrent openers apply them once); a file from a newer pluq is refused. A SQLite file
with unrelated tables is fine: pluq adds its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, replace
from functools import cache
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar

from pluq.backend import ResultBackend, TaskRecord
from pluq.broker import (
    Broker,
    Capabilities,
    Clock,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueCounts,
    WorkerInfo,
    make_delivery,
)
from pluq.errors import ConfigurationError, LeaseLost, TransportError
from pluq.registry import URL

if TYPE_CHECKING:
    import sqlite_utils

__all__ = ["SqliteBackend", "SqliteBroker", "SqliteTransport"]

T = TypeVar("T")

DEFAULT_PREFIX: Final = "pluq_"
DEFAULT_DEDUPE_WINDOW: Final = 300.0
DEFAULT_BUSY_TIMEOUT: Final = 30.0
_POLL_MIN: Final = 0.001
_POLL_MAX: Final = 0.05
_POLL_GROWTH: Final = 1.5
_SWEEP_EVERY: Final = 5.0
"""Clock seconds between two sweeps of forgotten ids, expired records and workers."""
_MIN_SQLITE: Final = (3, 35, 0)
_CHUNK: Final = 500
"""Ids per `IN (...)` list, well under SQLite's limit on bound variables."""
_CAPABILITIES: Final = Capabilities(
    shared_between_processes=True, shared_between_hosts=False, durable=True
)
_FORMS: Final = (
    "write sqlite:///relative/path.db (relative to the current directory) or "
    "sqlite:////absolute/path.db (four slashes)"
)

# -- URL -------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise ValueError("expected a number of seconds >= 0")
    return value


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("expected a number of seconds > 0")
    return value


def _prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:-]*", text):
        raise ValueError("use only letters, digits and _ . : -")
    return text


def _synchronous(text: str) -> str:
    if text.lower() not in ("normal", "full"):
        raise ValueError('expected "normal" or "full"')
    return text.upper()


_OPTIONS: Final = {
    "prefix": _prefix,
    "dedupe_window": _seconds,
    "busy_timeout": _positive_seconds,
    "synchronous": _synchronous,
}


def _database_path(url: URL) -> str:
    """The absolute file path a sqlite:// URL names (resolved against the current dir)."""
    if url.host or url.port or url.username:
        raise ConfigurationError(
            f"{url.redacted}: a sqlite:// URL names a file, not a host; {_FORMS}"
        )
    path = url.path[1:]  # the slash that ends the (empty) host part
    if not path or path.endswith("/"):
        raise ConfigurationError(f"{url.redacted}: the URL names no database file; {_FORMS}")
    if path == ":memory:":
        raise ConfigurationError(
            f"{url.redacted}: an in-memory SQLite database cannot be shared between threads "
            f"and processes; use memory:// for in-process queues, or {_FORMS}"
        )
    return os.path.abspath(path)


def _create_private_file(path: str) -> None:
    """Create `path` 0600 (and missing parent directories 0700) unless it exists.

    SQLite gives the -wal and -shm files the permissions of the database file.
    """
    missing: list[str] = []
    directory = os.path.dirname(path)
    while directory and not os.path.isdir(directory):
        missing.append(directory)
        directory = os.path.dirname(directory)
    try:
        for directory in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o700)
        # O_EXCL: never open (and so close) a database that exists. Closing any descriptor
        # of a file drops every POSIX lock this process holds on it, SQLite's included,
        # and another process may then checkpoint and delete the WAL under our feet.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        return
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create or open the SQLite database {path} ({exc.strerror}); check that "
            f"the path is a file in a directory this user may write to"
        ) from exc


# -- schema ----------------------------------------------------------------------------


def _v1(db: sqlite_utils.Database, p: str) -> None:
    """The first layout: messages, queues, workers, counters; results as JSON only."""
    m = f'"{p}messages"'
    messages: dict[str, type] = {"seq": int, "id": str, "queue": str, "state": str}
    messages |= {"message": bytes, "attempt": int, "until": float, "lease_id": str}
    messages |= {"reason": str, "dead_at": float, "published_at": float}
    not_null = ["id", "queue", "state", "attempt"]
    sql = db.create_table_sql(
        f"{p}messages", messages, pk="seq", not_null=not_null, defaults={"attempt": 0}
    )
    db.execute(sql)
    db.execute(f'CREATE UNIQUE INDEX "{p}messages_id" ON {m}(id)')
    # Partial indexes: each holds only the rows one hot statement looks for.
    db.execute(f"CREATE INDEX \"{p}messages_ready\" ON {m}(queue, seq) WHERE state='ready'")
    waiting = "WHERE state IN ('delayed', 'leased')"
    db.execute(f'CREATE INDEX "{p}messages_waiting" ON {m}(until) {waiting}')
    db.execute(f"CREATE INDEX \"{p}messages_done\" ON {m}(until) WHERE state='done'")
    db.execute(f"CREATE INDEX \"{p}messages_dead\" ON {m}(dead_at) WHERE state='dead'")
    workers: dict[str, type] = {"id": str, "hostname": str, "pid": int, "heartbeat_at": float}
    workers |= {"expires_at": float, "info": str}
    tables: list[tuple[str, dict[str, type], str]] = [
        ("queues", {"name": str}, "name"),
        ("workers", workers, "id"),
        ("results", {"id": str, "expires_at": float, "record": str}, "id"),
        ("counters", {"key": str, "value": int, "expires_at": float}, "key"),
    ]
    for name, columns, pk in tables:
        db.execute(db.create_table_sql(f"{p}{name}", columns, pk=pk))


def _v2(db: sqlite_utils.Database, p: str) -> None:
    """Results gain readable columns beside the JSON (rebuilt, to keep `record` last)."""
    old, new = f"{p}results", f"{p}results_v2"
    columns: dict[str, type] = {"id": str, "state": str, "task": str, "queue": str}
    columns |= {"retries": int, "updated_at": float, "expires_at": float, "record": str}
    db.execute(db.create_table_sql(new, columns, pk="id"))

    def field(name: str) -> str:
        return f"json_extract(record, '$.{name}')"

    updated = f"coalesce({field('finished_at')}, {field('started_at')}, {field('created_at')})"
    readable = ", ".join(field(name) for name in ("state", "task", "queue", "retries"))
    db.execute(
        f'INSERT INTO "{new}" SELECT id, {readable}, {updated}, expires_at, record FROM "{old}"'
    )
    db.execute(f'DROP TABLE "{old}"')
    db.execute(f'ALTER TABLE "{new}" RENAME TO "{old}"')
    db.execute(f'CREATE INDEX "{p}results_expires_at" ON "{old}"(expires_at)')
    db.execute(f'CREATE INDEX "{p}counters_expires_at" ON "{p}counters"(expires_at)')


_STEPS: Final[tuple[Callable[[sqlite_utils.Database, str], None], ...]] = (_v1, _v2)
SCHEMA_VERSION: Final = len(_STEPS)
_TABLES: Final = ("messages", "queues", "workers", "results", "counters")


class _Sql:
    """Every statement for one prefix, built once: the sqlite3 module caches them prepared."""

    def __init__(self, p: str) -> None:
        m, r, c, w = f'"{p}messages"', f'"{p}results"', f'"{p}counters"', f'"{p}workers"'
        held = "id = :id AND lease_id = :lease_id AND state IN ('leased', 'ready')"
        back = f"(SELECT max(seq) FROM {m}) + 1"  # the back of every queue
        self.version = f"SELECT value FROM \"{p}meta\" WHERE key = 'schema_version'"
        self.publish = (
            f"INSERT INTO {m} (id, queue, state, message, until, published_at) "
            f"VALUES (:id, :queue, :state, :message, :until, :now) ON CONFLICT (id) DO UPDATE "
            f"SET queue = excluded.queue, state = excluded.state, message = excluded.message, "
            f"until = excluded.until, published_at = excluded.published_at, attempt = 0, "
            f"lease_id = NULL, reason = NULL, dead_at = NULL, seq = {back} "
            f"WHERE {m}.state = 'done' AND {m}.until <= :now"
        )
        self.register_queue = f'INSERT OR IGNORE INTO "{p}queues" (name) VALUES (?)'
        self.due = (
            f"SELECT seq FROM {m} WHERE state IN ('delayed', 'leased') AND until <= ? "
            f"ORDER BY until, seq"
        )
        self.promote = f"UPDATE {m} SET state = 'ready', until = NULL, seq = {back} WHERE seq = ?"
        self.claim = (
            f"UPDATE {m} SET state = 'leased', until = :deadline, attempt = attempt + 1, "
            f"lease_id = lower(hex(randomblob(16))) WHERE seq IN (SELECT seq FROM {m} "
            f"WHERE queue = :queue AND state = 'ready' ORDER BY seq LIMIT :limit) "
            f"RETURNING seq, id, message, attempt, lease_id"
        )
        self.next_due = f"SELECT min(until) FROM {m} WHERE state IN ('delayed', 'leased')"
        self.ack = (
            f"UPDATE {m} SET state = 'done', message = NULL, until = :forget_at, "
            f"lease_id = NULL WHERE {held}"
        )
        self.release = (
            f"UPDATE {m} SET state = :state, until = :until, lease_id = NULL, "
            f"message = coalesce(:message, message), seq = {back} WHERE {held}"
        )
        self.dead_letter = (
            f"UPDATE {m} SET state = 'dead', reason = :reason, dead_at = :now, until = NULL, "
            f"lease_id = NULL, message = coalesce(:message, message) WHERE {held}"
        )
        self.extend = f"UPDATE {m} SET state = 'leased', until = :deadline WHERE {held}"
        self.cancel = (
            f"UPDATE {m} SET state = 'done', message = NULL, until = :forget_at, "
            f"lease_id = NULL WHERE id = :id AND (state IN ('ready', 'delayed') "
            f"OR (state = 'leased' AND until <= :now))"
        )
        self.sweep_done = f"DELETE FROM {m} WHERE state = 'done' AND until <= ?"
        self.counts = (
            f"SELECT queue, "
            f"sum(state = 'ready' OR (state IN ('delayed', 'leased') AND until <= :now)), "
            f"sum(state = 'delayed' AND until > :now), sum(state = 'leased' AND until > :now), "
            f"sum(state = 'dead') FROM {m} WHERE state != 'done' GROUP BY queue"
        )
        self.purge = (
            f"DELETE FROM {m} WHERE queue = :queue AND (state IN ('ready', 'delayed') "
            f"OR (state = 'leased' AND until <= :now))"
        )
        self.dead_letters = (
            f"SELECT id, queue, message, reason, attempt, dead_at FROM {m} "
            f"WHERE state = 'dead' AND (:queue IS NULL OR queue = :queue) ORDER BY dead_at, seq"
        )
        self.dead_seqs = f"SELECT seq FROM {m} WHERE state = 'dead' ORDER BY dead_at, seq"
        self.dead_seqs_of = f"SELECT dead_at, seq FROM {m} WHERE state = 'dead' AND id IN "
        self.revive = (
            f"UPDATE {m} SET state = 'ready', reason = NULL, dead_at = NULL, until = NULL, "
            f"seq = {back} WHERE seq = ?"
        )
        self.purge_dead = f"DELETE FROM {m} WHERE state = 'dead'"
        self.sweep_workers = f"DELETE FROM {w} WHERE expires_at <= ?"
        self.heartbeat = (
            f"INSERT INTO {w} (id, hostname, pid, heartbeat_at, expires_at, info) "
            f"VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            f"hostname = excluded.hostname, pid = excluded.pid, "
            f"heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at, "
            f"info = excluded.info"
        )
        self.unregister = f"DELETE FROM {w} WHERE id = ?"
        self.workers = f"SELECT info FROM {w} WHERE expires_at > ? ORDER BY rowid"
        self.peek = (
            f"SELECT (SELECT min(until) FROM {m} WHERE state IN ('delayed', 'leased')), "
            f"EXISTS (SELECT 1 FROM {m} WHERE state = 'ready' AND queue IN "
            f"(SELECT value FROM json_each(?)))"
        )
        self.queues = f'SELECT name FROM "{p}queues" ORDER BY rowid'
        self.get = f"SELECT record, expires_at FROM {r} WHERE id = ?"
        self.get_many = f"SELECT id, record, expires_at FROM {r} WHERE id IN "
        self.put = (
            f"INSERT INTO {r} (id, state, task, queue, retries, updated_at, expires_at, "
            f"record) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            f"state = excluded.state, task = excluded.task, queue = excluded.queue, "
            f"retries = excluded.retries, updated_at = excluded.updated_at, "
            f"expires_at = excluded.expires_at, record = excluded.record"
        )
        self.forget = f"DELETE FROM {r} WHERE id = ? RETURNING expires_at"
        self.incr = (
            f"INSERT INTO {c} (key, value, expires_at) VALUES (:key, :amount, :expires_at) "
            f"ON CONFLICT (key) DO UPDATE SET value = CASE WHEN {c}.expires_at <= :now "
            f"THEN excluded.value ELSE {c}.value + excluded.value END, "
            f"expires_at = excluded.expires_at RETURNING value"
        )
        self.sweep_results = f"DELETE FROM {r} WHERE expires_at <= ?"
        self.sweep_counters = f"DELETE FROM {c} WHERE expires_at <= ?"
        self.drop_expired = f"DELETE FROM {r} WHERE id = ? AND expires_at <= ?"


_statements = cache(_Sql)


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _marks(count: int) -> str:
    return ", ".join("?" * count)


# -- the file --------------------------------------------------------------------------


class _Changes:
    """Commits made in this process to one file: wakes its waiters without polling."""

    __slots__ = ("__weakref__", "cond", "generation")

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.generation = 0


_instances: weakref.WeakSet[_Database] = weakref.WeakSet()
_changes: weakref.WeakValueDictionary[str, _Changes] = weakref.WeakValueDictionary()
_changes_lock = threading.Lock()
_inherited: list[sqlite3.Connection] = []
"""Connections a forked child inherited, never to be closed there: closing one runs
SQLite code on state shared with the parent (a rollback rewrites the shared WAL index;
a mutex held by a parent thread at fork time would hang the child)."""


def _changes_of(path: str) -> _Changes:
    with _changes_lock:
        changes = _changes.get(path)
        if changes is None:
            changes = _changes[path] = _Changes()
        return changes


def _before_fork() -> None:
    # The child keeps inherited connections alive with ctypes; importing it here, once,
    # spares each child the import.
    if any(database.has_connections() for database in list(_instances)):
        import ctypes  # noqa: F401


def _after_fork_in_child() -> None:
    # Another thread may have held a lock at fork time; in the child it never returns.
    global _changes_lock
    _changes_lock = threading.Lock()
    for changes in list(_changes.values()):
        changes.cond = threading.Condition()
    inherited = [conn for database in list(_instances) for conn in database.forget_connections()]
    _inherited.extend(inherited)
    if inherited:
        try:
            import ctypes

            # One extra reference each: not even the interpreter's shutdown closes them.
            for conn in inherited:
                ctypes.pythonapi.Py_IncRef(ctypes.py_object(conn))
        except (ImportError, AttributeError):  # not CPython: _inherited keeps them until exit
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _close_all(conns: dict[int, sqlite3.Connection]) -> None:
    """Close connections (of a closed or garbage-collected instance, or of dead threads)."""
    for conn in list(conns.values()):
        with contextlib.suppress(sqlite3.Error):
            conn.close()
    conns.clear()


_BAD_FILE: Final = ("SQLITE_NOTADB", "SQLITE_CORRUPT")
_CANNOT_OPEN: Final = ("SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_READONLY")


def _error_name(exc: sqlite3.Error) -> str:
    return str(getattr(exc, "sqlite_errorname", ""))


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED and their extended codes
    return "locked" in str(exc) or "busy" in str(exc)


class _Database:
    """One SQLite file as one broker or backend uses it: connections, retries, waiting."""

    def __init__(self, url: URL) -> None:
        options = url.options(_OPTIONS)
        self.path = _database_path(url)
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ConfigurationError(
                f"{url.redacted}: the sqlite:// transport needs SQLite "
                f"{'.'.join(map(str, _MIN_SQLITE))} or newer (for UPDATE ... RETURNING), but "
                f"this Python uses SQLite {sqlite3.sqlite_version}; use a newer Python build, "
                f"or another transport (file://, redis://)"
            )
        self.prefix: str = options.get("prefix", DEFAULT_PREFIX)
        self.dedupe_window: float = options.get("dedupe_window", DEFAULT_DEDUPE_WINDOW)
        self.busy_timeout: float = options.get("busy_timeout", DEFAULT_BUSY_TIMEOUT)
        self.synchronous: str = options.get("synchronous", "NORMAL")
        self.sql = _statements(self.prefix)
        self._lock = threading.Lock()
        self._conns: dict[int, sqlite3.Connection] = {}
        self._local = threading.local()
        self._changes = _changes_of(self.path)
        _create_private_file(self.path)
        _instances.add(self)
        # An instance dropped without close() still closes its connections (quietly).
        weakref.finalize(self, _close_all, self._conns)
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    # -- connections ---------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again after a fork)."""
        try:
            conn: sqlite3.Connection = self._local.conn
        except AttributeError:
            return self._connect()
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            # isolation_level=None: no implicit deferred BEGIN; every write transaction is
            # an explicit BEGIN IMMEDIATE, so the busy timeout applies to taking the lock.
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise self.error(exc) from exc
        try:
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
        except sqlite3.Error as exc:
            conn.close()
            raise self.error(exc) from exc
        me = threading.get_ident()
        with self._lock:
            # Close the connections of threads that ended (their idents are gone).
            alive = {thread.ident for thread in threading.enumerate()}
            ended = {i: c for i, c in self._conns.items() if i not in alive or i == me}
            for ident in ended:
                del self._conns[ident]
            _close_all(ended)
            self._conns[me] = conn
        self._local.conn = conn
        return conn

    def has_connections(self) -> bool:
        return bool(self._conns)

    def forget_connections(self) -> list[sqlite3.Connection]:
        """In a forked child: set the inherited connections aside (returned, never to be
        used or closed) and open new ones lazily."""
        inherited = list(self._conns.values())
        self._conns.clear()  # in place: the finalizer holds this dict
        self._local = threading.local()
        self._lock = threading.Lock()
        return inherited

    def close(self) -> None:
        with self._lock:
            self._local = threading.local()  # every thread reopens if used again
            _close_all(self._conns)

    # -- running statements --------------------------------------------------------------

    def run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """Run `fn` on this thread's connection, in a BEGIN IMMEDIATE transaction if `write`.

        A busy or locked database is retried with backoff until `busy_timeout` has passed
        (SQLite's own busy handler waits inside each attempt; some busy cases bypass it).
        """
        started = time.monotonic()
        pause = 0.005
        while True:
            conn = self.conn()
            try:
                if not write:
                    return fn(conn)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                    raise
                return result
            except sqlite3.Error as exc:
                if not _is_busy(exc):
                    raise self.error(exc) from exc
                waited = time.monotonic() - started
                if waited >= self.busy_timeout:
                    raise TransportError(
                        f"the SQLite database {self.path} stayed locked by another "
                        f"connection for {waited:.1f} s ({exc}); a process holds a long "
                        f"write transaction on it: find it (e.g. `fuser {self.path}`), or "
                        f"wait longer with ?busy_timeout=SECONDS in the URL"
                    ) from exc
                time.sleep(min(pause, self.busy_timeout - waited))
                pause = min(pause * 2, 0.1)

    def error(self, exc: sqlite3.Error) -> TransportError:
        """A pluq error for a driver error, naming the file and what to do."""
        name = _error_name(exc)
        what, todo = f"failed ({exc})", "see the SQLite error in parentheses"
        if name.startswith(_BAD_FILE):
            what = f"is not a SQLite database, or it is corrupt ({exc})"
            todo = "move the file away or point the URL at another file"
        elif name.startswith(_CANNOT_OPEN):
            what = f"cannot be opened for writing ({exc})"
            todo = "check that the file and its directory are writable by this user"
        elif name.startswith("SQLITE_FULL"):
            what, todo = f"cannot grow ({exc})", "free disk space"
        elif "no such table" in str(exc):
            what = f"has lost pluq's tables with prefix {self.prefix!r} ({exc})"
            todo = "was the file replaced or its tables dropped? open the URL again"
        elif isinstance(exc, sqlite3.ProgrammingError):
            todo = "the connection was closed while in use; open the URL again"
        return TransportError(f"the SQLite database {self.path} {what}; {todo}")

    # -- schema --------------------------------------------------------------------------

    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute(self.sql.version).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            if "no such column" in str(exc):
                raise ConfigurationError(
                    f"the SQLite database {self.path} has a table {self.prefix}meta that pluq "
                    f"did not create; use another prefix (?prefix=...) or another file"
                ) from exc
            raise
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        try:
            version = self.run(self._version)
            if version != SCHEMA_VERSION:
                self._check_version(version)
                # WAL sticks to the file; it cannot be switched inside a transaction.
                mode = self.run(lambda c: c.execute("PRAGMA journal_mode=WAL").fetchone()[0])
                if str(mode).lower() != "wal":
                    raise ConfigurationError(
                        f"the SQLite database {self.path} cannot use WAL mode (it stays in "
                        f"{mode!r} mode); keep it on a local file system"
                    )
                self.run(self._upgrade, write=True)
        except TransportError as exc:
            # A file that is not a database, or that cannot be opened, is a wrong URL.
            cause = exc.__cause__
            if isinstance(cause, sqlite3.Error) and _error_name(cause).startswith(
                _BAD_FILE + _CANNOT_OPEN
            ):
                raise ConfigurationError(str(exc)) from cause
            raise

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the SQLite database {self.path} has pluq schema version {version} (prefix "
                f"{self.prefix!r}), newer than this pluq knows ({SCHEMA_VERSION}); upgrade "
                f"pluq, or use another file or prefix"
            )

    def _upgrade(self, conn: sqlite3.Connection) -> None:
        import sqlite_utils  # slow to import; only needed to create or upgrade a schema

        db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        p = self.prefix
        meta = db.create_table_sql(f"{p}meta", {"key": str, "value": str}, pk="key")
        conn.execute(meta.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
        version = self._version(conn)  # again: another process may have upgraded it
        self._check_version(version)
        if version == 0:
            existing = set(db.table_names())
            clash = [f"{p}{t}" for t in _TABLES if f"{p}{t}" in existing]
            if clash:
                raise ConfigurationError(
                    f"the SQLite database {self.path} has table(s) {', '.join(clash)} that "
                    f"pluq did not create (no schema version in {p}meta); use another "
                    f"prefix (?prefix=...) or another file"
                )
        for step in _STEPS[version:]:
            step(db, p)
        conn.execute(
            f"INSERT OR REPLACE INTO \"{p}meta\" (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
        )

    # -- waiting -------------------------------------------------------------------------

    def mark(self) -> tuple[int, int]:
        """A token that changes when anyone commits (read it before looking for work)."""
        generation = self._changes.generation
        version = self.run(lambda c: int(c.execute("PRAGMA data_version").fetchone()[0]))
        return generation, version

    def wait_change(self, mark: tuple[int, int], seconds: float) -> tuple[int, int] | None:
        """Wait up to `seconds` (less if this process commits); the new mark if changed."""
        changes = self._changes
        with changes.cond:
            if changes.generation == mark[0] and seconds > 0:
                changes.cond.wait(seconds)
        now = self.mark()
        return None if now == mark else now

    def notify(self) -> None:
        """Wake this process's waiters on the file at once (others see data_version)."""
        changes = self._changes
        with changes.cond:
            changes.generation += 1
            changes.cond.notify_all()


def _lease_lost(delivery: Delivery) -> LeaseLost:
    return LeaseLost(
        f"the lease {delivery.lease_id} on message {delivery.id!r} of queue "
        f"{delivery.queue!r} is no longer held (it expired and the message was reserved "
        f"again, or it was already acknowledged, released or dead-lettered); do not act on "
        f"this delivery again"
    )


def _to_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TransportError(
            f"{what} cannot be stored: it is not JSON ({exc}); use JSON values only"
        ) from exc


# -- broker ----------------------------------------------------------------------------


class SqliteBroker(Broker):
    """Queues in a SQLite file; see the module docstring."""

    capabilities = _CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock) -> None:
        self._db = _Database(url)
        self._sql = self._db.sql
        self._clock = clock
        self._known_queues: set[str] = set()
        self._next_sweep = float("-inf")

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._db.path

    # -- producer side -------------------------------------------------------------------

    def _insert(self, conn: sqlite3.Connection, m: Outgoing, now: float) -> bool:
        delayed = m.not_before is not None and m.not_before > now
        params = {
            "id": m.id,
            "queue": m.queue,
            "state": "delayed" if delayed else "ready",
            "message": m.message,
            "until": m.not_before if delayed else None,
            "now": now,
        }
        return conn.execute(self._sql.publish, params).rowcount > 0

    def _publish(self, messages: list[Outgoing]) -> list[bool]:
        def publish(conn: sqlite3.Connection) -> list[bool]:
            now = self._clock()
            for queue in dict.fromkeys(m.queue for m in messages):
                if queue not in self._known_queues:
                    conn.execute(self._sql.register_queue, (queue,))
            return [self._insert(conn, m, now) for m in messages]

        results = self._db.run(publish, write=True)
        self._known_queues.update(m.queue for m in messages)
        if any(results):
            self._db.notify()
        return results

    def publish(
        self, queue: str, message: bytes, *, id: str, not_before: float | None = None
    ) -> bool:
        return self._publish([Outgoing(queue, message, id, not_before)])[0]

    def publish_many(self, messages: Iterable[Outgoing]) -> list[bool]:
        batch = list(messages)
        return self._publish(batch) if batch else []

    # -- consumer side -------------------------------------------------------------------

    def _claim(
        self, conn: sqlite3.Connection, queues: list[str], lease: float, limit: int, promote: bool
    ) -> tuple[list[Delivery], float | None]:
        """Lease up to `limit` messages; with none, also the next clock time one comes due."""
        sql = self._sql
        now = self._clock()
        # Delayed messages that came due and expired leases join the back of their queue.
        for (seq,) in conn.execute(sql.due, (now,)).fetchall() if promote else ():
            conn.execute(sql.promote, (seq,))
        deadline = now + lease
        taken: list[Delivery] = []
        for queue in queues:
            params = {"deadline": deadline, "queue": queue, "limit": limit - len(taken)}
            rows = sorted(conn.execute(sql.claim, params).fetchall())  # RETURNING is unordered
            taken.extend(
                make_delivery(id, queue, bytes(message or b""), attempt, lease_id, deadline)
                for _, id, message, attempt, lease_id in rows
            )
            if len(taken) >= limit:
                break
        if taken:
            return taken, None
        return taken, conn.execute(sql.next_due).fetchone()[0]

    def _take(
        self, queues: list[str], lease: float, limit: int
    ) -> tuple[list[Delivery], float | None]:
        """Claim if there is anything to claim; a cheap read first keeps idle consumers
        off the write lock that producers need."""

        def peek(conn: sqlite3.Connection) -> tuple[float | None, bool]:
            due, ready = conn.execute(self._sql.peek, (json.dumps(queues),)).fetchone()
            return due, bool(ready)

        next_due, ready = self._db.run(peek)
        due = next_due is not None and next_due <= self._clock()
        if not ready and not due:
            return [], next_due

        def claim(conn: sqlite3.Connection) -> tuple[list[Delivery], float | None]:
            return self._claim(conn, queues, lease, limit, promote=due)

        return self._db.run(claim, write=True)

    def reserve(
        self, queues: Sequence[str], *, timeout: float, lease: float, limit: int = 1
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        names = list(dict.fromkeys(queues))
        db = self._db
        give_up = time.monotonic() + max(timeout, 0.0)
        # Read the mark before looking, so that a commit right after the look is seen.
        mark = db.mark() if timeout > 0 else None
        taken, next_due = self._take(names, lease, limit)
        pause = _POLL_MIN
        while not taken:
            remaining = give_up - time.monotonic()
            if mark is None or remaining <= 0:
                return []
            wait = min(pause, remaining)
            if next_due is not None:
                wait = min(wait, max(next_due - self._clock(), 0.0))
            changed = db.wait_change(mark, wait)
            if changed is not None:
                mark, pause = changed, _POLL_MIN  # someone committed: look at once
            elif next_due is None or next_due > self._clock():
                pause = min(pause * _POLL_GROWTH, _POLL_MAX)  # all quiet: look less often
                continue
            taken, next_due = self._take(names, lease, limit)
        return taken

    def _settle(self, sql: str, params: dict[str, Any], delivery: Delivery) -> None:
        def settle(conn: sqlite3.Connection) -> None:
            if conn.execute(sql, params).rowcount == 0:
                raise _lease_lost(delivery)

        self._db.run(settle, write=True)

    def ack(self, delivery: Delivery) -> None:
        def ack(conn: sqlite3.Connection) -> None:
            now = self._clock()
            params = {
                "id": delivery.id,
                "lease_id": delivery.lease_id,
                "forget_at": now + self._db.dedupe_window,
            }
            if conn.execute(self._sql.ack, params).rowcount == 0:
                raise _lease_lost(delivery)
            if now >= self._next_sweep:
                conn.execute(self._sql.sweep_done, (now,))

        self._db.run(ack, write=True)
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []

        def ack(conn: sqlite3.Connection) -> list[bool]:
            # One statement per delivery (executemany would sum the rowcounts), all in one
            # transaction: one lock and one commit for the batch.
            now = self._clock()
            forget_at = now + self._db.dedupe_window
            done = [
                conn.execute(
                    self._sql.ack,
                    {"id": d.id, "lease_id": d.lease_id, "forget_at": forget_at},
                ).rowcount
                > 0
                for d in deliveries
            ]
            if now >= self._next_sweep:
                conn.execute(self._sql.sweep_done, (now,))
            return done

        done = self._db.run(ack, write=True)
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + _SWEEP_EVERY
        return done

    def release(
        self, delivery: Delivery, *, not_before: float | None = None, message: bytes | None = None
    ) -> None:
        delayed = not_before is not None and not_before > self._clock()
        params = {
            "id": delivery.id,
            "lease_id": delivery.lease_id,
            "state": "delayed" if delayed else "ready",
            "until": not_before if delayed else None,
            "message": message,
        }
        self._settle(self._sql.release, params, delivery)
        self._db.notify()

    def dead_letter(self, delivery: Delivery, *, reason: str, message: bytes | None = None) -> None:
        params = {
            "id": delivery.id,
            "lease_id": delivery.lease_id,
            "reason": reason,
            "now": self._clock(),
            "message": message,
        }
        self._settle(self._sql.dead_letter, params, delivery)

    def extend(self, delivery: Delivery, *, lease: float) -> Delivery:
        deadline = self._clock() + lease
        params = {"id": delivery.id, "lease_id": delivery.lease_id, "deadline": deadline}
        self._settle(self._sql.extend, params, delivery)
        return replace(delivery, lease_deadline=deadline)

    def cancel(self, id: str) -> bool:
        now = self._clock()
        params = {"id": id, "now": now, "forget_at": now + self._db.dedupe_window}
        return self._db.run(lambda c: c.execute(self._sql.cancel, params).rowcount > 0, write=True)

    # -- admin ---------------------------------------------------------------------------

    def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueCounts]:
        def read(conn: sqlite3.Connection) -> dict[str, QueueCounts]:
            rows = conn.execute(self._sql.counts, {"now": self._clock()}).fetchall()
            found = {row[0]: QueueCounts(*row[1:]) for row in rows}
            if queues is None:
                names = [name for (name,) in conn.execute(self._sql.queues)] + list(found)
            else:
                names = list(queues)
            return {name: found.get(name, QueueCounts()) for name in names}

        return self._db.run(read)

    def purge(self, queue: str) -> int:
        params = {"queue": queue, "now": self._clock()}
        return self._db.run(lambda c: c.execute(self._sql.purge, params).rowcount, write=True)

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        def read(conn: sqlite3.Connection) -> list[DeadLetter]:
            rows = conn.execute(self._sql.dead_letters, {"queue": queue}).fetchall()
            return [
                DeadLetter(
                    id=id,
                    queue=q,
                    message=bytes(message or b""),
                    reason=reason or "",
                    attempt=attempt,
                    dead_at=dead_at,
                )
                for id, q, message, reason, attempt, dead_at in rows
            ]

        return self._db.run(read)

    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        def revive(conn: sqlite3.Connection) -> int:
            if ids is None:
                seqs = [seq for (seq,) in conn.execute(self._sql.dead_seqs).fetchall()]
            else:
                found: list[tuple[float, int]] = []
                for chunk in _chunks(list(set(ids))):
                    sql = f"{self._sql.dead_seqs_of}({_marks(len(chunk))})"
                    found += conn.execute(sql, chunk).fetchall()
                seqs = [seq for _, seq in sorted(found)]  # oldest first, as for all
            for seq in seqs:
                conn.execute(self._sql.revive, (seq,))
            return len(seqs)

        moved = self._db.run(revive, write=True)
        if moved:
            self._db.notify()
        return moved

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            if ids is None:
                return conn.execute(self._sql.purge_dead).rowcount
            sql = f"{self._sql.purge_dead} AND id IN "
            return sum(
                conn.execute(f"{sql}({_marks(len(chunk))})", chunk).rowcount
                for chunk in _chunks(list(set(ids)))
            )

        return self._db.run(purge, write=True)

    def heartbeat(self, worker: WorkerInfo, *, ttl: float) -> None:
        info = _to_json(asdict(worker), f"the registration of worker {worker.id!r}")

        def beat(conn: sqlite3.Connection) -> None:
            now = self._clock()
            conn.execute(self._sql.sweep_workers, (now,))
            row = (worker.id, worker.hostname, worker.pid, worker.heartbeat_at, now + ttl, info)
            conn.execute(self._sql.heartbeat, row)

        self._db.run(beat, write=True)

    def unregister(self, worker_id: str) -> None:
        self._db.run(lambda c: c.execute(self._sql.unregister, (worker_id,)), write=True)

    def workers(self) -> list[WorkerInfo]:
        def read(conn: sqlite3.Connection) -> list[WorkerInfo]:
            return [
                _worker(json.loads(info))
                for (info,) in conn.execute(self._sql.workers, (self._clock(),))
            ]

        return self._db.run(read)

    def close(self) -> None:
        self._db.close()


_WORKER_FIELDS: Final = tuple(WorkerInfo.__dataclass_fields__)


def _worker(data: dict[str, Any]) -> WorkerInfo:
    data["queues"] = tuple(data.get("queues") or ())
    return WorkerInfo(**{k: v for k, v in data.items() if k in _WORKER_FIELDS})


# -- result backend --------------------------------------------------------------------


class SqliteBackend(ResultBackend):
    """Task records as readable rows of a SQLite file; see the module docstring."""

    capabilities = _CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock) -> None:
        self._db = _Database(url)
        self._sql = self._db.sql
        self.clock = clock
        self._next_sweep = float("-inf")

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return self._db.path

    def _drop_expired(self, ids: list[str], now: float) -> None:
        def drop(conn: sqlite3.Connection) -> None:
            conn.executemany(self._sql.drop_expired, [(id, now) for id in ids])

        self._db.run(drop, write=True)

    def get(self, task_id: str) -> TaskRecord | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        now = self.clock()

        def read(conn: sqlite3.Connection) -> dict[str, tuple[str, float]]:
            if len(task_ids) == 1:
                row = conn.execute(self._sql.get, (task_ids[0],)).fetchone()
                return {} if row is None else {task_ids[0]: row}
            found: dict[str, tuple[str, float]] = {}
            for chunk in _chunks(list(dict.fromkeys(task_ids))):
                rows = conn.execute(f"{self._sql.get_many}({_marks(len(chunk))})", chunk)
                found.update((id, (record, expires_at)) for id, record, expires_at in rows)
            return found

        found = self._db.run(read)
        expired = {id for id, (_, expires_at) in found.items() if expires_at <= now}
        if expired:
            self._drop_expired(sorted(expired), now)
        return [
            TaskRecord.from_json(found[id][0]) if id in found and id not in expired else None
            for id in task_ids
        ]

    def put(self, record: TaskRecord, *, expires: float) -> None:
        self.put_many([record], expires=expires)

    def put_many(self, records: Sequence[TaskRecord], *, expires: float) -> None:
        if not records:
            return
        texts = [record.to_json() for record in records]  # all encoded before any is stored

        def put(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            rows = [
                (r.id, r.state, r.task, r.queue, r.retries, now, now + expires, text)
                for r, text in zip(records, texts, strict=True)
            ]
            conn.executemany(self._sql.put, rows)  # in order: a later put of an id wins
            if now < self._next_sweep:
                return False
            conn.execute(self._sql.sweep_results, (now,))
            conn.execute(self._sql.sweep_counters, (now,))
            return True

        if self._db.run(put, write=True):
            self._next_sweep = self.clock() + _SWEEP_EVERY
        if any(record.ready for record in records):
            self._db.notify()

    def forget(self, task_id: str) -> bool:
        def forget(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            rows = conn.execute(self._sql.forget, (task_id,)).fetchall()
            return any(expires_at > now for (expires_at,) in rows)

        return self._db.run(forget, write=True)

    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        db = self._db
        give_up = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        mark = db.mark()
        record = self.get(task_id)
        pause = _POLL_MIN
        while record is None or not record.ready:
            wait = pause
            if give_up is not None:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    return None
                wait = min(pause, remaining)
            changed = db.wait_change(mark, wait)
            if changed is None:
                pause = min(pause * _POLL_GROWTH, _POLL_MAX)
                continue
            mark, pause = changed, _POLL_MIN
            record = self.get(task_id)
        return record

    def incr(self, key: str, amount: int = 1, *, expires: float) -> int:
        def incr(conn: sqlite3.Connection) -> int:
            now = self.clock()
            params = {"key": key, "amount": amount, "expires_at": now + expires, "now": now}
            return int(conn.execute(self._sql.incr, params).fetchone()[0])

        return self._db.run(incr, write=True)

    def purge_expired(self) -> int:
        def purge(conn: sqlite3.Connection) -> int:
            now = self.clock()
            conn.execute(self._sql.sweep_counters, (now,))
            return conn.execute(self._sql.sweep_results, (now,)).rowcount

        return self._db.run(purge, write=True)

    def close(self) -> None:
        self._db.close()


# -- transport -------------------------------------------------------------------------


class SqliteTransport:
    """`sqlite:///path`: broker and backend in a local SQLite file; see the module docstring."""

    schemes: ClassVar[tuple[str, ...]] = ("sqlite",)
    capabilities: ClassVar[Capabilities] = _CAPABILITIES

    @classmethod
    def broker(cls, url: URL, *, clock: Clock) -> SqliteBroker:
        return SqliteBroker(url, clock=clock)

    @classmethod
    def backend(cls, url: URL, *, clock: Clock) -> SqliteBackend:
        return SqliteBackend(url, clock=clock)
