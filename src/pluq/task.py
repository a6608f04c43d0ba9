"""Tasks: a function registered with an App, callable locally or through the queue."""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from pluq.errors import ConfigurationError, MaxRetriesExceededError, Retry
from pluq.retry import RetryPolicy

if TYPE_CHECKING:
    from pluq.app import App
    from pluq.canvas import Signature
    from pluq.result import AsyncResult

__all__ = ["Request", "Task", "current_request"]

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What a running task knows about its own execution (`self.request` in a bound task)."""

    id: str | None = None
    task: str | None = None
    queue: str | None = None
    retries: int = 0
    max_retries: int | None = None
    attempt: int = 1
    """The broker's delivery count for this message (1 on the first delivery)."""
    eta: float | None = None
    expires: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    hostname: str | None = None
    called_directly: bool = True
    """True for a plain local call `task(...)`, False inside a worker."""


_request: contextvars.ContextVar[Request | None] = contextvars.ContextVar(
    "pluq_request", default=None
)


def current_request() -> Request | None:
    """The Request of the task running in this thread, or None outside a task."""
    return _request.get()


class Task(Generic[P, R]):
    """A function registered with an App: call it locally, or `.delay()` it to a worker.

    Create tasks with the `@app.task` decorator, not directly.
    """

    def __init__(
        self,
        app: App,
        fn: Callable[..., R],
        *,
        name: str | None = None,
        bind: bool = False,
        max_retries: int | None = 3,
        default_retry_delay: float = 180.0,
        retry_backoff: bool | float = False,
        retry_backoff_max: float = 600.0,
        retry_jitter: bool = True,
        autoretry_for: Iterable[type[BaseException]] = (),
        queue: str | None = None,
        time_limit: float | None = None,
        expires: float | None = None,
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"@app.task decorates a function, not {fn!r}")
        self.app = app
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.bind = bind
        self.policy = RetryPolicy(
            max_retries=max_retries,
            default_retry_delay=default_retry_delay,
            retry_backoff=retry_backoff,
            retry_backoff_max=retry_backoff_max,
            retry_jitter=retry_jitter,
        )
        self.autoretry_for: tuple[type[BaseException], ...] = tuple(autoretry_for)
        for exc_type in self.autoretry_for:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise ConfigurationError(f"autoretry_for takes exception classes, got {exc_type!r}")
        if time_limit is not None and time_limit <= 0:
            raise ConfigurationError(f"time_limit must be > 0 seconds, not {time_limit}")
        self.queue = queue
        self.time_limit = time_limit
        self.expires = expires
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", self.name)
        self.__qualname__ = getattr(fn, "__qualname__", self.name)
        self.__module__ = getattr(fn, "__module__", __name__)
        self.__wrapped__ = fn
        self._by_value: bool | None = None

    # -- options, read by the worker -----------------------------------------------------

    @property
    def max_retries(self) -> int | None:
        return self.policy.max_retries

    @property
    def default_retry_delay(self) -> float:
        return self.policy.default_retry_delay

    @property
    def by_value(self) -> bool:
        """Whether the function must travel inside each message (a worker cannot import it).

        True for functions defined in `__main__` (a notebook, a script) and for functions
        that are not reachable by their module and qualified name (closures, lambdas,
        tasks built in a loop). Decided on first use, when the defining module has run.
        """
        if self._by_value is None:
            self._by_value = not self._importable()
        return self._by_value

    def _importable(self) -> bool:
        module_name = getattr(self.fn, "__module__", None)
        if not module_name or module_name == "__main__":
            return False
        module = sys.modules.get(module_name)
        target: Any = module
        for part in self.__qualname__.split("."):
            if target is None or part == "<locals>":
                return False
            target = getattr(target, part, None)
        return target is self

    # -- calling -------------------------------------------------------------------------

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now, in this process: no queue, no worker."""
        token = None
        if _request.get() is None:
            token = _request.set(Request(task=self.name, args=args, kwargs=kwargs))
        try:
            return self.run(*args, **kwargs)
        finally:
            if token is not None:
                _request.reset(token)

    def run(self, *args: Any, **kwargs: Any) -> R:
        """Call the function (with the task as `self` for a bound task)."""
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task with these arguments; returns its AsyncResult at once."""
        # apply_async(args, kwargs) without its defaults to fill in: this is the hot path.
        return self.app._send(self, self.name, args, kwargs, expires=self.expires)

    def apply_async(
        self,
        args: Iterable[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        expires: datetime | float | None = None,
        queue: str | None = None,
        task_id: str | None = None,
        max_retries: int | None = None,
    ) -> AsyncResult[R]:
        """Queue the task with full control over when, where and under which id.

        Args:
            args: positional arguments.
            kwargs: keyword arguments.
            countdown: seconds from now before the task may start.
            eta: a datetime (or an absolute time.time() value) before which it may not start.
            expires: seconds from now, or a datetime, after which it must not start any more
                (it is then recorded as REVOKED).
            queue: the queue to publish to (default: the task's, else the app's).
            task_id: the id to use; publishing an id already queued queues nothing.
            max_retries: overrides the task's `max_retries` for this call.
        """
        return self.app._send(
            self,
            self.name,
            tuple(args or ()),
            dict(kwargs or {}),
            countdown=countdown,
            eta=eta,
            expires=expires if expires is not None else self.expires,
            queue=queue or self.queue,
            task_id=task_id,
            max_retries=max_retries,
        )

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature: this task with (some of) its arguments, to call or chain later."""
        from pluq.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a chain it ignores the previous task's result."""
        from pluq.canvas import Signature

        return Signature(self.name, args, kwargs, app=self.app, immutable=True)

    def map(self, iterable: Iterable[Any]) -> list[AsyncResult[R]]:
        """Queue one task per item (each item is the single argument), in batches."""
        return self.app.enqueue_many(self, ((item,) for item in iterable))

    def starmap(self, iterable: Iterable[Iterable[Any]]) -> list[AsyncResult[R]]:
        """Queue one task per item (each item is the argument tuple), in batches."""
        return self.app.enqueue_many(self, (tuple(item) for item in iterable))

    # -- inside a running task -----------------------------------------------------------

    @property
    def request(self) -> Request:
        """The current execution's Request (id, retries, ...); empty outside a worker."""
        return _request.get() or Request(task=self.name)

    def retry(
        self,
        exc: BaseException | None = None,
        *,
        countdown: float | None = None,
        eta: datetime | float | None = None,
        max_retries: int | None = None,
    ) -> Retry:
        """Ask the worker to run this task again later; use as `raise self.retry(...)`.

        When the task has used up its retries, re-raises `exc` (or raises
        MaxRetriesExceededError without one) so the task fails. Always raises; the return
        annotation lets `raise self.retry()` read naturally.
        """
        request = self.request
        if not self.policy.may_retry(request.retries, max_retries):
            if exc is not None:
                raise exc
            limit = self.max_retries if max_retries is None else max_retries
            raise MaxRetriesExceededError(
                f"task {self.name}[{request.id}] was retried {request.retries} times, "
                f"its limit is {limit}; raise max_retries= on the task to allow more"
            )
        eta_value = eta.timestamp() if isinstance(eta, datetime) else eta
        raise Retry(exc=exc, countdown=countdown, eta=eta_value, max_retries=max_retries)

    def __repr__(self) -> str:
        return f"<pluq.Task {self.name}>"
