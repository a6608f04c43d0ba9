"""The App: configuration, the task registry, and the handles on the broker and backend."""

from __future__ import annotations

import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from pluq import message as msg
from pluq.backend import READY_STATES, REVOKED, ResultBackend, TaskRecord
from pluq.broker import Broker, Outgoing, QueueCounts, WorkerInfo
from pluq.errors import ConfigurationError, MessageError, NotRegistered
from pluq.registry import URL, check_url, open_backend, open_broker, transport_for
from pluq.result import AsyncResult
from pluq.serializers import get_serializer
from pluq.task import Task

if TYPE_CHECKING:
    from pluq import worker as _worker
    from pluq.scheduler import Schedule

__all__ = ["DEFAULT_BROKER", "App", "DeadTask", "Stats"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_BROKER = "sqlite:///pluq.db"
DEFAULT_QUEUE = "default"
ONE_DAY = 86_400.0
_PUBLISH_BATCH = 500
_PACKER_CACHE = 256

_apps: weakref.WeakSet[App] = weakref.WeakSet()


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadTask:
    """A dead-lettered message as the app sees it: the broker's entry plus its task name."""

    id: str
    queue: str
    task: str | None
    reason: str
    attempt: int
    dead_at: float
    message: bytes = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


@dataclass(frozen=True, slots=True)
class Stats:
    """Queue counts and live workers, as `App.stats()` returns them."""

    queues: dict[str, QueueCounts]
    workers: list[WorkerInfo]

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "queues": {
                name: {
                    "ready": c.ready,
                    "delayed": c.delayed,
                    "running": c.leased,
                    "dead": c.dead,
                }
                for name, c in self.queues.items()
            },
            "workers": [
                {
                    "id": w.id,
                    "hostname": w.hostname,
                    "pid": w.pid,
                    "queues": list(w.queues),
                    "concurrency": w.concurrency,
                    "processed": w.processed,
                    "heartbeat_at": w.heartbeat_at,
                }
                for w in self.workers
            ],
        }


def _keys(secret: str | bytes | Sequence[str | bytes] | None) -> tuple[bytes, ...]:
    if secret is None:
        env = os.environ.get("PLUQ_SECRET")
        secret = env if env else None
    if secret is None:
        return ()
    items = [secret] if isinstance(secret, str | bytes) else list(secret)
    keys = tuple(k.encode() if isinstance(k, str) else bytes(k) for k in items)
    if not keys or any(not k for k in keys):
        raise ConfigurationError("secret must be a non-empty string (or a list of them)")
    return keys


def _seconds(value: datetime | float | None, *, now: float, relative: bool) -> float | None:
    """An absolute time from a datetime, an absolute float, or seconds from now."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"expected seconds or a datetime, got {value!r}")
    return now + float(value) if relative else float(value)


def _times(
    now: float,
    countdown: float | None,
    eta: datetime | float | None,
    expires: datetime | float | None,
) -> tuple[float | None, float | None]:
    """The absolute not-before and expiry times of a message queued at `now`."""
    if countdown is not None and eta is not None:
        raise ConfigurationError("give countdown or eta, not both")
    if countdown is not None and (isinstance(countdown, bool) or countdown < 0):
        raise ConfigurationError(f"countdown must be seconds >= 0, not {countdown!r}")
    not_before = _seconds(countdown, now=now, relative=True)
    if not_before is None:
        not_before = _seconds(eta, now=now, relative=False)
    return not_before, _seconds(expires, now=now, relative=True)


class App:
    """A pluq application: where tasks are queued, where results are kept, and the tasks.

    Args:
        broker: the broker URL (default: $PLUQ_BROKER, else sqlite:///pluq.db).
        backend: the result backend URL (default: the broker's URL).
        secret: HMAC-sign every message and result with this secret (default:
            $PLUQ_SECRET). A list accepts several while rotating keys; the first signs.
        serializer: "cloudpickle" (default; any value, functions by value) or "json".
        result_expires: seconds a result is kept (default one day).
        default_queue: the queue of tasks that name none.
        allow_unsigned_pickle: accept pickled payloads on a network broker without a
            secret. Anyone who can write to that broker can then run code on your workers.
        clock: the time source handed to the transports (tests inject a fake one).
    """

    def __init__(
        self,
        broker: str | None = None,
        *,
        backend: str | None = None,
        secret: str | bytes | Sequence[str | bytes] | None = None,
        serializer: str = "cloudpickle",
        result_expires: float = ONE_DAY,
        default_queue: str = DEFAULT_QUEUE,
        allow_unsigned_pickle: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.broker_url = broker or os.environ.get("PLUQ_BROKER") or DEFAULT_BROKER
        self.backend_url = backend or self.broker_url
        for url in (self.broker_url, self.backend_url):
            check_url(url)  # a bad URL fails here; a built-in transport loads on first use
        self.serializer = get_serializer(serializer)
        self.keys = _keys(secret)
        if result_expires <= 0:
            raise ConfigurationError(f"result_expires must be > 0 seconds, not {result_expires}")
        self.result_expires = float(result_expires)
        self.default_queue = default_queue
        self.clock = clock
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._lock = threading.Lock()
        self._broker: Broker | None = None
        self._backend: ResultBackend | None = None
        self._packers: dict[tuple[Any, ...], msg.Packer] = {}
        self._check_pickle_safety(allow_unsigned_pickle)
        self.allow_unsigned_pickle = allow_unsigned_pickle
        self.main_module = sys._getframe(1).f_globals.get("__name__")
        _apps.add(self)

    def _check_pickle_safety(self, allowed: bool) -> None:
        if self.serializer.name == "json" or self.keys or allowed:
            return
        for url in (self.broker_url, self.backend_url):
            if transport_for(URL.parse(url)).capabilities.shared_between_hosts:
                raise ConfigurationError(
                    f"{URL.parse(url).redacted} is a network transport, and unsigned pickled "
                    f"messages from it would let anyone who can write to it run code on your "
                    f'workers. Give the app a secret (App(..., secret="...") or PLUQ_SECRET), '
                    f'use serializer="json", or accept the risk with allow_unsigned_pickle=True'
                )

    def __repr__(self) -> str:
        return f"<pluq.App broker={URL.parse(self.broker_url).redacted}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # A task defined in a notebook travels by value, and its globals may hold the app:
        # it travels as its configuration (never its secret, which the worker has anyway).
        return (_rebuild_app, (self.broker_url, self.backend_url, self.serializer.name))

    # -- connections (opened on first use: @app.task never connects) ---------------------

    @property
    def broker(self) -> Broker:
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    self._broker = open_broker(self.broker_url, clock=self.clock)
        return self._broker

    @property
    def backend(self) -> ResultBackend:
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = open_backend(self.backend_url, clock=self.clock)
        return self._backend

    def close(self) -> None:
        """Close the broker and backend connections (they reopen on next use)."""
        with self._lock:
            broker, backend = self._broker, self._backend
            self._broker = self._backend = None
        if broker is not None:
            broker.close()
        if backend is not None:
            backend.close()

    # -- tasks ---------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[False] = False,
        name: str | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Iterable[type[BaseException]] = (),
        queue: str | None = None,
        time_limit: float | None = None,
        expires: float | None = None,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = None,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Iterable[type[BaseException]] = (),
        queue: str | None = None,
        time_limit: float | None = None,
        expires: float | None = None,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Register a function as a task: `@app.task` or `@app.task(max_retries=5, ...)`.

        Options: name, bind, max_retries (default 3; None: no limit), default_retry_delay
        (seconds, default 180), retry_backoff (True or a factor in seconds),
        retry_backoff_max (default 600), retry_jitter (default True), autoretry_for
        (exception classes that retry by themselves), queue, time_limit (seconds; the
        child running it is killed past it), expires (seconds after queueing).
        """
        known = {
            "name", "bind", "max_retries", "default_retry_delay", "retry_backoff",
            "retry_backoff_max", "retry_jitter", "autoretry_for", "queue", "time_limit",
            "expires",
        }  # fmt: skip
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigurationError(
                f"unknown task option(s): {', '.join(unknown)}; "
                f"the options are: {', '.join(sorted(known))}"
            )

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            task: Task[Any, Any] = Task(self, function, **options)
            existing = self.tasks.get(task.name)
            if existing is not None and existing.fn is not function:
                existing_where = getattr(existing.fn, "__code__", None)
                new_where = getattr(function, "__code__", None)
                same_source = (
                    existing_where is not None
                    and new_where is not None
                    and existing_where.co_filename == new_where.co_filename
                    and existing_where.co_firstlineno == new_where.co_firstlineno
                )
                if not same_source:  # re-running a notebook cell re-registers: fine
                    raise ConfigurationError(
                        f"two different functions are registered as task {task.name!r}; "
                        f"give one of them another name with @app.task(name=...)"
                    )
            self.tasks[task.name] = task
            return task

        if len(args) > 1 or (args and not callable(args[0])):
            raise ConfigurationError(
                "use @app.task or @app.task(option=value, ...): options are keywords"
            )
        if args:
            return register(args[0])
        return register

    def periodic(
        self,
        *,
        every: timedelta | float | None = None,
        cron: str | None = None,
        tz: str | tzinfo | None = None,
        name: str | None = None,
        queue: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        **task_options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Run the decorated function as a task on a schedule: `every=` or `cron=`.

        The schedules run wherever a scheduler runs (`pluq beat`, `pluq worker --beat`);
        several schedulers at once queue each tick once. See `pluq.scheduler`.
        """
        from pluq.scheduler import periodic

        return periodic(
            self, every=every, cron=cron, tz=tz, name=name, queue=queue,
            args=args, kwargs=kwargs, **task_options,
        )  # fmt: skip

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(
                f"no task named {name!r} is registered with this app; known tasks: "
                f"{', '.join(sorted(self.tasks)) or 'none'}. Import the module that defines "
                f"it (pluq worker -A module:app)"
            ) from None

    # -- producing -----------------------------------------------------------------------

    def _build(
        self,
        task: Task[Any, Any] | None,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: datetime | float | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        max_retries: int | None = None,
        meta: Mapping[str, Any] | None = None,
        link: Sequence[Mapping[str, Any]] = (),
    ) -> Outgoing:
        now = self.clock()
        if not isinstance(kwargs, dict) or (kwargs and not all(isinstance(k, str) for k in kwargs)):
            raise ConfigurationError("kwargs must be a dict with string keys")
        if countdown is None and eta is None and expires is None and not link and not meta:
            # The common call: its header differs from the last one's only in id and time.
            return self._packer(task, name, queue, max_retries).pack(args, kwargs, now, task_id)
        not_before, expires_at = _times(now, countdown, eta, expires)
        queue, max_retries, fn, meta = self._task_options(task, name, queue, max_retries, meta)
        return msg.pack(
            task=name,
            args=args,
            kwargs=kwargs,
            queue=queue,
            serializer=self.serializer,
            keys=self.keys,
            now=now,
            task_id=task_id,
            not_before=not_before,
            expires=expires_at,
            max_retries=max_retries,
            fn=fn,
            link=link,
            meta=meta,
        )

    def _task_options(
        self,
        task: Task[Any, Any] | None,
        name: str,
        queue: str | None,
        max_retries: int | None,
        meta: Mapping[str, Any] | None,
    ) -> tuple[str, int | None, bytes | None, Mapping[str, Any] | None]:
        """The queue, max_retries, pickled function (by value) and meta of a message, from
        the call's options and else the task's."""
        fn = None
        if task is not None:
            if task.by_value:
                if self.serializer.name != "cloudpickle":
                    raise ConfigurationError(
                        f"task {name!r} is defined in __main__ or in a closure, so it must "
                        f"travel by value, which only the cloudpickle serializer can do; move "
                        f"it to an importable module, or use "
                        f'App(..., serializer="cloudpickle")'
                    )
                fn = _task_bytes(task)
            if max_retries is None:
                max_retries = task.max_retries
            queue = queue or task.queue
            if task.time_limit is not None:
                # read by workers that cannot import the task
                meta = {**(meta or {}), "time_limit": task.time_limit}
        elif max_retries is None:
            max_retries = 3
        return queue or self.default_queue, max_retries, fn, meta

    def _packer(
        self, task: Task[Any, Any] | None, name: str, queue: str | None, max_retries: int | None
    ) -> msg.Packer:
        """The Packer of messages without eta, expiry, links or extra meta (cached)."""
        queue, max_retries, fn, meta = self._task_options(task, name, queue, max_retries, None)
        time_limit = meta["time_limit"] if meta else None
        # Every input of the packer is in the key, so a task or app changed since (tests swap
        # `app.keys`) still gets the right messages.
        key = (name, queue, max_retries, fn, time_limit, self.keys, self.serializer)
        packer = self._packers.get(key)
        if packer is None:
            if len(self._packers) >= _PACKER_CACHE:
                self._packers.clear()  # rare: that many task/queue combinations in use
            packer = self._packers[key] = msg.Packer(
                task=name,
                queue=queue,
                serializer=self.serializer,
                keys=self.keys,
                max_retries=max_retries,
                fn=fn,
                meta=meta,
            )
        return packer

    def _send(
        self, task: Task[Any, Any] | None, name: str, args: tuple[Any, ...],
        kwargs: dict[str, Any], **options: Any,
    ) -> AsyncResult[Any]:  # fmt: skip
        out = self._build(task, name, args, kwargs, **options)
        self.broker.publish(out.queue, out.message, id=out.id, not_before=out.not_before)
        return AsyncResult(out.id, app=self)

    def send_task(
        self,
        name: str,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Queue a task by name (it need not be registered here, only on the workers)."""
        task = self.tasks.get(name)
        return self._send(task, name, tuple(args or ()), dict(kwargs or {}), **options)

    def enqueue_many(
        self, task: Task[Any, R], argument_tuples: Iterable[tuple[Any, ...]], **options: Any
    ) -> list[AsyncResult[R]]:
        """Queue one task per argument tuple, publishing in batches (one round trip each).

        Each message is stored before this returns; nothing waits in memory.
        """
        results: list[AsyncResult[R]] = []
        batch: list[Outgoing] = []
        packer = None
        if options.keys() <= {"queue", "max_retries"}:  # no time, id, link or meta options
            packer = self._packer(task, task.name, options.get("queue"), options.get("max_retries"))
        clock = self.clock
        for args in argument_tuples:
            if packer is not None:
                batch.append(packer.pack(args, {}, clock()))
            else:
                batch.append(self._build(task, task.name, tuple(args), {}, **options))
            if len(batch) >= _PUBLISH_BATCH:
                self._publish_batch(batch, results)
                batch = []
        if batch:
            self._publish_batch(batch, results)
        return results

    def _publish_batch(self, batch: list[Outgoing], results: list[AsyncResult[Any]]) -> None:
        self.broker.publish_many(batch)
        results.extend([AsyncResult(out.id, app=self) for out in batch])

    # -- reading -------------------------------------------------------------------------

    def AsyncResult(self, task_id: str) -> AsyncResult[Any]:
        """The result handle of a task by its id."""
        return AsyncResult(task_id, app=self)

    def _verify_record(self, record: TaskRecord) -> None:
        msg.verify_record(record, self.keys)

    def _revoke(self, task_id: str, *, terminate: bool = False) -> None:
        cancelled = self.broker.cancel(task_id)
        record = self.backend.get(task_id)
        if record is not None and record.state in READY_STATES:
            return
        now = self.clock()
        reason = "revoked before it started" if cancelled else "revoked"
        revoked = (record or TaskRecord(id=task_id, created_at=now)).evolve(
            state=REVOKED,
            exc_type="pluq.errors.TaskRevokedError",
            exc_message=f"task {task_id} was {reason}",
            finished_at=now,
            meta={**(record.meta if record else {}), "terminate": terminate},
        )
        self.backend.put(msg.sign_record(revoked, self.keys), expires=self.result_expires)

    # -- administration ------------------------------------------------------------------

    def dead_letters(self, queue: str | None = None) -> list[DeadTask]:
        """The dead-lettered messages (of one queue or all), with their reasons."""
        out = []
        for dead in self.broker.dead_letters(queue):
            try:
                task_name: str | None = msg.decode(dead.message)[0].task
            except MessageError:
                task_name = None
            out.append(
                DeadTask(
                    id=dead.id,
                    queue=dead.queue,
                    task=task_name,
                    reason=dead.reason,
                    attempt=dead.attempt,
                    dead_at=dead.dead_at,
                    message=dead.message,
                )
            )
        return out

    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        """Put dead messages (all, or the ids given) back on their queues; returns how many.

        Each one starts again with a fresh retry budget, and its result record is cleared
        back to PENDING so callers can wait for the new outcome.
        """
        dead = self.broker.dead_letters()
        chosen = [d for d in dead if ids is None or d.id in set(ids)]
        for d in chosen:
            self.backend.forget(d.id)
        return self.broker.retry_dead([d.id for d in chosen])

    def purge(self, queue: str | None = None) -> int:
        """Remove every waiting (ready or delayed) message of a queue; returns how many."""
        return self.broker.purge(queue or self.default_queue)

    def stats(self) -> Stats:
        """Per queue: ready, delayed, running, dead; and the workers alive now."""
        return Stats(queues=self.broker.counts(), workers=self.broker.workers())

    # -- workers -------------------------------------------------------------------------

    def Worker(self, **options: Any) -> _worker.Worker:
        """A worker for this app; `.run()` blocks, `.run(burst=True)` returns when idle."""
        from pluq.worker import Worker

        return Worker(self, **options)

    @contextmanager
    def worker(self, **options: Any) -> Iterator[_worker.Worker]:
        """Run a real worker in the background for the duration of a `with` block.

        Takes the same options as `Worker`. On exit it stops gracefully: running tasks
        finish, unstarted ones go back to the queue.
        """
        from pluq.worker import Worker

        worker = Worker(self, **options)
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()


_task_cache: weakref.WeakKeyDictionary[Task[Any, Any], bytes] = weakref.WeakKeyDictionary()


def _task_bytes(task: Task[Any, Any]) -> bytes:
    data = _task_cache.get(task)
    if data is None:
        import cloudpickle

        data = cloudpickle.dumps(task)
        _task_cache[task] = data
    return data


def _rebuild_app(broker: str, backend: str, serializer: str) -> App:
    for app in list(_apps):
        if app.broker_url == broker and app.backend_url == backend:
            return app
    return App(broker, backend=backend, serializer=serializer, allow_unsigned_pickle=True)
