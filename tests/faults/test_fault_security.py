"""Security: bad messages never run, the supervisor never unpickles, results are verified
by the client, queue files are private, and no secret reaches a log line."""

from __future__ import annotations

import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import fault_tasks as ft
import pytest
from faultkit import Workers, wait_all_ready
from transports._servers import RedisServer

import pluq
from _support import wait_until
from pluq import message as msg
from pluq.backend import FAILURE, REVOKED, SUCCESS, TaskRecord
from pluq.broker import Outgoing
from pluq.errors import SignatureError

NEW, OLD, WRONG = b"key-2025", b"key-2024", b"not-our-key"


def _pack(
    task: pluq.Task[..., Any], args: tuple[Any, ...], keys: tuple[bytes, ...], **options: Any
) -> Outgoing:
    return msg.pack(
        task=task.name,
        args=args,
        kwargs={},
        queue="default",
        serializer=ft.app.serializer,
        keys=keys,
        now=time.time(),
        **options,
    )


def _forge(data: bytes, *, body: bytes | None = None, **changes: Any) -> bytes:
    """The message with header fields or the body changed, its signature left as it was."""
    head, _, old_body = data.partition(b"\n")
    fields = json.loads(head)
    fields.update(changes)
    return json.dumps(fields).encode() + b"\n" + (old_body if body is None else body)


def _publish(app: pluq.App, out: Outgoing, data: bytes | None = None) -> str:
    assert app.broker.publish(out.queue, data if data is not None else out.message, id=out.id)
    return out.id


@contextmanager
def _keys(app: pluq.App, *keys: bytes) -> Iterator[None]:
    app.keys = keys
    try:
        yield
    finally:
        app.keys = ()


def test_a_canary_never_runs_on_a_bad_message(fapp: pluq.App, tmp_path: Path) -> None:
    canary_ledger = str(tmp_path / "canary")
    ledger = str(tmp_path / "ledger")
    canary = ft.canary

    # given messages that must not run: unsigned, signed with a key we do not hold, a body
    # swapped under a valid signature, header fields changed (task, eta, retries, expires),
    # and a signed message replayed after its expiry
    def tampered(out: Outgoing, **changes: Any) -> str:
        return _publish(fapp, out, _forge(out.message, **changes))

    def signed(task: pluq.Task[..., Any], args: tuple[Any, ...], task_id: str) -> Outgoing:
        return _pack(task, args, (NEW,), task_id=task_id)

    # a body that would write into the canary's ledger, under a harmless message's signature
    _, into_canary = msg.decode(signed(ft.work, (canary_ledger, 0), "x").message)
    soon = _pack(canary, (canary_ledger,), (NEW,), expires=time.time() + 0.2)
    bad = {
        _publish(fapp, _pack(canary, (canary_ledger,), ())): "is not signed",
        _publish(fapp, _pack(canary, (canary_ledger,), (WRONG,))): "matches none",
        tampered(signed(ft.work, (ledger, 0), "t-body"), body=into_canary): "matches none",
        tampered(signed(ft.echo, (canary_ledger,), "t-task"), task=canary.name): "matches none",
        tampered(signed(canary, (canary_ledger,), "t-eta"), eta=time.time()): "matches none",
        tampered(signed(canary, (canary_ledger,), "t-retries"), retries=1): "matches none",
        tampered(
            signed(canary, (canary_ledger,), "t-expires"), expires=time.time() + 3600
        ): "matches none",
    }
    wait_until(lambda: time.time() > (msg.decode(soon.message)[0].expires or 0), what="expiry")
    replayed = _publish(fapp, soon)
    # and good messages signed with the new key and with the old one (a rotation)
    good = [_publish(fapp, _pack(ft.work, (ledger, i), (NEW, OLD)[i % 2 :])) for i in range(4)]
    with _keys(fapp, NEW, OLD), fapp.worker(concurrency=2, lease=2.0):
        # when a worker that accepts both keys runs them all
        records = wait_all_ready(fapp, [*bad, replayed, *good], timeout=60)
    # then only the good ones ran; every bad one is a FAILURE, the replay is REVOKED
    assert [r.state for r in records[-4:]] == [SUCCESS] * 4
    assert ft.executions(canary_ledger) == {}
    for record, problem in zip(records[: len(bad)], bad.values(), strict=True):
        assert (record.state, record.exc_type) == (FAILURE, "pluq.errors.SignatureError")
        assert problem in (record.exc_message or ""), record.exc_message
    assert records[len(bad)].state == REVOKED
    reasons = {d.id: d.reason for d in fapp.dead_letters()}
    assert set(reasons) == {*bad, replayed}
    assert all(reasons[i].startswith("bad signature: ") for i in bad)
    assert reasons[replayed].startswith("expired at")
    # and once the rotation is over, the old key is refused too
    old = _publish(fapp, _pack(canary, (canary_ledger,), (OLD,)))
    with _keys(fapp, NEW), fapp.worker(concurrency=1, lease=2.0):
        [record] = wait_all_ready(fapp, [old], timeout=60)
    assert record.exc_type == "pluq.errors.SignatureError"
    assert ft.executions(canary_ledger) == {}


def test_a_bad_message_handed_back_unstarted_is_not_signed_on_the_way(
    tmp_path: Path, workers: Workers
) -> None:
    # The hand-back is the supervisor's (a transport only stores the bytes): file:// alone.
    canary_ledger = str(tmp_path / "canary")
    url = f"file://{tmp_path}/queue?fsync=false"
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = url
    try:
        # given an unsigned message on the queue of workers that hold a secret
        unsigned = _publish(app, _pack(ft.canary, (canary_ledger,), ()))
        # when a worker reserves it and is stopped gracefully before it looked at it
        polite = workers.start(
            url, name="polite", secrets=["s3"], faults=[f"handback_after_reserve:{unsigned}"]
        )
        assert polite.wait(60) == 0
        # then it went back as it came: unsigned (the worker must not sign what it never
        # verified), and the next worker refuses it; the canary never runs
        [delivery] = app.broker.reserve(["default"], timeout=0, lease=60)
        assert msg.decode(delivery.message)[0].sig is None
        app.broker.release(delivery)
        with _keys(app, b"s3"):
            strict = workers.start(url, name="strict", secrets=["s3"], burst=True)
            assert strict.wait(60) == 0
            [record] = wait_all_ready(app, [unsigned], timeout=10)
        assert record.exc_type == "pluq.errors.SignatureError"
        assert ft.executions(canary_ledger) == {}
    finally:
        app.close()


def test_the_supervisor_never_unpickles(
    shared_app: pluq.App, shared_url: str, workers: Workers, tmp_path: Path, ledger: str
) -> None:
    # given every kind of message a supervisor handles: values that need unpickling in
    # both directions, a chain, a retry, a child that dies, a result that cannot be stored,
    # corrupt bytes, an unknown task, an unsigned message and a tampered one, an expired one
    secret = "audit-secret"
    with _keys(shared_app, secret.encode()):
        ids = [
            ft.echo.delay(datetime(2025, 1, 2)).id,
            ft.echo.delay({1, 2, 3}).id,
            pluq.chain(ft.echo.s(1), ft.echo.s())().id,
            ft.retry_once.delay().id,
            ft.poison.delay(ledger, "sigkill").id,
            ft.unpicklable_result.delay().id,
            ft.canary.apply_async((ledger,), expires=-1).id,
            shared_app.send_task("fault_tasks.no_such_task", (datetime.now(),)).id,
        ]
    ids.append(_publish(shared_app, _pack(ft.canary, (ledger,), ())))
    signed = _pack(ft.echo, (datetime.now(),), (secret.encode(),))
    ids.append(_publish(shared_app, signed, _forge(signed.message, retries=2)))
    shared_app.broker.publish("default", b"\x80\x04corrupt\n\x80\x04", id="corrupt")
    ids.append("corrupt")
    # when a worker whose supervisor reports every pickle.find_class event runs them
    # (the processes pool with fork: its children inherit the hook, the positive control)
    audit = tmp_path / "audit.jsonl"
    worker = workers.start(
        shared_url,
        name="audited",
        burst=True,
        secrets=[secret],
        audit=audit,
        start_method="fork",
    )
    assert worker.wait(120) == 0
    with _keys(shared_app, secret.encode()):
        wait_all_ready(shared_app, ids, timeout=10)
    # then nothing was unpickled in the supervisor, and things were in its children
    events = [json.loads(line) for line in audit.read_text().splitlines()]
    in_supervisor = [e for e in events if e["pid"] == worker.pid]
    in_children = [e for e in events if e["pid"] != worker.pid]
    assert in_supervisor == []
    assert {"datetime"} <= {e["name"] for e in in_children}


class _Evil:
    """Unpickling this creates a file: what a poisoned result store would do to a client."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def test_results_are_verified_by_the_client_before_anything_is_loaded(
    fapp: pluq.App, tmp_path: Path
) -> None:
    canary = tmp_path / "canary-file"
    evil = ft.app.serializer.dumps(_Evil(str(canary)))
    import base64

    planted = TaskRecord(
        id="planted",
        state=SUCCESS,
        result=base64.b64encode(evil).decode(),
        result_encoding="cloudpickle",
    )
    # given a record planted in the result store without the secret, and a signed one
    # changed afterwards
    fapp.backend.put(planted, expires=60)
    signed = msg.sign_record(planted.evolve(id="changed", result=None), (NEW,))
    fapp.backend.put(signed.evolve(result=planted.result), expires=60)
    with _keys(fapp, NEW):
        # then reading either raises SignatureError, and nothing was unpickled
        for task_id in ("planted", "changed"):
            with pytest.raises(SignatureError):
                fapp.AsyncResult(task_id).get(timeout=1)
            with pytest.raises(SignatureError):
                _ = fapp.AsyncResult(task_id).state
    assert not canary.exists()
    # and without a secret a FAILURE naming a callable that is no exception class is
    # rebuilt as a TaskError, never called
    named = TaskRecord(id="named", state=FAILURE, exc_type="os.system", exc_message="touch x")
    fapp.backend.put(named, expires=60)
    with pytest.raises(pluq.TaskError, match=r"os\.system: touch x"):
        fapp.AsyncResult("named").get(timeout=1)


@pytest.mark.parametrize("template", ["file://{tmp}/new/queue", "sqlite:///{tmp}/new/pluq.db"])
def test_queue_files_are_0600_and_folders_0700(tmp_path: Path, template: str) -> None:
    url = template.format(tmp=tmp_path)
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = url
    old_umask = os.umask(0o022)  # a permissive umask: pluq must not rely on it
    try:
        with app.worker(concurrency=1, lease=2.0):
            assert ft.work.delay(str(tmp_path / "ledger"), 1).get(timeout=60) == 1
            paths = list((tmp_path / "new").rglob("*"))
            modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in paths}
    finally:
        os.umask(old_umask)
        app.close()
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    wrong = {
        str(p): oct(m)
        for p, m in modes.items()
        if m != (0o700 if (tmp_path / p).is_dir() else 0o600)
    }
    assert wrong == {}
    assert len(modes) > 1


def test_no_secret_appears_in_any_log_line_or_message(
    start_redis_server: Callable[..., RedisServer],
    workers: Workers,
    ledger: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    password, secret = "pw-Zq81-redis", "key-Xv42-app"
    server = start_redis_server(aof=True, password=password)
    url = f"redis://:{password}@{server.address}/0?prefix=secret:"
    app = ft.app
    app.close()
    app.broker_url = app.backend_url = url
    texts: list[str] = []
    try:
        with _keys(app, secret.encode()):
            worker = workers.start(url, name="s", secrets=[secret], lease=2.0)
            results: list[pluq.AsyncResult[Any]] = [
                ft.work.delay(ledger, 1),
                ft.raise_base.delay("ValueError"),
                app.send_task("fault_tasks.no_such_task"),
            ]
            forged = _pack(ft.canary, (ledger,), (WRONG,))
            _publish(app, forged)
            wait_all_ready(app, [r.id for r in results] + [forged.id], timeout=60)
            # and the server goes away for a moment, so connection errors get logged
            seen = len(worker.log_text())
            server.kill()
            wait_until(lambda: " WARNING " in worker.log_text()[seen:], what="a logged outage")
            server.start()
            assert ft.work.delay(ledger, 2).get(timeout=60) == 2
            for result in results:
                record = result.record
                assert record is not None
                texts += [str(record.exc_message), str(record.traceback)]
            texts += [d.reason for d in app.dead_letters()]
            texts.append(repr(app))
            with pytest.raises(pluq.ConfigurationError) as bad_url:
                pluq.App(url + "&no_such_option=1").broker  # noqa: B018
            texts.append(str(bad_url.value))
        worker.terminate()
        assert worker.wait() == 0
    finally:
        app.close()
    texts += [worker.log_text(), worker.out.read_text(), caplog.text]
    everything = "\n".join(texts)
    assert "Connection refused" in everything  # the outage was logged...
    assert password not in everything  # ...without the password
    assert secret not in everything
