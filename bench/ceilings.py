"""The ceilings, measured in the same run as the libraries: what the storage itself allows.

- ``redis-benchmark -t lpush,rpop`` against the bench's own redis-server: with 50 clients
  (the server's ceiling) and with 1 client (one round trip at a time, as one producer or
  one worker process sees it).
- redis-py ``PING`` in a loop, with the same client library (and hiredis) as pluq: the floor
  of one round trip per call, which bounds a single-call enqueue.
- SQLite committed claim transactions per second on the disk the bench writes to: one
  connection in WAL mode, each transaction ``BEGIN IMMEDIATE`` + pluq's claim statement (an
  indexed ``UPDATE ... RETURNING`` of the oldest ready row) + ``COMMIT``, with
  ``synchronous=NORMAL`` (pluq's default) and ``FULL``.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["redis_benchmark", "redis_ping", "sqlite_claims"]


def redis_benchmark(port: int, *, requests: int, clients: int) -> dict[str, float]:
    """Requests per second of LPUSH and RPOP, from redis-benchmark's CSV output."""
    argv = [
        "redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "lpush,rpop",
        "-n", str(requests), "-c", str(clients), "--csv",
    ]  # fmt: skip
    out = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    rates = {}
    for row in csv.reader(io.StringIO(out)):
        if len(row) >= 2 and row[0] in ("LPUSH", "RPOP"):
            rates[row[0].lower()] = float(row[1])
    if set(rates) != {"lpush", "rpop"}:
        raise RuntimeError(f"could not read redis-benchmark's output: {out[:300]!r}")
    return rates


def redis_ping(url: str, *, count: int) -> float:
    """PINGs per second, one at a time, with redis-py."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.ping()
        t0 = time.perf_counter()
        for _ in range(count):
            client.ping()
        return count / (time.perf_counter() - t0)
    finally:
        client.close()


_SCHEMA = """
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY, id TEXT NOT NULL, queue TEXT NOT NULL, state TEXT NOT NULL,
    message BLOB, attempt INTEGER NOT NULL DEFAULT 0, until FLOAT, lease_id TEXT
);
CREATE UNIQUE INDEX messages_id ON messages(id);
CREATE INDEX messages_ready ON messages(queue, seq) WHERE state = 'ready';
CREATE INDEX messages_waiting ON messages(until) WHERE state IN ('delayed', 'leased');
"""

_CLAIM = (
    "UPDATE messages SET state = 'leased', until = :deadline, attempt = attempt + 1, "
    "lease_id = lower(hex(randomblob(16))) WHERE seq IN (SELECT seq FROM messages "
    "WHERE queue = :queue AND state = 'ready' ORDER BY seq LIMIT 1) "
    "RETURNING seq, id, message, attempt, lease_id"
)


def sqlite_claims(directory: Path, *, claims: int, synchronous: str) -> float:
    """Committed claim transactions per second on a file in `directory`."""
    with tempfile.TemporaryDirectory(dir=directory, prefix="claims-") as tmp:
        conn = sqlite3.connect(Path(tmp) / "claims.db", isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.executescript(_SCHEMA)
            body = b"x" * 300  # about the size of a signed pluq message
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO messages (id, queue, state, message) VALUES (?, 'q', 'ready', ?)",
                ((f"id-{i}", body) for i in range(claims)),
            )
            conn.execute("COMMIT")
            params = {"queue": "q", "deadline": 0.0}
            t0 = time.perf_counter()
            for _ in range(claims):
                params["deadline"] = time.time() + 30
                conn.execute("BEGIN IMMEDIATE")
                if not conn.execute(_CLAIM, params).fetchall():
                    raise RuntimeError("the claim ceiling ran out of rows")
                conn.execute("COMMIT")
            return claims / (time.perf_counter() - t0)
        finally:
            conn.close()
