"""redis://, rediss:// and unix:// specifics; the contract kit tests the general behaviour.

Run the kit on Redis with:
    pytest transports --transport-url 'redis://{redis}/0?prefix=kit-{uid}:'
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from transports._clock import ManualClock
from transports._servers import RedisServer

from pluq.backend import PENDING, SUCCESS, TaskRecord
from pluq.broker import Broker, Outgoing, QueueCounts
from pluq.errors import ConfigurationError, LeaseLost, TransportError
from pluq.registry import URL, open_backend, open_broker
from pluq.transports.redis import RedisBackend, RedisBroker, RedisTransport

WAIT = 30.0
"""Seconds a test waits for an event from another thread: generous on a loaded machine."""


def wait_until(condition: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    """Wait for a condition we cannot block on (a client blocked inside Redis)."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def raw_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(host=server.host, port=server.port, password=server.password)


def blocked_clients(server: RedisServer) -> int:
    with raw_client(server) as client:
        return int(client.info("clients")["blocked_clients"])


def connection_kwargs(broker: Broker | RedisBackend) -> dict[str, object]:
    assert isinstance(broker, RedisBroker | RedisBackend)
    kwargs: dict[str, object] = broker._conn.redis.connection_pool.connection_kwargs
    return kwargs


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=1_000_000.0)


@pytest.fixture
def broker(redis_url: str, clock: ManualClock) -> Iterator[Broker]:
    with open_broker(redis_url, clock=clock) as broker:
        yield broker


@pytest.fixture
def backend(redis_url: str, clock: ManualClock) -> Iterator[RedisBackend]:
    with open_backend(redis_url, clock=clock) as backend:
        assert isinstance(backend, RedisBackend)
        yield backend


class InThread:
    """Run a call on a thread and keep its result or exception for the test to check."""

    def __init__(self, call: Callable[[], object]) -> None:
        self.result: object = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], object]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def get(self, timeout: float = WAIT) -> object:
        assert self.done.wait(timeout), "the call did not return in time"
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.result


# -- URL grammar --------------------------------------------------------------------------------


def test_redis_url_sets_host_port_db_credentials_and_options() -> None:
    url = (
        "redis://alice:s3cret@cache.example:6380/3?socket_timeout=2.5"
        "&socket_connect_timeout=1&health_check_interval=10&prefix=app:&dedupe_window=60"
    )
    with open_broker(url) as broker:
        kwargs = connection_kwargs(broker)
        assert isinstance(broker, RedisBroker)
        assert broker._prefix == "app:"
        assert broker._window == 60.0
    assert kwargs["host"] == "cache.example"
    assert kwargs["port"] == 6380
    assert kwargs["db"] == 3
    assert kwargs["username"] == "alice"
    assert kwargs["password"] == "s3cret"
    assert kwargs["socket_timeout"] == 2.5
    assert kwargs["socket_connect_timeout"] == 1.0
    assert kwargs["health_check_interval"] == 10.0


def test_redis_url_defaults() -> None:
    with open_broker("redis://") as broker:
        kwargs = connection_kwargs(broker)
        assert isinstance(broker, RedisBroker)
        assert broker._prefix == "pluq:"
        assert broker._window == 300.0
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("localhost", 6379, 0)
    assert kwargs["socket_timeout"] == 5.0


def test_zero_socket_timeout_means_no_timeout() -> None:
    with open_broker("redis://localhost/0?socket_timeout=0") as broker:
        assert connection_kwargs(broker)["socket_timeout"] is None


def test_rediss_url_passes_tls_options_to_the_client() -> None:
    url = (
        "rediss://:pw@secure.example:6390/1?ssl_cert_reqs=optional&ssl_ca_certs=/etc/ca.pem"
        "&ssl_certfile=/etc/client.pem&ssl_keyfile=/etc/client.key"
    )
    with open_broker(url) as broker:
        assert isinstance(broker, RedisBroker)
        pool = broker._conn.redis.connection_pool
        kwargs = connection_kwargs(broker)
    assert pool.connection_class is redis.SSLConnection
    assert kwargs["ssl_cert_reqs"] == "optional"
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["ssl_certfile"] == "/etc/client.pem"
    assert kwargs["ssl_keyfile"] == "/etc/client.key"
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("secure.example", 6390, 1)


def test_unix_url_takes_the_socket_path_and_db_option() -> None:
    with open_backend("unix:///run/redis/redis.sock?db=2&prefix=x:") as backend:
        assert isinstance(backend, RedisBackend)
        kwargs = connection_kwargs(backend)
        pool = backend._conn.redis.connection_pool
    assert pool.connection_class is redis.UnixDomainSocketConnection
    assert kwargs["path"] == "/run/redis/redis.sock"
    assert kwargs["db"] == 2


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("redis://localhost/0?colour=blue", "unknown option(s) colour"),
        ("redis://localhost/0?ssl_cert_reqs=none", "unknown option(s) ssl_cert_reqs"),
        ("redis://localhost/0?db=1", "unknown option(s) db"),
        ("rediss://localhost/0?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe' is not valid"),
        ("redis://localhost/zero", "the path must be a database number"),
        ("redis://localhost/0?socket_timeout=-1", "socket_timeout='-1' is not valid"),
        ("redis://localhost/0?dedupe_window=soon", "dedupe_window='soon' is not valid"),
        ("unix://", "write the socket path after three slashes"),
        ("unix://run/redis.sock", "write the socket path after three slashes"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, words: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        open_broker(url)
    assert words in str(info.value)


def test_password_is_redacted_from_configuration_errors() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_broker("redis://user:hunter2@localhost/0?nope=1")
    assert "hunter2" not in str(info.value)
    assert "user:***@localhost" in str(info.value)


def test_unreachable_server_is_a_transport_error_with_redacted_url() -> None:
    port = _closed_port()
    broker = open_broker(f"redis://:hunter2@127.0.0.1:{port}/0")
    with broker, pytest.raises(TransportError) as info:
        broker.publish("q", b"m", id="1")
    assert "hunter2" not in str(info.value)
    assert f":***@127.0.0.1:{port}" in str(info.value)
    assert "could not reach Redis" in str(info.value)


def test_wrong_password_is_a_configuration_error(
    start_redis_server: Callable[..., RedisServer],
) -> None:
    server = start_redis_server(password="right")
    broker = open_broker(f"redis://:hunter3@{server.address}/0")
    with broker, pytest.raises(ConfigurationError) as info:
        broker.publish("q", b"m", id="1")
    assert "credentials" in str(info.value)
    assert "hunter3" not in str(info.value)
    with open_broker(server.url + "/0") as broker:
        assert broker.publish("q", b"m", id="1") is True


def test_unix_socket_url_reaches_the_server(redis_server: RedisServer) -> None:
    url = f"unix://{redis_server.unix_socket}?db=0&prefix=unix-test:"
    with open_broker(url) as broker:
        broker.purge("q")
        assert broker.publish("q", b"over a socket", id="u1") is True
        [delivery] = broker.reserve(["q"], timeout=0, lease=30)
        assert delivery.message == b"over a socket"
        broker.ack(delivery)


def test_transport_class_declares_schemes_and_capabilities() -> None:
    assert set(RedisTransport.schemes) == {"redis", "rediss", "unix"}
    assert RedisTransport.capabilities.shared_between_hosts is True
    assert RedisTransport.capabilities.durable is False
    assert isinstance(RedisTransport.broker(URL.parse("redis://"), clock=time.time), RedisBroker)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- readable layout ----------------------------------------------------------------------------


def test_result_record_is_a_json_string_readable_without_pluq(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    record = TaskRecord(id="t-1", state=SUCCESS, task="add", result=5, result_encoding="json")
    backend.put(record, expires=3600)
    key = f"{backend._prefix}result:t-1"
    with raw_client(redis_server) as client:
        raw = client.get(key)
        ttl = client.ttl(key)
    assert raw is not None
    document = json.loads(raw)
    assert document["state"] == "SUCCESS"
    assert document["result"] == 5
    assert TaskRecord.from_json(raw) == record
    assert 3590 < ttl <= 3600


def test_messages_are_readable_lists_and_hashes(
    broker: Broker, redis_server: RedisServer, redis_url: str
) -> None:
    prefix = URL.parse(redis_url).query["prefix"]
    broker.publish("emails", b"payload", id="m-1")
    with raw_client(redis_server) as client:
        assert client.lrange(f"{prefix}ready:emails", 0, -1) == [b"m-1"]
        fields = client.hgetall(f"{prefix}msg:m-1")
    assert fields[b"body"] == b"payload"
    assert fields[b"queue"] == b"emails"
    assert fields[b"state"] == b"ready"


def test_prefixes_isolate_tenants(redis_server: RedisServer) -> None:
    base = f"redis://{redis_server.address}/0?prefix="
    with open_broker(base + "tenant-a:") as a, open_broker(base + "tenant-b:") as b:
        a.purge("q")
        b.purge("q")
        a.publish("q", b"for a", id="same-id")
        assert b.publish("q", b"for b", id="same-id") is True
        assert [d.message for d in b.reserve(["q"], timeout=0, lease=30)] == [b"for b"]
        assert [d.message for d in a.reserve(["q"], timeout=0, lease=30)] == [b"for a"]


def test_a_foreign_key_under_the_prefix_is_a_transport_error(
    broker: Broker, redis_server: RedisServer, redis_url: str
) -> None:
    prefix = URL.parse(redis_url).query["prefix"]
    with raw_client(redis_server) as client:
        client.set(f"{prefix}ready:q", "not a list")
    with pytest.raises(TransportError, match="Redis failed to publish"):
        broker.publish("q", b"m", id="1")


# -- leases, delays and crash windows -------------------------------------------------------


def test_expired_lease_comes_back_with_one_more_attempt(broker: Broker, clock: ManualClock) -> None:
    broker.publish("q", b"m", id="1")
    [first] = broker.reserve(["q"], timeout=0, lease=10)
    clock.advance(10)
    assert broker.counts(["q"])["q"].ready == 1
    [second] = broker.reserve(["q"], timeout=0, lease=10)
    assert (second.id, second.attempt) == ("1", 2)
    assert second.lease_id != first.lease_id
    with pytest.raises(LeaseLost):
        broker.ack(first)
    broker.ack(second)


def test_expired_lease_not_yet_taken_again_may_still_be_acted_on(
    broker: Broker, clock: ManualClock
) -> None:
    for id in ("1", "2", "3", "4"):
        broker.publish("q", b"m", id=id)
    one, two, three = broker.reserve(["q"], timeout=0, lease=10, limit=3)
    clock.advance(10)
    # Still in the leased set, past its deadline: the holder's ack is accepted.
    broker.ack(one)
    # A reserve sweeps the other two back behind "4" and takes "4": they wait, ready, with
    # their old lease ids, and their late holders may still settle or extend them.
    assert [d.id for d in broker.reserve(["q"], timeout=0, lease=10)] == ["4"]
    assert broker.counts(["q"])["q"].ready == 2
    broker.release(two, not_before=clock() + 60)
    extended = broker.extend(three, lease=30)
    assert extended.lease_deadline == clock() + 30
    assert broker.counts(["q"])["q"] == QueueCounts(ready=0, delayed=1, leased=2, dead=0)
    with pytest.raises(LeaseLost):
        broker.release(two)


def test_consumer_dying_after_the_claim_script_loses_nothing(
    broker: Broker, clock: ManualClock
) -> None:
    """The claim ran in Redis but its reply never reached the consumer (killed, or the
    connection dropped): the message is leased to nobody and comes back after the lease."""
    assert isinstance(broker, RedisBroker)
    broker.publish("q", b"m", id="1")
    now = clock()
    broker._conn.run("reserve", [broker._prefix, now, now + 30, 1, "dead-consumer", "q"])
    assert broker.reserve(["q"], timeout=0, lease=30) == []
    assert broker.counts(["q"])["q"].leased == 1
    clock.advance(30)
    [delivery] = broker.reserve(["q"], timeout=0, lease=30)
    assert (delivery.id, delivery.attempt) == ("1", 2)


def test_consumer_dying_after_taking_the_wake_up_token_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """Only a token is taken by the blocking pop, never a message: a consumer that takes it
    and dies delays another blocked consumer by at most one blocking slice."""
    url = f"redis://{redis_server.address}/0?prefix=token-test:&socket_timeout=1"
    with open_broker(url) as broker, raw_client(redis_server) as dying:
        broker.purge("q")
        dying.delete("token-test:signal:q")
        thief = InThread(lambda: dying.blpop(["token-test:signal:q"], timeout=WAIT))
        wait_until(lambda: blocked_clients(redis_server) >= 1, "the dying consumer to block")
        consumer = InThread(lambda: broker.reserve(["q"], timeout=WAIT, lease=30))
        wait_until(lambda: blocked_clients(redis_server) >= 2, "the live consumer to block")
        broker.publish("q", b"m", id="1")
        assert thief.get() is not None  # it took the token, and "dies" without claiming
        deliveries = consumer.get()
        assert isinstance(deliveries, list)
        assert [d.id for d in deliveries] == ["1"]


def test_blocked_reserve_wakes_when_a_delayed_message_is_due(redis_url: str) -> None:
    with open_broker(redis_url) as broker:
        consumer = InThread(lambda: broker.reserve(["q"], timeout=WAIT, lease=30))
        started = time.monotonic()
        broker.publish("q", b"later", id="1", not_before=time.time() + 0.3)
        deliveries = consumer.get()
        elapsed = time.monotonic() - started
    assert isinstance(deliveries, list)
    assert [d.id for d in deliveries] == ["1"]
    assert 0.2 < elapsed < 5.0


def test_after_taking_the_last_message_reserve_blocks_without_asking_again(
    redis_url: str, redis_server: RedisServer
) -> None:
    def evalsha_calls() -> int:
        with raw_client(redis_server) as client:
            return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))

    with open_broker(redis_url) as broker:
        broker.publish("q", b"w", id="w")  # loads the scripts (NOSCRIPT counts as a call)
        broker.ack(broker.reserve(["q"], timeout=0, lease=30)[0])
        before, blocked = evalsha_calls(), blocked_clients(redis_server)
        broker.publish("q", b"a", id="a")  # publish.lua: 1
        emptied = threading.Event()

        def consume() -> list[str]:
            first = broker.reserve(["q"], timeout=WAIT, lease=30)  # reserve.lua: 1, empties q
            emptied.set()
            second = broker.reserve(["q"], timeout=WAIT, lease=30)  # BLPOP, then reserve.lua
            return [d.id for d in first + second]

        consumer = InThread(consume)
        assert emptied.wait(WAIT)
        wait_until(lambda: blocked_clients(redis_server) > blocked, "the consumer to block")
        broker.publish("q", b"b", id="b")  # publish.lua: 1
        assert consumer.get() == ["a", "b"]
        assert evalsha_calls() - before == 4  # not 5: no reserve.lua run for nothing


def test_after_taking_the_last_ready_message_a_delayed_one_still_comes_on_time(
    redis_url: str,
) -> None:
    with open_broker(redis_url) as broker:
        broker.publish("q", b"now", id="1")
        broker.publish("q", b"later", id="2", not_before=time.time() + 0.2)
        assert [d.id for d in broker.reserve(["q"], timeout=WAIT, lease=30)] == ["1"]
        started = time.monotonic()
        got = broker.reserve(["q"], timeout=WAIT, lease=30)  # blocks until "2" is due
        elapsed = time.monotonic() - started
    assert [d.id for d in got] == ["2"]
    assert elapsed < 4.0  # woken at the due time, not after the longest block (5 s)


def test_messages_due_together_become_ready_in_publish_order(
    broker: Broker, clock: ManualClock
) -> None:
    ids = [f"m{i}" for i in range(12)]  # "m10" sorts before "m2": order must not be by id
    for id in ids:
        broker.publish("q", b"x", id=id, not_before=clock() + 5)
    clock.advance(5)
    got = broker.reserve(["q"], timeout=0, lease=30, limit=20)
    assert [d.id for d in got] == ids


def test_publish_many_in_several_batches_keeps_order_and_flags(broker: Broker) -> None:
    for i in (0, 400, 800):
        broker.publish("q", b"x", id=f"dup-{i}")
    messages = [Outgoing("q", b"x", f"dup-{i}" if i % 400 == 0 else f"m-{i}") for i in range(1200)]
    flags = broker.publish_many(messages)
    assert flags == [i % 400 != 0 for i in range(1200)]
    got = broker.reserve(["q"], timeout=0, lease=30, limit=2000)
    expected = ["dup-0", "dup-400", "dup-800"] + [m.id for m in messages if m.id.startswith("m")]
    assert [d.id for d in got] == expected


def test_dedupe_window_follows_the_clock(redis_server: RedisServer, clock: ManualClock) -> None:
    url = f"redis://{redis_server.address}/0?prefix=dedupe-{os.getpid()}-{time.time_ns()}:"
    with open_broker(url + "&dedupe_window=10", clock=clock) as broker:
        broker.publish("q", b"m", id="1")
        broker.ack(broker.reserve(["q"], timeout=0, lease=30)[0])
        clock.advance(9)
        assert broker.publish("q", b"m", id="1") is False
        clock.advance(2)
        assert broker.publish("q", b"m", id="1") is True
    with open_broker(url + "&dedupe_window=0", clock=clock) as broker:
        broker.publish("q2", b"m", id="2")
        broker.ack(broker.reserve(["q2"], timeout=0, lease=30)[0])
        assert broker.publish("q2", b"m", id="2") is True


# -- results -----------------------------------------------------------------------------------


def test_every_waiter_wakes_on_one_put(backend: RedisBackend, redis_server: RedisServer) -> None:
    before = blocked_clients(redis_server)
    waiters = [InThread(lambda: backend.wait("t", timeout=WAIT)) for _ in range(3)]
    wait_until(lambda: blocked_clients(redis_server) >= before + 3, "three waiters to block")
    record = TaskRecord(id="t", state=SUCCESS, result=1, result_encoding="json")
    backend.put(record, expires=60)
    assert [w.get() for w in waiters] == [record, record, record]


def test_a_stale_wake_up_token_does_not_make_wait_spin(backend: RedisBackend) -> None:
    backend.put(TaskRecord(id="t", state=SUCCESS), expires=60)
    backend.put(TaskRecord(id="t", state=PENDING), expires=60)  # a re-run: not ready again
    backend._conn.redis.rpush(backend._notify_key("t"), b"1")  # a token left behind anyway
    cpu = time.process_time()
    assert backend.wait("t", timeout=0.5) is None
    assert time.process_time() - cpu < 0.3
    assert backend._conn.redis.exists(backend._notify_key("t")) == 0


def test_a_small_ready_record_is_its_own_wake_up_token(backend: RedisBackend) -> None:
    small = TaskRecord(id="s", state=SUCCESS, result=1, result_encoding="json")
    big = TaskRecord(id="b", state=SUCCESS, result="x" * 5000, result_encoding="json")
    backend.put_many([small, big], expires=60)
    client = backend._conn.redis
    assert json.loads(client.lrange(backend._notify_key("s"), 0, -1)[0])["id"] == "s"
    assert client.lrange(backend._notify_key("b"), 0, -1) == [b"1"]
    # The waiter woken by the token returns the record without reading the key: delete
    # the key behind its back and the small record still comes back, the big one not.
    client.delete(backend._key("s"), backend._key("b"))
    assert backend.wait("s", timeout=WAIT) == small
    assert backend.wait("b", timeout=0.2) is None


def test_a_command_interrupted_between_send_and_reply_leaves_no_reply_behind(
    backend: RedisBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.put(TaskRecord(id="t", state=SUCCESS, result=1, result_encoding="json"), expires=60)
    backend.get("t")  # this thread now keeps a connection
    conn = backend._conn._pinned.conn
    real = conn.read_response

    def interrupted(*args: object, **kwargs: object) -> object:
        monkeypatch.setattr(conn, "read_response", real)
        raise KeyboardInterrupt

    monkeypatch.setattr(conn, "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        backend.get("t")  # the GET's reply is left unread on the socket...
    # ...so the connection was dropped: the next command reads its own reply.
    assert backend._conn.command("PING") == b"PONG"
    assert backend.get("t") is not None


def test_a_connection_killed_by_the_server_is_replaced(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    backend.put(TaskRecord(id="t", state=SUCCESS), expires=60)
    assert backend.get("t") is not None
    with raw_client(redis_server) as client:
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    assert backend.get("t") is not None


def test_record_expiry_follows_the_clock_and_counters_too(
    backend: RedisBackend, clock: ManualClock
) -> None:
    backend.put(TaskRecord(id="t", state=SUCCESS), expires=10)
    clock.advance(10)
    assert backend.get("t") is None
    assert backend.forget("t") is False
    assert backend.incr("c", 2, expires=10) == 2
    clock.advance(9)
    assert backend.incr("c", 3, expires=10) == 5
    clock.advance(10)
    assert backend.incr("c", 1, expires=10) == 1


# -- connection loss --------------------------------------------------------------------------


def test_redis_restart_with_aof_keeps_messages_and_blocked_calls_carry_on(
    start_redis_server: Callable[..., RedisServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = start_redis_server(aof=True)
    url = f"redis://{server.address}/0?prefix=restart:&socket_timeout=2"
    caplog.set_level(logging.WARNING, logger="pluq.transports.redis")
    with open_broker(url) as producer, open_broker(url) as consumer, open_backend(url) as results:
        producer.publish("kept", b"published before the crash", id="kept-1")
        results.put(TaskRecord(id="done", state=SUCCESS), expires=600)
        reserving = InThread(lambda: consumer.reserve(["live"], timeout=WAIT, lease=30))
        waiting = InThread(lambda: results.wait("later", timeout=WAIT))
        wait_until(lambda: blocked_clients(server) >= 2, "a reserve and a wait to block")

        server.kill()
        # Down for longer than redis-py's own retries: pluq's loops take over and say so.
        wait_until(lambda: caplog.text.count("lost the connection to Redis") >= 2, "warnings")
        server.restart()

        producer.publish("live", b"after the restart", id="live-1")
        results.put(TaskRecord(id="later", state=SUCCESS), expires=600)
        deliveries = reserving.get()
        assert isinstance(deliveries, list)
        assert [d.id for d in deliveries] == ["live-1"]
        assert isinstance(waiting.get(), TaskRecord)
        assert [d.id for d in consumer.reserve(["kept"], timeout=0, lease=30)] == ["kept-1"]
        assert results.get("done") is not None
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def test_reserve_while_redis_is_down_returns_empty_after_its_timeout(
    start_redis_server: Callable[..., RedisServer],
) -> None:
    server = start_redis_server()
    with open_broker(f"redis://{server.address}/0?prefix=down:") as broker:
        broker.publish("q", b"m", id="1")
        server.kill()
        assert broker.reserve(["q"], timeout=0.5, lease=30) == []
        server.restart()  # no AOF: the queue is gone, but the broker works again
        assert broker.publish("q", b"m", id="2") is True
        assert [d.id for d in broker.reserve(["q"], timeout=1, lease=30)] == ["2"]


def test_broker_survives_fork(redis_url: str) -> None:
    with open_broker(redis_url) as broker:
        broker.publish("q", b"parent", id="p")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: the inherited client must reconnect, not share a socket
            try:
                ok = broker.publish("q", b"child", id="c") and broker.counts(["q"])["q"].ready
                os.write(write, str(ok).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            reported = pipe.read()
        os.waitpid(pid, 0)
        assert reported == "2"
        assert [d.id for d in broker.reserve(["q"], timeout=0, lease=30, limit=5)] == ["p", "c"]
