"""The result store: roundtrip, expiry, wait (threads and processes), atomic counters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pluq.backend import (
    FAILURE,
    PENDING,
    RETRY,
    REVOKED,
    STARTED,
    SUCCESS,
    Attempt,
    ResultBackend,
    TaskRecord,
)
from pluq.errors import SerializationError

from . import _procs
from ._clock import ManualClock
from ._kit import Children, ContractBase, requires

HOUR = 3600.0
WAKE_BOUND = 0.5


def full_record(task_id: str = "t1", state: str = FAILURE) -> TaskRecord:
    """A record with every field set to something other than its default."""
    return TaskRecord(
        id=task_id,
        state=state,
        task="billing.charge",
        queue="high",
        result={"value": [1, 2.5, "three", None, True], "nested": {"k": "v"}},
        result_encoding="json",
        result_repr="{'value': [1, 2.5, 'three', None, True], 'nested': {'k': 'v'}}",
        exc_type="builtins.ValueError",
        exc_message='bad ünïcode ✓ 💥 "quoted" \n newline',
        traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad',
        retries=2,
        history=(
            Attempt(
                number=1,
                state=RETRY,
                exc_type="builtins.ConnectionError",
                exc_message="refused",
                traceback="tb 1",
                started_at=1000.5,
                finished_at=1001.25,
                worker="w1@host",
            ),
            Attempt(number=2, state=RETRY, exc_type="pluq.errors.WorkerLostError"),
            Attempt(
                number=3,
                state=FAILURE,
                exc_type="builtins.ValueError",
                exc_message="bad",
                traceback="tb 3",
                started_at=1010.0,
                finished_at=1010.75,
                worker="w2@host",
            ),
        ),
        worker="w2@host",
        created_at=999.0,
        started_at=1000.5,
        finished_at=1010.75,
        meta={"group": "g1", "chord": {"size": 3}, "list": [1, "a", None], "float": 0.1},
        signature="3f2a9c",
    )


class _BlockedWaiter:
    """A thread blocked in `backend.wait(task_id)` while the `with` block runs; on exit it
    is joined, and `record` and `woke_at` (monotonic) say what woke it and when."""

    def __init__(self, backend: ResultBackend, task_id: str) -> None:
        self.record: TaskRecord | None = None
        self.woke_at = 0.0
        self._started = threading.Event()

        def wait() -> None:
            self._started.set()
            self.record = backend.wait(task_id, timeout=30)
            self.woke_at = time.monotonic()

        self._thread = threading.Thread(target=wait)

    def __enter__(self) -> _BlockedWaiter:
        self._thread.start()
        assert self._started.wait(30)
        threading.Event().wait(0.3)  # let the waiter settle into its wait
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(60)


class BackendContract(ContractBase):
    def test_a_record_that_is_not_json_is_refused_and_nothing_is_stored(
        self, backend: ResultBackend
    ) -> None:
        record = TaskRecord(id="not-json", state=SUCCESS, meta={"bad": object()})
        with pytest.raises(SerializationError, match="not JSON"):
            backend.put(record, expires=HOUR)
        assert backend.get("not-json") is None

    def test_put_then_get_roundtrips(self, backend: ResultBackend) -> None:
        record = full_record()
        backend.put(record, expires=HOUR)
        assert backend.get(record.id) == record

    def test_a_minimal_record_roundtrips(self, backend: ResultBackend) -> None:
        record = TaskRecord(id="t1")
        backend.put(record, expires=HOUR)
        got = backend.get("t1")
        assert got == record
        assert got is not None
        assert got.state == PENDING

    def test_a_serialized_result_roundtrips(self, backend: ResultBackend) -> None:
        record = TaskRecord(
            id="t1", state=SUCCESS, result="gASVCAAAAAAAAACMBGRhdGGULg==", result_encoding="pickle"
        )
        backend.put(record, expires=HOUR)
        assert backend.get("t1") == record

    def test_put_replaces_the_earlier_record(self, backend: ResultBackend) -> None:
        backend.put(TaskRecord(id="t1", state=STARTED, worker="w1"), expires=HOUR)
        final = TaskRecord(id="t1", state=SUCCESS, result=42, result_encoding="json")
        backend.put(final, expires=HOUR)
        assert backend.get("t1") == final

    def test_get_of_an_unknown_id_is_none(self, backend: ResultBackend) -> None:
        assert backend.get("never-stored") is None

    def test_ids_are_opaque_strings(self, backend: ResultBackend) -> None:
        ids = ["with/slash", "with space", "ünïcode-✓", "a:b|c*d?e", "x" * 200]
        for task_id in ids:
            backend.put(TaskRecord(id=task_id, state=SUCCESS), expires=HOUR)
        assert [r.id if r else None for r in backend.get_many(ids)] == ids

    def test_get_many_returns_records_in_order(self, backend: ResultBackend) -> None:
        first, second = full_record("a"), TaskRecord(id="b", state=STARTED)
        backend.put(first, expires=HOUR)
        backend.put(second, expires=HOUR)
        assert backend.get_many(["b", "missing", "a", "b"]) == [second, None, first, second]
        assert backend.get_many([]) == []

    def test_forget_deletes_the_record(self, backend: ResultBackend) -> None:
        backend.put(full_record("t1"), expires=HOUR)
        assert backend.forget("t1") is True
        assert backend.get("t1") is None
        assert backend.forget("t1") is False
        assert backend.forget("never-stored") is False

    def test_expiry_is_enforced(self, backend: ResultBackend, clock: ManualClock) -> None:
        # given a record kept for 10 s and one kept for an hour
        backend.put(full_record("short"), expires=10)
        backend.put(full_record("long"), expires=HOUR)
        clock.advance(9.5)
        assert backend.get("short") == full_record("short")
        # when 10 s have passed on the backend's clock, then the short one is gone
        clock.advance(1)
        assert backend.get("short") is None
        assert backend.get_many(["short", "long"]) == [None, full_record("long")]
        assert backend.wait("short", timeout=0) is None
        assert backend.purge_expired() in (0, 1)
        assert backend.get("short") is None
        assert backend.get("long") == full_record("long")

    def test_purge_expired_deletes_expired_records(
        self, backend: ResultBackend, clock: ManualClock
    ) -> None:
        for i in range(3):
            backend.put(TaskRecord(id=f"old{i}", state=SUCCESS), expires=10)
        backend.put(TaskRecord(id="new", state=SUCCESS), expires=HOUR)
        clock.advance(11)
        # Stores that expire keys by themselves may have done it already (and say 0).
        assert backend.purge_expired() in (0, 3)
        assert backend.get_many(["old0", "old1", "old2", "new"])[:3] == [None, None, None]
        assert backend.get("new") is not None

    def test_put_refreshes_the_expiry(self, backend: ResultBackend, clock: ManualClock) -> None:
        backend.put(TaskRecord(id="t1", state=STARTED), expires=10)
        clock.advance(8)
        backend.put(TaskRecord(id="t1", state=SUCCESS), expires=10)
        clock.advance(8)
        assert backend.get("t1") == TaskRecord(id="t1", state=SUCCESS)

    @pytest.mark.parametrize("state", [SUCCESS, FAILURE, REVOKED])
    def test_wait_returns_at_once_for_a_ready_record(
        self, backend: ResultBackend, state: str
    ) -> None:
        record = full_record("t1", state=state)
        backend.put(record, expires=HOUR)
        started = time.monotonic()
        assert backend.wait("t1", timeout=30) == record
        assert backend.wait("t1", timeout=None) == record
        assert backend.wait("t1", timeout=0) == record
        assert time.monotonic() - started < 5

    def test_wait_times_out_with_none(self, backend: ResultBackend) -> None:
        backend.put(TaskRecord(id="t1", state=STARTED), expires=HOUR)
        for task_id in ("t1", "never-stored"):
            started = time.monotonic()
            assert backend.wait(task_id, timeout=0.3) is None
            assert 0.25 <= time.monotonic() - started < 10

    def test_wait_returns_when_ready(
        self, backend: ResultBackend, report: Callable[[str, float, str], None]
    ) -> None:
        # given a running task, and a waiter blocked on it
        backend.put(TaskRecord(id="t1", state=STARTED), expires=HOUR)
        record = full_record("t1", state=SUCCESS)
        with _BlockedWaiter(backend, "t1") as waiter:
            # when a non-ready state is put, it keeps waiting; a ready one wakes it
            backend.put(TaskRecord(id="t1", state=RETRY), expires=HOUR)
            put_at = time.monotonic()
            backend.put(record, expires=HOUR)
        assert waiter.record == record
        latency = waiter.woke_at - put_at
        report("wait_latency_ms", latency * 1000, "ms")
        assert latency < WAKE_BOUND

    @requires("shared_between_processes")
    def test_wait_returns_when_ready_from_another_process(
        self,
        live_backend: ResultBackend,
        backend_url: str,
        report: Callable[[str, float, str], None],
    ) -> None:
        live_backend.put(TaskRecord(id="t1", state=STARTED), expires=HOUR)
        record = full_record("t1", state=SUCCESS)
        with Children() as children:
            ready = children.event()
            children.start(_procs.wait_for_record, ready, backend_url, "t1", 30.0)
            children.wait(ready, "opened the backend")
            threading.Event().wait(0.5)  # let the waiter settle into its wait
            put_at = time.monotonic()
            live_backend.put(record, expires=HOUR)
            result = children.get()
            children.join()
        latency = result["woke_at"] - put_at
        report("cross_process_wait_latency_ms", latency * 1000, "ms")
        assert result["record"] is not None
        assert TaskRecord.from_dict(result["record"]) == record
        assert latency < WAKE_BOUND

    def test_incr_adds_and_returns_the_new_value(self, backend: ResultBackend) -> None:
        assert backend.incr("c", expires=HOUR) == 1
        assert backend.incr("c", 5, expires=HOUR) == 6
        assert backend.incr("c", -2, expires=HOUR) == 4
        assert backend.incr("other", 3, expires=HOUR) == 3

    def test_incr_is_atomic(self, backend: ResultBackend) -> None:
        # eight threads sharing one backend: every value from 1 to 800 is returned once
        values: list[int] = []
        lock = threading.Lock()
        errors: list[BaseException] = []

        def count() -> None:
            try:
                mine = [backend.incr("c", expires=HOUR) for _ in range(100)]
            except BaseException as exc:
                errors.append(exc)
                return
            with lock:
                values.extend(mine)

        threads = [threading.Thread(target=count) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert sorted(values) == list(range(1, 801))

    @requires("shared_between_processes")
    def test_incr_is_atomic_across_processes(self, backend_url: str) -> None:
        with Children() as children:
            readies = [children.event() for _ in range(4)]
            go = children.event()
            for ready in readies:
                children.start(_procs.incr_many, ready, go, backend_url, "chord-counter", 250)
            for ready in readies:
                children.wait(ready, "opened the backend")
            go.set()
            values = [v for _ in readies for v in children.get(timeout=120)["values"]]
            children.join()
        assert sorted(values) == list(range(1, 1001))

    def test_counters_expire_after_their_last_change(
        self, backend: ResultBackend, clock: ManualClock
    ) -> None:
        assert backend.incr("c", expires=10) == 1
        clock.advance(8)
        assert backend.incr("c", expires=10) == 2
        clock.advance(8)  # 16 s after creation, 8 s after the last change
        assert backend.incr("c", expires=10) == 3
        clock.advance(10.5)
        assert backend.incr("c", expires=10) == 1

    def test_counters_live_apart_from_records(self, backend: ResultBackend) -> None:
        record = full_record("k")
        backend.put(record, expires=HOUR)
        assert backend.incr("k", expires=HOUR) == 1
        assert backend.get("k") == record
        backend.forget("k")
        assert backend.incr("k", expires=HOUR) == 2

    def test_put_many_roundtrips_every_record(self, backend: ResultBackend) -> None:
        records = [
            full_record("with/slash", state=SUCCESS),
            TaskRecord(id="minimal"),
            full_record("ünïcode-✓", state=FAILURE),
            TaskRecord(id="started", state=STARTED, worker="w1", retries=1),
        ]
        backend.put_many(records, expires=HOUR)
        assert backend.get_many([r.id for r in records]) == records
        assert [backend.get(r.id) for r in records] == records

    def test_put_many_stores_records_in_order(self, backend: ResultBackend) -> None:
        # given a batch that holds two records of one id, then the later one is kept
        started = TaskRecord(id="t1", state=STARTED, worker="w1")
        final = TaskRecord(id="t1", state=SUCCESS, result=42, result_encoding="json")
        backend.put_many([started, final], expires=HOUR)
        assert backend.get("t1") == final
        backend.put_many([final, started], expires=HOUR)
        assert backend.get("t1") == started
        assert backend.wait("t1", timeout=0) is None

    def test_put_many_of_nothing_stores_nothing(self, backend: ResultBackend) -> None:
        backend.put(full_record("t1"), expires=HOUR)
        backend.put_many([], expires=HOUR)
        assert backend.get("t1") == full_record("t1")

    def test_put_many_refuses_a_record_that_is_not_json(self, backend: ResultBackend) -> None:
        bad = TaskRecord(id="not-json", state=SUCCESS, meta={"bad": object()})
        with pytest.raises(SerializationError, match="not JSON"):
            backend.put_many([TaskRecord(id="fine", state=SUCCESS), bad], expires=HOUR)
        assert backend.get("not-json") is None

    def test_put_many_respects_expiry(self, backend: ResultBackend, clock: ManualClock) -> None:
        # given a batch kept for 10 s, and a batch that replaces an hour-long record
        backend.put(full_record("refreshed"), expires=HOUR)
        backend.put_many([full_record("short"), full_record("refreshed")], expires=10)
        backend.put_many([full_record("long")], expires=HOUR)
        clock.advance(9.5)
        assert backend.get_many(["short", "refreshed"]) == [
            full_record("short"),
            full_record("refreshed"),
        ]
        # when 10 s have passed, then the whole batch is gone and the other is kept
        clock.advance(1)
        assert backend.get_many(["short", "refreshed", "long"]) == [None, None, full_record("long")]
        assert backend.wait("short", timeout=0) is None
        # a batch that expires at once stores nothing that can be read
        backend.put_many([full_record("long"), full_record("gone")], expires=0)
        assert backend.get_many(["long", "gone"]) == [None, None]

    def test_put_many_wakes_wait_for_ready_records(
        self, backend: ResultBackend, report: Callable[[str, float, str], None]
    ) -> None:
        # given a waiter blocked on a running task
        backend.put(TaskRecord(id="t2", state=STARTED), expires=HOUR)
        record = full_record("t2", state=SUCCESS)
        with _BlockedWaiter(backend, "t2") as waiter:
            # when a batch puts it ready, among records that are not ready
            put_at = time.monotonic()
            batch = [TaskRecord(id="t1", state=STARTED), record, TaskRecord(id="t3")]
            backend.put_many(batch, expires=HOUR)
        # then the waiter wakes with it, and the records that are not ready do not count
        assert waiter.record == record
        latency = waiter.woke_at - put_at
        report("put_many_wait_latency_ms", latency * 1000, "ms")
        assert latency < WAKE_BOUND
        assert backend.wait("t1", timeout=0) is None

    def test_put_many_stores_a_batch_larger_than_any_chunk(self, backend: ResultBackend) -> None:
        records = [TaskRecord(id=f"t{i}", state=SUCCESS, result=i) for i in range(1100)]
        backend.put_many(records, expires=HOUR)
        assert backend.get_many([r.id for r in records]) == records


class TestBackend(BackendContract):
    pass
