"""The worker: a supervisor that owns the connections, and a pool that executes.

    worker = app.Worker(concurrency=4, queues=["default"], pool="processes")
    worker.run()                # blocks; SIGTERM or Ctrl-C stops it gracefully
    worker.run(burst=True)      # returns once the queues are empty

    with app.worker(concurrency=2):   # in the background, for tests and notebooks
        add.delay(1, 2).get(timeout=5)

Shutdown: SIGTERM or a first Ctrl-C stops fetching, hands unstarted messages back, lets
running tasks finish, and exits 0. A second Ctrl-C kills the children at once and still
hands every unfinished message back (exit code 130).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any, Final

from pluq.errors import ConfigurationError

# The pool, the child and multiprocessing are imported when a worker runs (`_build`), not
# here: building a Worker only checks its options.
if TYPE_CHECKING:
    from pluq.app import App
    from pluq.worker.supervisor import Supervisor

__all__ = ["EXIT_COLD", "EXIT_OK", "POOLS", "Worker", "default_start_method"]

EXIT_OK: Final = 0
EXIT_COLD: Final = 130

POOLS: Final = ("processes", "threads", "solo")


def default_start_method() -> str:
    """The start method of a processes pool's children: see `pluq.worker.pool`."""
    from pluq.worker.pool import default_start_method as method

    return method()


def _app_ref(app: App) -> str | None:
    """ "module:attribute" under which a spawned child can import this app, if any."""
    module = sys.modules.get(app.main_module or "")
    if module is None:
        return None
    for attr, value in vars(module).items():
        if value is app:
            return f"{app.main_module}:{attr}"
    return None


class Worker:
    """Runs the app's tasks from the given queues.

    Args:
        app: the app whose tasks and transports to use.
        concurrency: tasks run at once (default: the number of CPUs; 1 for "solo").
        queues: the queues to consume, earlier ones first (default: the app's default).
        pool: "processes" (default: children, killable), "threads", or "solo" (in the
            worker's own thread, one at a time).
        prefetch: messages reserved beyond the free slots (default: concurrency, at most 8;
            while every task runs under 2 ms, each slot is handed about 20 ms of them at
            once, up to 64, and the worker reserves as many again per slot). Set it to hold
            exactly that many: a long task then never has another waiting behind it in its
            slot.
        lease: seconds a reserved message stays invisible to other workers; renewed while
            the worker holds it. A worker that dies loses its messages to others after this.
        heartbeat_interval: seconds between the worker's registrations.
        start_method: multiprocessing start method for "processes". By default, on Linux,
            the first children are forked while the process has a single thread, and the
            others start with forkserver (spawn elsewhere); "fork", "forkserver" and
            "spawn" fix the method.
        name: the worker's id in `pluq status` (default: host:pid:n).
    """

    def __init__(
        self,
        app: App,
        *,
        concurrency: int | None = None,
        queues: Iterable[str] | str | None = None,
        pool: str = "processes",
        prefetch: int | None = None,
        lease: float = 30.0,
        heartbeat_interval: float = 5.0,
        start_method: str | None = None,
        name: str | None = None,
        poll: float = 0.5,
    ) -> None:
        if pool not in POOLS:
            raise ConfigurationError(f"unknown pool {pool!r}; choose one of: {', '.join(POOLS)}")
        if concurrency is None:
            concurrency = 1 if pool == "solo" else (os.cpu_count() or 1)
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigurationError(
                f"concurrency must be a whole number >= 1, not {concurrency!r}"
            )
        if pool == "solo" and concurrency != 1:
            raise ConfigurationError("the solo pool runs one task at a time: concurrency=1")
        if isinstance(queues, str):
            queues = [q for q in queues.split(",") if q]
        queue_list = list(queues) if queues is not None else [app.default_queue]
        if not queue_list:
            raise ConfigurationError("give the worker at least one queue")
        if lease <= 0 or heartbeat_interval <= 0:
            raise ConfigurationError("lease and heartbeat_interval must be > 0 seconds")
        self.app = app
        self.concurrency = concurrency
        self.queues = queue_list
        self.pool = pool
        self.prefetch = min(concurrency, 8) if prefetch is None else prefetch
        self.adaptive_prefetch = prefetch is None
        self.lease = float(lease)
        self.heartbeat_interval = float(heartbeat_interval)
        self.start_method = start_method
        self.name = name
        self.poll = poll
        self.exit_code: int | None = None
        self._supervisor: Supervisor | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _build(self) -> Supervisor:
        # Imported here: the forkserver preloads pluq.worker.child, and so this package,
        # and neither it nor the children it forks need the supervisor's modules.
        from pluq.worker.child import ChildSpec
        from pluq.worker.pool import make_pool
        from pluq.worker.supervisor import Supervisor

        spec = ChildSpec(
            app=self.app,
            app_ref=_app_ref(self.app),
            task_modules={
                name: task.fn.__module__
                for name, task in self.app.tasks.items()
                if not task.by_value
            },
            keys=self.app.keys,
        )
        slots = make_pool(self.pool, self.concurrency, spec, start_method=self.start_method)
        return Supervisor(
            self.app,
            slots,
            queues=self.queues,
            concurrency=self.concurrency,
            prefetch=self.prefetch,
            adaptive=self.adaptive_prefetch,
            lease=self.lease,
            heartbeat_interval=self.heartbeat_interval,
            pool=self.pool,
            name=self.name,
            poll=self.poll,
        )

    @property
    def id(self) -> str | None:
        """The worker's registered name, once it runs."""
        return self._supervisor.name if self._supervisor is not None else None

    @property
    def processed(self) -> int:
        return self._supervisor.processed if self._supervisor is not None else 0

    def run(self, *, burst: bool = False) -> int:
        """Work until stopped (or, with `burst`, until the queues are empty); the exit code.

        In the main thread it handles SIGTERM and SIGINT itself (see the module doc).
        """
        supervisor = self._supervisor = self._build()
        in_main = threading.current_thread() is threading.main_thread()
        previous: dict[int, Any] = {}
        if in_main:
            interrupts = 0

            def on_sigint(signum: int, frame: FrameType | None) -> None:
                nonlocal interrupts
                interrupts += 1
                supervisor.request_stop(hard=interrupts > 1)

            def on_sigterm(signum: int, frame: FrameType | None) -> None:
                supervisor.request_stop()

            previous[signal.SIGINT] = signal.signal(signal.SIGINT, on_sigint)
            previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, on_sigterm)
        try:
            self.exit_code = supervisor.run(burst=burst)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return self.exit_code

    def start(self, *, timeout: float = 60.0) -> None:
        """Run in a background thread; returns once the worker is taking messages."""
        if self._thread is not None:
            raise RuntimeError("this worker is already running")
        supervisor = self._supervisor = self._build()
        ready = threading.Event()

        def target() -> None:
            try:
                self.exit_code = supervisor.run(ready=ready)
            except BaseException as exc:
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=target, name="pluq-worker", daemon=True)
        self._thread.start()
        ready.wait(timeout)
        if self._error is not None:
            self._thread.join()
            raise self._error

    def stop(self, *, hard: bool = False, timeout: float | None = None) -> None:
        """Stop a worker started with `start()`: gracefully, or at once with `hard`."""
        if self._supervisor is not None:
            self._supervisor.request_stop(hard=hard)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
