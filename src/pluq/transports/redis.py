"""Redis transport: a reliable queue on lists, sorted sets and Lua, and readable results.

Features:
    - Every broker operation is one Lua script, one EVALSHA round trip: publish (and each
      batch of 500 in `publish_many`), reserve of up to `limit` messages, ack (and each
      batch of 500 in `ack_many`), release, dead_letter, extend. Scripts run atomically: a
      client killed at any instruction leaves each message ready, delayed, leased (with a
      deadline) or dead. It may be delivered again; it is never lost.
    - Blocking reserve without polling: BLPOP on a per-queue wake-up list, never longer
      than the earliest due time of a delayed message or lease it knows of (and 5 s).
    - Results are JSON strings: `redis-cli GET 'pluq:result:<task id>'` shows one. `wait`
      blocks in Redis (BLMOVE) and every waiter wakes on the put of a ready record. A put
      is one MULTI/EXEC round trip; `put_many` stores each batch of 500 in one script.
    - Reconnects with exponential backoff (redis-py retries a command 5 times, about 3 s);
      a reserve or wait that loses its connection logs a warning and keeps trying until
      its timeout, so it may return up to those few seconds late but never crashes.
    - Needs Redis 6.2 or newer. Not Redis Cluster: scripts build key names, all under the
      prefix (an ACL user limited to `~pluq:*` with +@scripting works).

URLs:
    redis://[[user]:password@]host[:port][/db][?option=value&...]   (localhost:6379/0)
    rediss://[[user]:password@]host[:port][/db][?...]               TLS
    unix://[[user]:password@]/path/to/redis.sock[?db=0&...]

Options (URL query; anything else is a ConfigurationError):
    prefix                  key prefix (default "pluq:"): keeps tenants and tests apart
    dedupe_window           seconds an acked or cancelled id stays known to publish
                            (default 300; 0 forgets at once)
    socket_timeout          seconds to wait for a reply (default 5; 0: no limit); blocking
                            calls are cut into slices shorter than it
    socket_connect_timeout  seconds to wait for a connection (default 5; 0: no limit)
    health_check_interval   PING a connection idle for this many seconds before using it
    db                      (unix:// only) the database number (default 0)
    ssl_cert_reqs           (rediss:// only) none | optional | required (default required)
    ssl_ca_certs, ssl_certfile, ssl_keyfile   (rediss:// only) PEM file paths

Keys (P is the prefix):
    P queues            SET    every queue that had a message
    P ready:<queue>     LIST   ids of ready messages, oldest first
    P delayed:<queue>   ZSET   "<16-digit seq>:<id>" by not_before (the sequence keeps
                               messages due at the same time in publish order)
    P leased:<queue>    ZSET   ids by lease deadline
    P dead:<queue>      ZSET   ids by a sequence number, oldest first
    P msg:<id>          HASH   queue, body, attempt, state (ready|delayed|leased|dead),
                               lease_id, dkey (its delayed member), reason, dead_at
    P done              ZSET   acked and cancelled ids by time, pruned on every ack: about
                               len(id) + 80 bytes per id acked within the window (300 s
                               at 1,000 acks/s: about 35 MB)
    P signal:<queue>    LIST   at most one wake-up token
    P seq               STRING the sequence counter
    P workers           ZSET   worker ids by heartbeat expiry; P worker-info HASH id -> JSON
    P result:<task id>  STRING TaskRecord.to_json() plus "_expires_at" (the client clock's
                               expiry; the key's TTL frees the memory)
    P notify:<task id>  LIST   one token while the record is ready: the record's JSON
                               itself when it is small (a waiter needs no GET), else "1"
    P counter:<key>     HASH   value, expires_at

Crash windows. A consumer blocks on the wake-up token (BLPOP P signal:<queue>), never on
a message. reserve.lua then pops ids from the ready list and records each lease (the id
in P leased:<queue> scored by its deadline; lease_id, state and attempt in its hash) in
one atomic step, and passes the token on while messages remain. Killed after taking a
token and before claiming, a consumer loses only the token: the message stays ready, and
a reserve claims before it blocks unless its thread's previous reserve emptied the queues
(blocked consumers see it within 5 s at worst). A reserve that empties a queue drops its
token: nobody needs waking, and a stale token would only cost the next reserve a round.
Killed after the claim, it holds leases that expire: the next reserve or counts of
that queue sees the deadline passed, the message is ready again and its next reservation
counts one more attempt. There is no processing list, so no moment at which a message is
held without a deadline. A script whose reply is lost with its connection is retried by
redis-py: a reserve may then lease messages nobody receives (they come back when the
lease ends), a publish may answer False for a message it queued, an ack may raise
LeaseLost although it was applied.

Time. Scores (not_before, lease deadlines, ack times, heartbeat and record expiry) come
from the injected client clock and reach Lua as arguments, so tests drive them with a
fake clock. Hosts sharing a Redis therefore need NTP: leases last tens of seconds and are
renewed every third of that, so a sub-second skew only moves a redelivery or a delayed
message by that much. Blocking waits time out on real time (time.monotonic).

Durability (hence durable=False: it is the server's setting). Without persistence a Redis
restart loses every queue and result. With `appendonly yes` they come back on restart;
`appendfsync everysec` (the default) may lose the last second of writes, `always` none. A
script goes to the AOF as one MULTI/EXEC: a crash never leaves half of one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from typing import Any, ClassVar, Final, NoReturn

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
from pluq.errors import BackendUnavailable, ConfigurationError, LeaseLost, TransportError
from pluq.registry import URL

try:
    import redis
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.commands.core import Script
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - redis is a dependency of pluq
    raise ImportError(
        f"redis-py is not installed ({exc}): pip install 'redis>=5' "
        f"(and 'hiredis' for speed: pip install 'pluq[hiredis]')"
    ) from exc

__all__ = ["RedisBackend", "RedisBroker", "RedisTransport"]

log = logging.getLogger(__name__)

_CAPABILITIES: Final = Capabilities(
    shared_between_processes=True, shared_between_hosts=True, durable=False
)
_DEFAULT_PREFIX: Final = "pluq:"
_DEFAULT_DEDUPE_WINDOW: Final = 300.0
_DEFAULT_TIMEOUT: Final = 5.0
_MAX_BLOCK: Final = 5.0
"""Longest single blocking call: a lease taken after a consumer blocked is seen within it."""
_PUBLISH_BATCH: Final = 500
_TOKEN_RECORD_MAX: Final = 4096
"""Characters of a ready record's JSON up to which the record is its own wake-up token."""
"""Messages, acks or records per script call in the batch methods: bounds the arguments
of one EVALSHA (and the time Redis spends in one script)."""
_PURGE_BATCH: Final = 1000
_RETRIES: Final = 5
"""redis-py retries a command this often (backoff 50 ms doubling up to 1 s) on a lost
connection before the error reaches pluq."""
_CONNECTION_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError)
_WORKER_FIELDS: Final = frozenset(f.name for f in dataclasses.fields(WorkerInfo))

_SCRIPTS: Final = {
    name: (resources.files("pluq.transports") / "_lua" / f"{name}.lua").read_text(encoding="utf-8")
    for name in (
        "publish", "reserve", "settle", "ack_many", "cancel", "counts", "purge", "dead",
        "workers", "incr", "unnotify", "put_many",
    )
}  # fmt: skip


# -- the URL ----------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError("expected a number of seconds, 0 or more")
    return value


def _db(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("expected a database number, 0 or more")
    return value


def _cert_reqs(text: str) -> str:
    value = text.lower()
    if value not in ("none", "optional", "required"):
        raise ValueError("expected none, optional or required")
    return value


_OPTIONS: Final[dict[str, Callable[[str], Any]]] = {
    "prefix": str,
    "dedupe_window": _seconds,
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "health_check_interval": _seconds,
}
_TLS_OPTIONS: Final[dict[str, Callable[[str], Any]]] = {
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Settings:
    url: URL
    prefix: str
    dedupe_window: float
    block: float
    """Longest single blocking call, shorter than the socket timeout."""
    client: dict[str, Any]


def _settings(url: URL) -> _Settings:
    """Parse a redis://, rediss:// or unix:// URL into redis-py arguments and our options."""
    spec = dict(_OPTIONS)
    if url.scheme == "rediss":
        spec.update(_TLS_OPTIONS)
    elif url.scheme == "unix":
        spec["db"] = _db
    elif url.scheme != "redis":
        raise ConfigurationError(
            f"{url.redacted}: the Redis transport opens redis://, rediss:// and unix:// URLs"
        )
    options = url.options(spec)
    timeout = options.get("socket_timeout", _DEFAULT_TIMEOUT) or None
    client: dict[str, Any] = {
        "username": url.username,
        "password": url.password,
        "socket_timeout": timeout,
        "socket_connect_timeout": options.get("socket_connect_timeout", _DEFAULT_TIMEOUT) or None,
        "health_check_interval": options.get("health_check_interval", 0),
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), _RETRIES),
    }
    if url.scheme == "unix":
        if url.host or not url.path:
            raise ConfigurationError(
                f"{url.redacted}: write the socket path after three slashes, as in "
                f"unix:///run/redis/redis.sock?db=0"
            )
        client.update(unix_socket_path=url.path, db=options.get("db", 0))
    else:
        client.update(host=url.host or "localhost", port=url.port or 6379, db=_path_db(url))
        if url.scheme == "rediss":
            client["ssl"] = True
            client.update({k: v for k, v in options.items() if k in _TLS_OPTIONS})
    return _Settings(
        url=url,
        prefix=options.get("prefix", _DEFAULT_PREFIX),
        dedupe_window=options.get("dedupe_window", _DEFAULT_DEDUPE_WINDOW),
        block=_MAX_BLOCK if timeout is None else min(_MAX_BLOCK, timeout * 0.8),
        client=client,
    )


def _path_db(url: URL) -> int:
    path = url.path.strip("/")
    try:
        return _db(path) if path else 0
    except ValueError:
        raise ConfigurationError(
            f"{url.redacted}: the path must be a database number, as in redis://localhost:6379/0"
        ) from None


class _Connection:
    """A redis-py client (thread-safe, reconnects, resets its pool after a fork) with the
    Lua scripts registered, and the translation of its errors into pluq's."""

    def __init__(self, settings: _Settings, *, unavailable: type[TransportError]) -> None:
        self.settings = settings
        self.redis = redis.Redis(**settings.client)
        self.scripts: dict[str, Script] = {
            name: self.redis.register_script(text) for name, text in _SCRIPTS.items()
        }
        self._unavailable = unavailable
        self._pinned = threading.local()

    def command(self, *args: Any) -> Any:
        """Send one command and return its raw reply, on a connection this thread keeps.

        The hot path of `.delay()`, reserve, results and waits. redis-py's
        `execute_command` takes a connection from the pool and gives it back, polls it for
        stale data, and records metrics on every call: about 40 microseconds of CPU, a
        third of a publish. Here each thread keeps one pooled connection (a new one after
        a fork), so a call is one send and one read. Replies come raw: no response
        callbacks. On a lost connection the command goes through `execute_command` instead,
        which retries with backoff (every command sent here may be sent twice, as redis-py's
        own retries would); on any other interruption between send and read the
        connection is dropped, so that no reply is left behind for the next command.
        """
        pinned = self._pinned
        conn = getattr(pinned, "conn", None)
        if conn is None or pinned.pid != os.getpid():
            conn = pinned.conn = self._checkout()
            pinned.pid = os.getpid()
        try:
            conn.send_command(*args)
            return conn.read_response()
        except redis.ResponseError:
            raise  # the server's answer: the connection is in step
        except _CONNECTION_ERRORS:
            conn.disconnect()
            return self.redis.execute_command(*args)  # type: ignore[no-untyped-call]
        except BaseException:
            conn.disconnect()
            raise

    def _checkout(self) -> Any:
        pool = self.redis.connection_pool
        try:
            return pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name
            return pool.get_connection("_")

    def run(self, script: str, args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA; loaded on NOSCRIPT) and return its reply."""
        registered = self.scripts[script]
        try:
            return self.command("EVALSHA", registered.sha, 0, *args)
        except redis.exceptions.NoScriptError:
            return registered(args=args)  # loads the script, then runs it

    def call(self, script: str, args: list[Any], action: str) -> Any:
        """`run`, with Redis errors translated into pluq's (`action` names what failed)."""
        try:
            return self.run(script, args)
        except redis.RedisError as exc:
            self.fail(exc, action)

    def do(self, action: str, command: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """`command(*args, **kwargs)`, with Redis errors translated into pluq's."""
        try:
            return command(*args, **kwargs)
        except redis.RedisError as exc:
            self.fail(exc, action)

    def fail(self, exc: redis.RedisError, action: str) -> NoReturn:
        url = self.settings.url.redacted
        if isinstance(exc, redis.AuthenticationError) or "NOAUTH" in str(exc):
            raise ConfigurationError(
                f"{url}: Redis refused the credentials while trying to {action} ({exc}); "
                f"check the user and password in the URL"
            ) from exc
        if isinstance(exc, _CONNECTION_ERRORS):
            raise self._unavailable(
                f"{url}: could not reach Redis to {action} after {_RETRIES} retries ({exc}); "
                f"check that the server runs and the URL names it"
            ) from exc
        raise TransportError(f"{url}: Redis failed to {action} ({exc})") from exc

    def pause(self, exc: Exception, action: str, failures: int, remaining: float) -> None:
        """Log a lost connection during a blocking call and sleep a backoff step (bounded
        by the caller's remaining time) before it tries again."""
        if failures == 1:
            log.warning(
                "%s: lost the connection to Redis during %s (%s); retrying until it is back",
                self.settings.url.redacted,
                action,
                exc,
            )
        time.sleep(max(0.0, min(0.05 * 2**failures, 1.0, remaining)))

    def close(self) -> None:
        self.redis.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- the broker -------------------------------------------------------------------------------


class _Drained(threading.local):
    """Per thread: the queues its last reserve emptied of ready messages, and the earliest
    time a delayed message or a lease of theirs comes due then (inf: none)."""

    queues: tuple[str, ...] | None = None
    next_due: float = math.inf


class RedisBroker(Broker):
    """Named queues in Redis; see the module docstring for the layout and guarantees."""

    capabilities = _CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock = time.time) -> None:
        self._conn = _Connection(_settings(url), unavailable=TransportError)
        self._clock = clock
        self._prefix = self._conn.settings.prefix
        self._window = self._conn.settings.dedupe_window
        self._drained = _Drained()

    # -- producer side -------------------------------------------------------------------

    def publish(
        self, queue: str, message: bytes, *, id: str, not_before: float | None = None
    ) -> bool:
        # The hot path of every `.delay()`: publish.lua with one message, no batch lists.
        now = self._clock()
        args = [self._prefix, now, now - self._window, 1, queue, id, message]
        args.append("" if not_before is None else not_before)
        return bool(self._conn.call("publish", args, "publish")[0] == 1)

    def publish_many(self, messages: Iterable[Outgoing]) -> list[bool]:
        batch = list(messages)
        results: list[bool] = []
        for start in range(0, len(batch), _PUBLISH_BATCH):
            chunk = batch[start : start + _PUBLISH_BATCH]
            now = self._clock()
            args: list[Any] = [self._prefix, now, now - self._window, len(chunk)]
            for queue, message, id, *rest in chunk:  # plain tuples work too
                not_before = rest[0] if rest else None
                args += (queue, id, message, "" if not_before is None else not_before)
            reply = self._conn.call("publish", args, "publish")
            results += (flag == 1 for flag in reply)
        return results

    # -- consumer side -------------------------------------------------------------------

    def reserve(
        self, queues: Sequence[str], *, timeout: float, lease: float, limit: int = 1
    ) -> list[Delivery]:
        if not queues:
            raise ValueError("reserve needs at least one queue name")
        if limit < 1:
            raise ValueError(f"limit must be 1 or more, not {limit}")
        deadline = time.monotonic() + max(timeout, 0.0)
        signals = [f"{self._prefix}signal:{q}" for q in queues]
        failures = 0
        # This thread's last reserve took the last ready message of these queues: block on
        # the wake-up token first instead of running reserve.lua for nothing (a publish
        # since then left a token). A worker asks again at once after every batch, and that
        # empty call costs a round trip while its first task waits to start.
        names = tuple(queues)
        drained, self._drained.queues = self._drained.queues == names and timeout > 0, None
        while True:
            now = self._clock()
            try:
                if drained:
                    drained = False
                    wait = min(deadline - time.monotonic(), self._conn.settings.block)
                    wait = min(wait, self._drained.next_due - now)
                    if wait > 0:
                        self._conn.command("BLPOP", *signals, f"{max(wait, 0.001):.3f}")
                    continue
                reply = self._conn.run(
                    "reserve",
                    [self._prefix, now, now + lease, limit, os.urandom(16).hex(), *queues],
                )
                if len(reply) > 1:
                    if reply[0] is not None:
                        self._drained.queues = names
                        self._drained.next_due = float(reply[0])
                    return self._deliveries(reply, now + lease)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                wait = min(remaining, self._conn.settings.block)
                if reply[0] is not None:
                    wait = min(wait, float(reply[0]) - now)
                # BLPOP's timeout is in seconds with millisecond resolution; 0 means forever.
                self._conn.command("BLPOP", *signals, f"{max(wait, 0.001):.3f}")
                failures = 0
            except redis.AuthenticationError as exc:
                self._conn.fail(exc, "reserve")
            except _CONNECTION_ERRORS as exc:
                # Redis restarting or a network blip: never a crash of the worker's loop.
                failures += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "%s: reserve gave up until Redis is back (%s)",
                        self._conn.settings.url.redacted,
                        exc,
                    )
                    return []
                self._conn.pause(exc, "reserve", failures, remaining)
            except redis.RedisError as exc:
                self._conn.fail(exc, "reserve")

    @staticmethod
    def _deliveries(reply: list[Any], lease_deadline: float) -> list[Delivery]:
        return [
            make_delivery(
                _text(reply[i + 1]),  # id
                _text(reply[i]),  # queue
                bytes(reply[i + 2]),  # message
                int(reply[i + 3]),  # attempt
                _text(reply[i + 4]),  # lease_id
                lease_deadline,
            )
            for i in range(1, len(reply), 5)
        ]

    def _settle(self, op: str, delivery: Delivery, *args: Any) -> None:
        ok = self._conn.call(
            "settle",
            [self._prefix, op, delivery.id, delivery.lease_id, self._clock(), *args],
            f"{op} message {delivery.id!r}",
        )
        if ok != 1:
            raise LeaseLost(
                f"message {delivery.id!r} of queue {delivery.queue!r}: lease "
                f"{delivery.lease_id} is no longer current (it expired and the message was "
                f"reserved again, or it was already acked, released or dead-lettered); "
                f"leave this message alone, its current holder owns it"
            )

    def ack(self, delivery: Delivery) -> None:
        remember = self._window > 0
        self._settle("ack", delivery, self._clock() - self._window, "1" if remember else "0")

    def ack_many(self, deliveries: Sequence[Delivery]) -> list[bool]:
        # ack_many.lua: each chunk of acks is one EVALSHA, settled as settle.lua's ack.
        remember = "1" if self._window > 0 else "0"
        done: list[bool] = []
        for start in range(0, len(deliveries), _PUBLISH_BATCH):
            chunk = deliveries[start : start + _PUBLISH_BATCH]
            now = self._clock()
            args: list[Any] = [self._prefix, now, now - self._window, remember, len(chunk)]
            for delivery in chunk:
                args += (delivery.id, delivery.lease_id)
            reply = self._conn.call("ack_many", args, f"ack {len(chunk)} message(s)")
            done += (flag == 1 for flag in reply)
        return done

    def release(
        self, delivery: Delivery, *, not_before: float | None = None, message: bytes | None = None
    ) -> None:
        self._settle(
            "release",
            delivery,
            "" if not_before is None else not_before,
            "0" if message is None else "1",
            b"" if message is None else message,
        )

    def dead_letter(self, delivery: Delivery, *, reason: str, message: bytes | None = None) -> None:
        self._settle(
            "dead",
            delivery,
            reason,
            "0" if message is None else "1",
            b"" if message is None else message,
        )

    def extend(self, delivery: Delivery, *, lease: float) -> Delivery:
        deadline = self._clock() + lease
        self._settle("extend", delivery, deadline)
        return dataclasses.replace(delivery, lease_deadline=deadline)

    def cancel(self, id: str) -> bool:
        remember = "1" if self._window > 0 else "0"
        return bool(
            self._conn.call(
                "cancel", [self._prefix, id, self._clock(), remember], f"cancel message {id!r}"
            )
        )

    # -- admin ---------------------------------------------------------------------------

    def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueCounts]:
        if queues is not None and not queues:
            return {}
        reply = self._conn.call(
            "counts", [self._prefix, self._clock(), *(queues or ())], "count messages"
        )
        found = {
            _text(reply[i]): QueueCounts(*(int(n) for n in reply[i + 1 : i + 5]))
            for i in range(0, len(reply), 5)
        }
        return dict(sorted(found.items())) if queues is None else found

    def purge(self, queue: str) -> int:
        total = 0
        while True:  # in batches, so that Redis is never blocked for long
            args = [self._prefix, queue, _PURGE_BATCH]
            n = int(self._conn.call("purge", args, f"purge queue {queue!r}"))
            total += n
            if n < _PURGE_BATCH:
                return total

    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        reply = self._conn.call("dead", [self._prefix, "list", queue or ""], "list dead letters")
        return [
            DeadLetter(
                id=_text(reply[i + 1]),
                queue=_text(reply[i + 2]),
                message=bytes(reply[i + 3] or b""),
                reason=_text(reply[i + 4] or b""),
                attempt=int(reply[i + 5] or 0),
                dead_at=float(reply[i + 6] or 0.0),
            )
            for i in range(0, len(reply), 7)
        ]

    def _dead(self, op: str, ids: Sequence[str] | None) -> int:
        if ids is not None and not ids:
            return 0
        return int(self._conn.call("dead", [self._prefix, op, *(ids or ())], f"{op} dead letters"))

    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._dead("retry", ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._dead("purge", ids)

    def heartbeat(self, worker: WorkerInfo, *, ttl: float) -> None:
        info = json.dumps(dataclasses.asdict(worker), default=repr, separators=(",", ":"))
        self._conn.call(
            "workers",
            [self._prefix, "beat", worker.id, self._clock() + ttl, info],
            f"record the heartbeat of worker {worker.id!r}",
        )

    def unregister(self, worker_id: str) -> None:
        self._conn.call(
            "workers", [self._prefix, "forget", worker_id], f"unregister worker {worker_id!r}"
        )

    def workers(self) -> list[WorkerInfo]:
        reply = self._conn.call("workers", [self._prefix, "list", self._clock()], "list workers")
        found = []
        for raw in reply:
            data = json.loads(raw)
            data["queues"] = tuple(data.get("queues") or ())
            # Fields another pluq version wrote and this one does not know are skipped.
            found.append(WorkerInfo(**{k: v for k, v in data.items() if k in _WORKER_FIELDS}))
        return found

    def close(self) -> None:
        self._conn.close()


# -- the result backend ---------------------------------------------------------------------


class RedisBackend(ResultBackend):
    """Task records as JSON strings with a TTL; see the module docstring."""

    capabilities = _CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock = time.time) -> None:
        self._conn = _Connection(_settings(url), unavailable=BackendUnavailable)
        self.clock = clock
        self._prefix = self._conn.settings.prefix

    def _key(self, task_id: str) -> str:
        return f"{self._prefix}result:{task_id}"

    def _notify_key(self, task_id: str) -> str:
        return f"{self._prefix}notify:{task_id}"

    def _decode(self, raw: bytes | str | None, task_id: str) -> TaskRecord | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            expires_at = data.get("_expires_at")
            if expires_at is not None and expires_at <= self.clock():
                return None
            return TaskRecord.from_dict(data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise TransportError(
                f"{self._conn.settings.url.redacted}: the value of key "
                f"{self._key(task_id)!r} is not a pluq task record ({exc}); delete that key "
                f"or choose another prefix"
            ) from exc

    def get(self, task_id: str) -> TaskRecord | None:
        raw = self._conn.do(f"read task {task_id!r}", self._conn.command, "GET", self._key(task_id))
        return self._decode(raw, task_id)

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        if not task_ids:
            return []
        raws = self._conn.do(
            "read results", self._conn.command, "MGET", *[self._key(t) for t in task_ids]
        )
        return [self._decode(raw, t) for raw, t in zip(raws, task_ids, strict=True)]

    def put(self, record: TaskRecord, *, expires: float) -> None:
        self.put_many([record], expires=expires)  # one EVALSHA, lighter than MULTI/EXEC

    def put_many(self, records: Sequence[TaskRecord], *, expires: float) -> None:
        # put_many.lua: each chunk of records is one EVALSHA, stored as `put` stores one.
        if math.isfinite(expires) and expires <= 0:
            ttl, extra = "0", None  # already expired: as if put and gone
        elif math.isfinite(expires):
            ttl, extra = str(math.ceil(expires * 1000)), {"_expires_at": self.clock() + expires}
        else:
            ttl, extra = "", None
        # Every record is encoded before the first is stored: one that is not JSON fails
        # the batch with nothing stored.
        texts = [record.to_json(extra) if ttl != "0" else "" for record in records]
        for start in range(0, len(records), _PUBLISH_BATCH):
            chunk = records[start : start + _PUBLISH_BATCH]
            args: list[Any] = [self._prefix, ttl, len(chunk)]
            for record, text in zip(chunk, texts[start : start + _PUBLISH_BATCH], strict=True):
                # put_many.lua's ready flag: 2 makes a small record its own token.
                ready = ("2" if len(text) <= _TOKEN_RECORD_MAX else "1") if record.ready else "0"
                args += (record.id, text, ready)
            self._conn.call("put_many", args, f"store the results of {len(chunk)} task(s)")

    def forget(self, task_id: str) -> bool:
        pipe = self._conn.redis.pipeline(transaction=True)
        pipe.getdel(self._key(task_id))
        pipe.delete(self._notify_key(task_id))
        raw, _ = self._conn.do(f"forget the result of task {task_id!r}", pipe.execute)
        try:
            return self._decode(raw, task_id) is not None
        except TransportError:
            return True  # something was there, and now it is gone

    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        """Block on the record's wake-up list until the record is ready.

        A ready put leaves one token in `P notify:<id>`; each waiter rotates it with
        BLMOVE (right to left on the same list), which hands it to every blocked waiter in
        turn, and then reads the record. A token whose record is not ready any more is
        dropped (unnotify.lua) so that waiters block again instead of spinning.

        A ready record always has its token, so a wait that may block starts with BLMOVE,
        not with a read: one round trip fewer for a result that is not there yet. A small
        record is its own token (put_many.lua): the waiter that BLMOVE wakes has the record
        and returns it without another round trip. Every put replaces the token, so a token
        is never older than the record it stands for.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        key, notify = self._key(task_id), self._notify_key(task_id)
        failures = 0
        woken = False
        read = timeout is not None and timeout <= 0  # may not block: read at once
        while True:
            remaining = math.inf if deadline is None else deadline - time.monotonic()
            try:
                if read:
                    record = self._decode(self._conn.command("GET", key), task_id)
                    if record is not None and record.ready:
                        return record
                    if woken:
                        self._conn.run("unnotify", [key, notify, self.clock()])
                    if remaining <= 0:
                        return None
                read = True
                block = f"{max(min(remaining, self._conn.settings.block), 0.001):.3f}"
                token = self._conn.command("BLMOVE", notify, notify, "RIGHT", "LEFT", block)
                woken = token is not None
                if woken and token != b"1":
                    record = self._decode(token, task_id)
                    if record is not None and record.ready:
                        return record
                failures = 0
            except redis.AuthenticationError as exc:
                self._conn.fail(exc, f"wait for the result of task {task_id!r}")
            except _CONNECTION_ERRORS as exc:
                failures += 1
                if remaining <= 0:
                    self._conn.fail(exc, f"wait for the result of task {task_id!r}")
                self._conn.pause(exc, "wait", failures, remaining)
            except redis.RedisError as exc:
                self._conn.fail(exc, f"wait for the result of task {task_id!r}")

    def incr(self, key: str, amount: int = 1, *, expires: float) -> int:
        now = self.clock()
        ttl_ms = max(1, math.ceil(expires * 1000))
        args = [f"{self._prefix}counter:{key}", amount, now, now + expires, ttl_ms]
        return int(self._conn.call("incr", args, f"increment counter {key!r}"))

    def close(self) -> None:
        self._conn.close()


# -- the transport ------------------------------------------------------------------------------


class RedisTransport:
    """The redis://, rediss:// and unix:// schemes."""

    schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss", "unix")
    capabilities: ClassVar[Capabilities] = _CAPABILITIES

    @classmethod
    def broker(cls, url: URL, *, clock: Clock) -> RedisBroker:
        return RedisBroker(url, clock=clock)

    @classmethod
    def backend(cls, url: URL, *, clock: Clock) -> RedisBackend:
        return RedisBackend(url, clock=clock)
