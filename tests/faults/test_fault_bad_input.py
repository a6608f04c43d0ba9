"""Bad input: every message that cannot run ends as a FAILURE and/or a dead letter with a
reason, and the worker (and its child) goes on as if nothing happened."""

from __future__ import annotations

import json
import pickle
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import fault_tasks as ft
from faultkit import assert_quiet_broker
from hypothesis import given, settings
from hypothesis import strategies as st

import pluq
from _support import wait_until
from pluq import message as msg
from pluq.backend import FAILURE


@dataclass(frozen=True)
class Bad:
    """One bad input: how to queue it (returns its id), and how it must end."""

    name: str
    queue: Callable[[pluq.App], str]
    exc_type: str
    """The FAILURE record's exception type."""
    reason: str
    """A piece of the dead letter's reason (and of the record's message)."""


def _raw(app: pluq.App, task_id: str, data: bytes) -> str:
    assert app.broker.publish("default", data, id=task_id)
    return task_id


def _good(app: pluq.App, task_id: str, task: str = ft.work.name, **header: object) -> bytes:
    """A well-formed unsigned message for `task`, with header fields changed as given."""
    out = app._build(ft.app.tasks.get(task), task, ("/dev/null", 1), {}, task_id=task_id)
    head, body = msg.decode(out.message)
    return msg.encode(head.evolve(**header), body)


def _future(app: pluq.App) -> str:
    data = _good(app, "future")
    head, _, body = data.partition(b"\n")
    fields = json.loads(head)
    fields["v"] = msg.FORMAT_VERSION + 1
    return _raw(app, "future", json.dumps(fields).encode() + b"\n" + body)


def _truncated_body(app: pluq.App) -> str:
    data = _good(app, "truncated-body")
    return _raw(app, "truncated-body", data[: len(data) - 5])


def _unloadable(app: pluq.App) -> str:
    head, _ = msg.decode(_good(app, "unloadable"))
    # Arguments that reference a module no worker can import (pickle protocol 0 is text).
    body = pickle.dumps({"args": [OrderedDict()], "kwargs": {}}, protocol=0)
    body = body.replace(b"ccollections\nOrderedDict", b"cno_such_module_anywhere\nOrderedDict")
    assert b"no_such_module_anywhere" in body
    return _raw(app, "unloadable", msg.encode(head, body))


BAD_INPUTS = [
    Bad(
        "corrupt bytes",
        lambda app: _raw(
            app, "corrupt", bytes(random.Random(7).randrange(256) for _ in range(300))
        ),
        "pluq.errors.MessageError",
        "malformed message",
    ),
    Bad(
        "truncated in the header",
        lambda app: _raw(app, "truncated-head", _good(app, "truncated-head")[:40]),
        "pluq.errors.MessageError",
        "malformed message: not a pluq message: no header line",
    ),
    Bad(
        "truncated in the body",
        _truncated_body,
        "pluq.errors.MessageError",
        "cannot load the task's arguments",
    ),
    Bad("a header from a future version", _future, "pluq.errors.MessageError", "newer pluq"),
    Bad(
        "a header whose id is not the broker's",
        lambda app: _raw(app, "other-id", _good(app, "not-this-one")),
        "pluq.errors.MessageError",
        "is not the broker's id",
    ),
    Bad(
        "a header line over 1 MiB",
        lambda app: _raw(
            app, "huge-header", _good(app, "huge-header", meta={"x": "y" * (1 << 20)})
        ),
        "pluq.errors.MessageError",
        "longer than 1 MiB",
    ),
    Bad(
        "an unknown task name",
        lambda app: _raw(app, "unknown", _good(app, "unknown", task="fault_tasks.no_such_task")),
        "pluq.errors.NotRegistered",
        "unknown task 'fault_tasks.no_such_task'",
    ),
    Bad(
        "a payload that cannot be unpickled",
        _unloadable,
        "pluq.errors.MessageError",
        "cannot load the task's arguments: ModuleNotFoundError",
    ),
    Bad(
        "a result that cannot be pickled",
        lambda app: ft.unpicklable_result.delay().id,
        "pluq.errors.SerializationError",
        "the task's return value cannot be stored",
    ),
    Bad(
        "a task raising SystemExit",
        lambda app: ft.raise_base.delay("SystemExit").id,
        "SystemExit",
        "SystemExit: 3",
    ),
    Bad(
        "a task raising KeyboardInterrupt",
        lambda app: ft.raise_base.delay("KeyboardInterrupt").id,
        "KeyboardInterrupt",
        "KeyboardInterrupt",
    ),
]


def test_every_bad_input_ends_as_a_failure_and_a_dead_letter_with_a_reason(
    fapp: pluq.App, ledger: str
) -> None:
    with fapp.worker(concurrency=1, lease=2.0) as worker:
        child = ft.pid.delay().get(timeout=60)
        # given good tasks interleaved with every kind of bad input
        good, bad = [], {}
        for n, case in enumerate(BAD_INPUTS):
            good.append(ft.work.delay(ledger, n))
            bad[case.queue(fapp)] = case
        good.append(ft.work.delay(ledger, len(BAD_INPUTS)))
        # then every good task succeeds
        assert [r.get(timeout=60) for r in good] == list(range(len(BAD_INPUTS) + 1))
        # and every bad one ends as a FAILURE record (so no caller waits forever)
        for task_id, case in bad.items():
            record = fapp.backend.wait(task_id, timeout=60)
            assert record is not None, case.name
            assert (record.state, record.exc_type) == (FAILURE, case.exc_type), case.name
            said = f"{record.exc_type}: {record.exc_message}"
            assert case.reason in said, (case.name, said)
        # and the worker and its child are the same as before
        assert ft.pid.delay().get(timeout=60) == child
        assert worker.exit_code is None
    # and every bad one is a dead letter whose reason says what was wrong
    reasons = {d.id: d.reason for d in fapp.dead_letters()}
    assert set(reasons) == set(bad)
    for task_id, case in bad.items():
        assert case.reason in reasons[task_id], (case.name, reasons[task_id])
    assert fapp.stats().queues["default"].total == len(bad)  # the dead letters, nothing else


def test_twenty_random_blobs_among_a_hundred_tasks_are_each_dead_lettered_once(
    fapp: pluq.App, ledger: str
) -> None:
    rng = random.Random(2024)
    blobs = {}
    for n in range(20):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
        blobs[f"blob-{n}"] = data
    results = []
    for n in range(100):
        results.append(ft.work.delay(ledger, n))
        if n % 5 == 0:
            task_id = f"blob-{n // 5}"
            assert fapp.broker.publish("default", blobs[task_id], id=task_id)
    with fapp.worker(concurrency=2, lease=2.0):
        assert [r.get(timeout=60) for r in results] == list(range(100))
        for task_id in blobs:
            record = fapp.backend.wait(task_id, timeout=60)
            assert record is not None and record.state == FAILURE
    dead = fapp.dead_letters()
    assert sorted(d.id for d in dead) == sorted(blobs)
    assert all(d.attempt == 1 for d in dead)  # handled once, never requeued
    assert all(d.reason.startswith("malformed message") for d in dead)
    assert {d.id: d.message for d in dead} == blobs  # the bytes are kept as they came


def test_an_oversized_payload_runs_or_fails_cleanly(fapp: pluq.App) -> None:
    # pluq sets no size limit of its own: 16 MiB of arguments travel and run
    payload = bytes(16 << 20)
    with fapp.worker(concurrency=1, lease=5.0):
        result = ft.size.delay(payload)
        assert result.get(timeout=120) == len(payload)
        assert ft.size.delay(b"small").get(timeout=60) == 5


def _total(app: pluq.App) -> int:
    return app.broker.counts(["default"])["default"].total


def _forgetful(url: str) -> str:
    return url + ("&" if "?" in url else "?") + "dedupe_window=0"


def test_a_duplicate_task_id_runs_once_and_never_overwrites_the_outcome(
    fapp: pluq.App, any_url: str, ledger: str
) -> None:
    # given a task queued twice under one id, with different arguments
    first = ft.work.apply_async((ledger, 1), task_id="dup")
    second = ft.work.apply_async((ledger, 2), task_id="dup")
    assert first == second
    with fapp.worker(concurrency=2, lease=2.0):
        # then it ran once, with the first arguments
        assert first.get(timeout=60) == 1
        done = first.record
        # and queuing it again after it finished changes nothing
        ft.work.apply_async((ledger, 3), task_id="dup")
        assert ft.work.delay(ledger, 4).get(timeout=60) == 4
    assert fapp.AsyncResult("dup").record == done
    assert ft.executions(ledger)["dup"] == 1
    assert_quiet_broker(fapp)


def test_a_finished_task_queued_again_is_not_run_again(
    fapp: pluq.App, any_url: str, ledger: str
) -> None:
    # given a broker that forgets acknowledged ids at once (dedupe_window=0) and a task
    # that ran to its end
    fapp.close()
    fapp.broker_url = fapp.backend_url = _forgetful(any_url)
    with fapp.worker(concurrency=1, lease=2.0):
        assert ft.work.apply_async((ledger, 1), task_id="again").get(timeout=60) == 1
        done = fapp.AsyncResult("again").record
        # when the same id is queued again, with other arguments (a replay), and accepted
        wait_until(lambda: _total(fapp) == 0, what="the ack after the outcome")
        again = ft.work.apply_async((ledger, 2), task_id="again")
        assert ft.work.delay(ledger, 3).get(timeout=60) == 3
        # then the worker sees its stored outcome and acknowledges it without running it
        wait_until(lambda: _total(fapp) == 0, what="the replay to be acknowledged")
    assert again.get(timeout=1) == 1
    assert fapp.AsyncResult("again").record == done
    assert ft.executions(ledger)["again"] == 1


# -- the decoder, fuzzed ---------------------------------------------------------------

KEYS = (b"fuzz-key",)
_SIGNED = msg.encode(
    msg.Header(
        id="t1",
        task="fault_tasks.canary",
        queue="default",
        serializer="json",
        retries=1,
        eta=5.0,
        meta={"chain": ["t2"]},
    ),
    b'{"args":["/tmp/ledger"],"kwargs":{}}',
    KEYS,
)
_HEADER, _BODY = msg.decode(_SIGNED)


def _accepted(data: bytes) -> tuple[msg.Header, bytes] | None:
    """What a worker with KEYS would run, or None if it refuses the bytes."""
    try:
        header, body = msg.decode(data)
        msg.verify(header, body, KEYS)
    except (pluq.MessageError, pluq.SignatureError):
        return None
    return header, body


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_fuzzed_changes_to_a_signed_message_are_refused_or_change_nothing(
    data: st.DataObject,
) -> None:
    # given a signed message, changed at random: bytes replaced, inserted, deleted, cut
    raw = bytearray(_SIGNED)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "replace" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and raw:
            del raw[at : at + data.draw(st.integers(1, 8))]
        elif kind == "truncate":
            del raw[at:]
    # then the worker refuses it, or what it would run is exactly what was signed
    accepted = _accepted(bytes(raw))
    assert accepted is None or accepted == (_HEADER, _BODY)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "id",
            "task",
            "queue",
            "serializer",
            "retries",
            "max_retries",
            "eta",
            "expires",
            "created",
            "seen",
            "lost",
            "meta",
        ]
    ),
    st.one_of(
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=True),
        st.text(max_size=20),
        st.none(),
        st.dictionaries(st.text(max_size=3), st.integers()),
    ),
)
def test_fuzzed_header_fields_of_a_signed_message_are_refused(field: str, value: object) -> None:
    head = json.loads(_SIGNED.partition(b"\n")[0])
    if head.get(field) == value:
        return
    head[field] = value
    data = json.dumps(head).encode() + b"\n" + _BODY
    assert _accepted(data) is None
