"""The child side of the worker: load a task's arguments, run it, report the outcome.

Children only execute. They never touch the broker or the backend: they get a job (a JSON
line and the body bytes) over a pipe, and send back one JSON outcome. The supervisor reads
that JSON and never unpickles anything.

`child_main` is the process entry point: a top-level function of picklable arguments, so
it works with the fork, forkserver and spawn start methods alike.
"""

from __future__ import annotations

import importlib
import os
import signal
import struct
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pluq._frozen import positional
from pluq._json import compact_encoder, loads
from pluq._outcome import decode_value, encode_exception, encode_value, exception_name
from pluq.canvas import build_next
from pluq.errors import MessageError, NotRegistered, Retry, SerializationError
from pluq.serializers import get_serializer
from pluq.task import Request, _request

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from pluq.app import App
    from pluq.task import Task

__all__ = [
    "ChildSpec",
    "FrameReader",
    "Resolver",
    "child_main",
    "frame",
    "join_job",
    "run_job",
    "split_job",
    "write_all",
]

_FN_CACHE_SIZE = 64
STOP = b""
"""Sent to a child to end its loop after its current job."""

_SHORT_FRAME: Final = struct.Struct("!i")  # multiprocessing.connection's framing
_LONG_FRAME: Final = struct.Struct("!Q")  # after a -1, for a message of 2 GiB or more
_READ_SIZE: Final = 1 << 16
_json: Final = compact_encoder()
_make_request: Final = positional(Request)


def frame(data: bytes) -> bytes:
    """`data` framed as `Connection.send_bytes` frames it, so either end may use either."""
    if len(data) > 0x7FFFFFFF:
        return _SHORT_FRAME.pack(-1) + _LONG_FRAME.pack(len(data)) + data
    return _SHORT_FRAME.pack(len(data)) + data


class FrameReader:
    """Whole framed messages from a pipe, as many as one read brings: the supervisor hands
    a slot its short jobs in one write, and a slot's outcomes pile up while the supervisor
    is busy, so either end takes in all that arrived at once, not two reads a message."""

    def __init__(self) -> None:
        self._buf = bytearray()  # bytes read, not a whole message yet

    def clear(self) -> None:
        self._buf.clear()

    def read(self, fd: int) -> list[bytes]:
        """The whole messages that arrived, after one read (it blocks on a blocking fd
        until something arrives; the list is empty while a message is still partial).
        EOFError: the other end closed."""
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            raise EOFError("the pipe closed")
        buf = self._buf
        buf += chunk
        messages: list[bytes] = []
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _SHORT_FRAME.unpack_from(buf, pos)
            head = 4
            if size == -1:
                if len(buf) - pos < 12:
                    break
                (size,) = _LONG_FRAME.unpack_from(buf, pos + 4)
                head = 12
            if len(buf) - pos - head < size:
                break
            messages.append(bytes(buf[pos + head : pos + head + size]))
            pos += head + size
        del buf[:pos]
        return messages


@dataclass(slots=True)
class ChildSpec:
    """What a child needs to find tasks: the app (fork, threads) or how to import it."""

    app: App | None = None
    app_ref: str | None = None
    """"module:attribute" of the app, for children that do not inherit memory (spawn)."""
    task_modules: dict[str, str] = field(default_factory=dict)
    """Task name -> the module that registers it, imported on first use."""
    keys: tuple[bytes, ...] = ()
    """The app's secrets: a child signs the next step of a chain it finishes."""

    def __getstate__(self) -> dict[str, Any]:
        # The app object stays behind when a spawned child is started: it re-imports it.
        return {
            "app": None,
            "app_ref": self.app_ref,
            "task_modules": self.task_modules,
            "keys": self.keys,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.app = state["app"]
        self.app_ref = state["app_ref"]
        self.task_modules = state["task_modules"]
        self.keys = state["keys"]


class Resolver:
    """Finds the Task a job names: by value from the body, else in the app's registry."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.keys = spec.keys
        self._by_value: OrderedDict[bytes, Task[Any, Any]] = OrderedDict()

    def _app(self) -> App | None:
        if self.spec.app is None and self.spec.app_ref:
            module_name, _, attr = self.spec.app_ref.partition(":")
            try:
                self.spec.app = getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError):
                self.spec.app_ref = None  # e.g. an app in a notebook: tasks come by value
        return self.spec.app

    def __call__(self, name: str, fn: bytes | None) -> Task[Any, Any]:
        if fn is not None:
            task = self._by_value.get(fn)
            if task is None:
                import pickle

                task = pickle.loads(fn)
                self._by_value[fn] = task
                if len(self._by_value) > _FN_CACHE_SIZE:
                    self._by_value.popitem(last=False)
            return task
        app = self._app()
        if app is not None and name in app.tasks:
            return app.tasks[name]
        module = self.spec.task_modules.get(name)
        if module is not None:
            importlib.import_module(module)
            if app is not None and name in app.tasks:
                return app.tasks[name]
        raise NotRegistered(
            f"no task named {name!r} is registered in the worker; start the worker with "
            f"the app that defines it (pluq worker -A module:app)"
        )


def split_job(data: bytes) -> tuple[dict[str, Any], bytes]:
    end = data.index(b"\n")
    job: dict[str, Any] = loads(data[:end].decode())
    return job, data[end + 1 :]


def join_job(job: dict[str, Any], body: bytes) -> bytes:
    return _json(job).encode() + b"\n" + body


def _failure(exc: BaseException, started: float, serializer_name: str) -> dict[str, Any]:
    try:
        serializer = get_serializer(serializer_name)
        result, encoding = encode_exception(exc, serializer)
    except Exception:
        result, encoding = None, None
    return {
        "status": "failure",
        "exc_type": exception_name(exc),
        "exc_message": _message(exc),
        "traceback": "".join(traceback.format_exception(exc)),
        "result": result,
        "result_encoding": encoding,
        "started_at": started,
        "finished_at": time.time(),
    }


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} with an unprintable message>"


def run_job(job: dict[str, Any], body: bytes, resolve: Resolver) -> dict[str, Any]:
    """Run one job and describe its outcome as a JSON-ready dict.

    status is "success" (with the encoded result), "retry" (with `not_before` and the
    exception that caused it) or "failure" (with the exception, final).
    """
    started = time.time()
    serializer_name = job["serializer"]
    try:
        serializer = get_serializer(serializer_name)
        payload = serializer.loads(body)
        task = resolve(job["task"], payload.get("fn"))
        args = tuple(payload["args"])
        kwargs = dict(payload["kwargs"])
        if "chord_results" in job:  # a chord's callback: the members' results come first
            gathered = [decode_value(r, enc) for r, enc in job["chord_results"]]
            args = (gathered, *args)
    except NotRegistered as exc:
        return _failure(exc, started, serializer_name)
    except Exception as exc:
        problem = MessageError(
            f"cannot load the task's arguments: {exception_name(exc)}: {_message(exc)}"
        )
        return _failure(problem, started, serializer_name)

    retries = int(job.get("retries", 0))
    request = _make_request(
        job["id"],
        job["task"],
        job.get("queue"),
        retries,
        job.get("max_retries"),
        int(job.get("attempt", 1)),
        job.get("eta"),
        job.get("expires"),
        args,
        kwargs,
        job.get("hostname"),
        False,  # called_directly
    )
    token = _request.set(request)
    try:
        value = task.run(*args, **kwargs)
    except Retry as signal_:
        cause: BaseException = signal_.exc if signal_.exc is not None else signal_
        if signal_.eta is not None:
            not_before = signal_.eta
        else:
            not_before = time.time() + task.policy.delay(retries, countdown=signal_.countdown)
        outcome = _failure(cause, started, serializer_name)
        outcome.update(status="retry", not_before=not_before, max_retries=signal_.max_retries)
        return outcome
    except BaseException as exc:  # SystemExit and KeyboardInterrupt too: the task failed
        if isinstance(exc, task.autoretry_for) and task.policy.may_retry(
            retries, job.get("max_retries")
        ):
            outcome = _failure(exc, started, serializer_name)
            outcome.update(status="retry", not_before=time.time() + task.policy.delay(retries))
            return outcome
        return _failure(exc, started, serializer_name)
    finally:
        _request.reset(token)
    try:
        result, encoding, result_repr = encode_value(value, serializer)
    except Exception as exc:
        unstorable = SerializationError(
            f"the task's return value cannot be stored: {_message(exc)}"
        )
        return _failure(unstorable, started, serializer_name)
    outcome = {
        "status": "success",
        "result": result,
        "result_encoding": encoding,
        "result_repr": result_repr,
        "started_at": started,
        "finished_at": time.time(),
    }
    link = payload.get("link")
    if link:
        try:
            outcome["publish"] = [
                build_next(link[0], link[1:], value, serializer=serializer, keys=resolve.keys)
            ]
        except Exception as exc:
            unqueued = SerializationError(f"cannot queue the chain's next step: {_message(exc)}")
            return _failure(unqueued, started, serializer_name)
    return outcome


def serve(conn: Connection, resolve: Resolver) -> None:
    """Run jobs from `conn` until it closes or says STOP; one JSON outcome back per job,
    written as soon as the job ends."""
    fd = conn.fileno()
    reader = FrameReader()
    while True:
        try:
            batch = reader.read(fd)
        except (EOFError, OSError):
            return
        for data in batch:
            if data == STOP:
                return
            job, body = split_job(data)
            outcome = run_job(job, body, resolve)
            outcome["token"] = job["token"]
            try:
                write_all(fd, frame(_json(outcome).encode()))
            except OSError:  # BrokenPipeError: the supervisor is gone
                return


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a blocking pipe (a write may take less than all of it).
    OSError: the other end is gone."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ignore_signal(signum: int, frame: object) -> None:
    """Ignore a signal meant for the supervisor."""


def child_main(conn: Connection, spec: ChildSpec, inherited: tuple[int, ...] = ()) -> None:
    """Entry point of a child process; `inherited` are fds of the parent's to close."""
    for fd in inherited:
        try:
            os.close(fd)
        except OSError:
            pass
    # Ctrl-C and a group SIGTERM (systemd) reach every process of the group; the
    # supervisor decides what they mean, and stops children itself (STOP, or SIGKILL).
    # A handler rather than SIG_IGN, so that programs a task execs get the default back.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _ignore_signal)
    os.environ.setdefault("PLUQ_CHILD", "1")
    serve(conn, Resolver(spec))
