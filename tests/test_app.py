"""The App and tasks without a worker: options, wrong calls, results, administration."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime, timedelta

import pytest

import pluq
from pluq import message as msg


def test_the_task_decorator_works_with_and_without_options(app: pluq.App) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="billing.charge", queue="high", max_retries=5)
    def charge(order: str) -> str:
        return order

    assert plain.name == "test_app.plain" or plain.name.endswith(".plain")
    assert app.tasks["billing.charge"] is charge
    assert charge.queue == "high" and charge.max_retries == 5
    assert plain(3) == 3 and charge("o1") == "o1"  # a plain local call


def test_a_bound_task_gets_itself_and_a_request_when_called_locally(app: pluq.App) -> None:
    @app.task(bind=True)
    def who(self: pluq.Task[..., str]) -> str:
        return f"{self.name}:{self.request.called_directly}"

    assert who() == f"{who.name}:True"


def test_unknown_task_options_are_configuration_errors(app: pluq.App) -> None:
    with pytest.raises(pluq.ConfigurationError, match="unknown task option"):
        app.task(retries=3)  # type: ignore[call-overload]


def test_delay_publishes_at_once_and_returns_a_pending_result(app: pluq.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 2)
    assert isinstance(result, pluq.AsyncResult)
    assert result.state == "PENDING" and not result.ready()
    assert app.stats().queues["default"].ready == 1
    header, _ = msg.decode((app.broker.dead_letters() and b"") or _first_message(app))
    assert header.task == add.name and header.id == result.id


def _first_message(app: pluq.App) -> bytes:
    [delivery] = app.broker.reserve(["default"], timeout=0, lease=30)
    app.broker.release(delivery)
    return delivery.message


def test_apply_async_options_route_delay_and_name_the_task(app: pluq.App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.apply_async((1, 2), countdown=60, queue="high", task_id="my-id", expires=120)
    assert result.id == "my-id"
    assert app.stats().queues["high"].delayed == 1
    again = add.apply_async((1, 2), task_id="my-id")  # idempotent on id
    assert again.id == "my-id" and app.stats().queues["high"].delayed == 1


def test_wrong_calls_fail_at_delay_time_with_a_message_that_says_what_to_do(app: pluq.App) -> None:
    @app.task
    def take(x: object) -> object:
        return x

    with pytest.raises(pluq.SerializationError, match="cannot pickle"):
        take.delay(threading.Lock())
    with pytest.raises(pluq.ConfigurationError, match="countdown"):
        take.apply_async((1,), countdown=-1)
    with pytest.raises(pluq.ConfigurationError, match="not both"):
        take.apply_async((1,), countdown=1, eta=datetime.now())
    with pytest.raises(pluq.ConfigurationError):
        take.apply_async((1,), eta="tomorrow")  # type: ignore[arg-type]
    assert app.stats().queues.get("default") is None or app.stats().queues["default"].total == 0


def test_json_serializer_refuses_values_it_cannot_carry(memory_url: str) -> None:
    app = pluq.App(memory_url, serializer="json")
    with pytest.raises(pluq.SerializationError, match="JSON"):
        app.send_task("somewhere.take", ({1, 2},))

    @app.task
    def local() -> None:
        return None

    with pytest.raises(pluq.ConfigurationError, match="by value"):
        local.delay()


def test_a_task_defined_in_a_closure_travels_by_value(app: pluq.App) -> None:
    def make(n: int) -> pluq.Task[[int], int]:
        @app.task(name=f"times{n}")
        def times(x: int) -> int:
            return x * n

        return times

    assert make(3).by_value
    lam = app.task(name="lam")(lambda x: x + 1)
    assert lam.by_value


def test_bad_urls_and_options_are_configuration_errors() -> None:
    with pytest.raises(pluq.ConfigurationError, match="known schemes"):
        pluq.App("nosuch://x")
    with pytest.raises(pluq.ConfigurationError, match="scheme://"):
        pluq.App("just-a-path")
    with pytest.raises(pluq.ConfigurationError, match="serializer"):
        pluq.App("memory://", serializer="yaml")
    with pytest.raises(pluq.ConfigurationError, match="result_expires"):
        pluq.App("memory://", result_expires=0)


def test_pickle_on_a_network_transport_needs_a_secret_or_an_opt_in() -> None:
    with pytest.raises(pluq.ConfigurationError, match="secret"):
        pluq.App("redis://localhost:1/0")
    pluq.App("redis://localhost:1/0", secret="s")
    pluq.App("redis://localhost:1/0", serializer="json")
    pluq.App("redis://localhost:1/0", allow_unsigned_pickle=True)


def test_get_times_out_with_a_hint(app: pluq.App) -> None:
    @app.task
    def nothing() -> None:
        return None

    with pytest.raises(pluq.TimeoutError, match="is a worker running"):
        nothing.delay().get(timeout=0.05)


def test_purge_and_stats(app: pluq.App) -> None:
    @app.task
    def noop() -> None:
        return None

    for _ in range(3):
        noop.delay()
    noop.apply_async(countdown=60)
    stats = app.stats()
    assert stats["queues"]["default"]["ready"] == 3
    assert stats.queues["default"].delayed == 1
    assert stats.to_dict()["queues"]["default"]["running"] == 0
    assert app.purge("default") == 4
    assert app.stats().queues["default"].total == 0


def test_a_revoked_task_reads_revoked(app: pluq.App) -> None:
    @app.task
    def noop() -> None:
        return None

    result = noop.apply_async(eta=datetime.now() + timedelta(hours=1))
    result.revoke()
    assert result.state == "REVOKED"
    with pytest.raises(pluq.TaskRevokedError):
        result.get(timeout=1)
    assert app.stats().queues["default"].delayed == 0
    result.forget()
    assert result.state == "PENDING"


def test_an_app_loads_its_transport_only_when_it_connects() -> None:
    # A worker's children import the app but never connect: they must not load redis-py.
    code = (
        "import sys, pluq\n"
        "app = pluq.App('redis://127.0.0.1:1/0', secret='s')\n"
        "print('pluq.transports.redis' in sys.modules, 'redis' in sys.modules)\n"
        "app.broker\n"
        "print('pluq.transports.redis' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_results_signed_by_another_secret_are_refused(memory_url: str) -> None:
    from pluq.backend import TaskRecord

    app = pluq.App(memory_url, secret="mine")
    forged = msg.sign_record(
        TaskRecord(id="x", state="SUCCESS", result=1, result_encoding="json"), (b"theirs",)
    )
    app.backend.put(forged, expires=60)
    with pytest.raises(pluq.SignatureError):
        app.AsyncResult("x").get(timeout=1)


def test_registering_two_functions_under_one_name_is_an_error(app: pluq.App) -> None:
    app.task(name="same")(lambda: 1)
    with pytest.raises(pluq.ConfigurationError, match="two different functions"):
        app.task(name="same")(lambda: 2)


def test_the_app_connects_only_on_first_use() -> None:
    app = pluq.App("sqlite:////nonexistent-dir-for-pluq/x.db")

    @app.task
    def noop() -> None:
        return None

    assert app._broker is None and app._backend is None


_BUILT_IN_URLS = (
    "memory://t",
    "file:///tmp/pluq-t",
    "sqlite:///pluq-t.db",
    "redis://localhost:6379/0",
    "rediss://localhost:6379/0",
    "unix:///run/redis.sock",
)


@pytest.mark.parametrize("url", _BUILT_IN_URLS)
def test_the_registry_says_which_built_in_transports_processes_share_as_they_do(
    url: str,
) -> None:
    from pluq.registry import shared_between_processes, transport_for

    capabilities = transport_for(url).capabilities
    assert shared_between_processes(url) is capabilities.shared_between_processes


def test_asking_whether_redis_is_shared_does_not_import_redis_py() -> None:
    code = (
        "import sys; from pluq.registry import shared_between_processes as shared; "
        "assert shared('redis://h:6379/0') and not shared('memory://t'); "
        "assert 'redis' not in sys.modules, 'redis-py was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
