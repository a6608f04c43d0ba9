"""Execution slots: child processes, threads, or the supervisor's own thread ("solo").

Every pool gives the supervisor the same thing: a list of slots, each taking jobs in order
(`send`) and reporting one outcome per job. A slot's `jobs` are the supervisor's records of
what it handed over, oldest first: the first one runs, the others wait their turn (the
supervisor queues more than one only for tasks known to be short). Process slots report
over a pipe, which the supervisor polls; thread slots call `report` directly and the
supervisor's wake-up pipe does the rest.

On a pipe, the supervisor writes and reads multiprocessing's own framing (a 4-byte length,
then the bytes) itself: the jobs of one pass go in one write (`send` queues, `flush`
writes), and one read takes every outcome that has arrived (`receive`). The child keeps
`Connection.recv_bytes`/`send_bytes`, one message at a time.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import types
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pluq.errors import ConfigurationError
from pluq.worker import POOLS
from pluq.worker.child import (
    STOP,
    ChildSpec,
    FrameReader,
    Resolver,
    child_main,
    frame,
    join_job,
    run_job,
    write_all,
)

# multiprocessing is imported where a processes pool needs it, not here: a threads or solo
# pool never does, and it is a third of a worker's start-up imports.
if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["POOLS", "Slot", "default_start_method", "make_pool"]


def default_start_method() -> str:
    """forkserver where the platform has it (Linux; Python 3.14's default there), else spawn.

    Plain fork copies a multi-threaded process (the supervisor has a fetch thread, a test
    or a notebook has its own), which can deadlock a child on a lock held at fork time.
    """
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    if sys.platform.startswith("linux") and "forkserver" in methods:
        return "forkserver"
    return "spawn"


def _fork_while_alone() -> Any:
    """The fork context, for a default pool's first children on Linux, or None.

    While the supervisor's process has a single thread (a `pluq worker` starting up),
    plain fork is safe and the fastest start: the children begin with the app imported,
    with no server process in between. Children started later (a replacement, or a
    worker inside a threaded program) use the default method.
    """
    import multiprocessing

    if sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


_main_lock = threading.Lock()


@contextmanager
def _main_hidden(method: str) -> Iterator[None]:
    """Start a spawn or forkserver child without re-running the user's `__main__` in it.

    multiprocessing re-imports the main script in such children, which runs a script's
    unguarded top level (and its `app.Worker().run()`) again. pluq does not need it there:
    tasks and classes defined in `__main__` travel by value.
    """
    if method == "fork":
        yield
        return
    with _main_lock:
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            if main is not None:
                sys.modules["__main__"] = main


class Slot:
    """One place tasks run, one at a time. `conn` is the supervisor's end of a job pipe."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conn: Connection | None = None
        self.jobs: deque[Any] = deque()  # the supervisor's records, the running one first
        self._outbox: list[bytes] = []  # framed jobs not written yet
        self._reader = FrameReader()

    @property
    def busy(self) -> Any:
        """The job running now (the first handed over and not yet reported), or None."""
        return self.jobs[0] if self.jobs else None

    def send(self, job: dict[str, Any], body: bytes) -> None:
        """Hand over a job; it runs after the ones already handed over. On a pipe, the
        job waits for `flush`."""
        self._outbox.append(frame(join_job(job, body)))

    def flush(self) -> None:
        """Write the jobs `send` queued, in one write. OSError: the slot is gone (its
        process died)."""
        if not self._outbox:
            return
        assert self.conn is not None
        data = b"".join(self._outbox)
        self._outbox.clear()
        write_all(self.conn.fileno(), data)

    def receive(self) -> list[bytes]:
        """The whole messages that arrived on the pipe, after one read; call it when the
        pipe is readable. EOFError: the other end closed (the process exited)."""
        assert self.conn is not None
        try:
            return self._reader.read(self.conn.fileno())
        except EOFError:
            raise EOFError(f"the pipe of slot {self.index} closed") from None

    @property
    def sentinel(self) -> int | None:
        """A waitable that becomes ready when the slot's process dies (processes only)."""
        return None

    @property
    def pid(self) -> int | None:
        return None

    def exitcode(self) -> int | None:
        return None

    def start(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """Stop the slot now (a hard time limit, a cold shutdown)."""

    def close(self, timeout: float) -> None:
        """Stop the slot after its current job (closing the pipe ends its loop)."""


class ProcessSlot(Slot):
    def __init__(
        self,
        index: int,
        ctx: Any,
        spec: ChildSpec,
        siblings: Callable[[], list[int]],
        fork_ctx: Any = None,
    ) -> None:
        super().__init__(index)
        self.ctx = ctx
        self.fork_ctx = fork_ctx  # see _fork_while_alone
        self.spec = spec
        self.siblings = siblings
        self.process: Any = None

    def start(self) -> None:
        ctx = self.ctx
        if self.fork_ctx is not None and threading.active_count() == 1:
            ctx = self.fork_ctx
        method = ctx.get_start_method()
        parent, child = ctx.Pipe(duplex=True)
        # A forked child inherits the supervisor's ends of every pipe, its own included;
        # it closes them, so that it sees EOF (and exits) when the supervisor goes away.
        inherited = (parent.fileno(), *self.siblings()) if method == "fork" else ()
        self.process = ctx.Process(
            target=child_main,
            args=(child, self.spec, inherited),
            name=f"pluq-child-{self.index}",
        )
        self.process.daemon = True
        with _main_hidden(method):
            self.process.start()
        child.close()
        self.conn = parent
        self._outbox.clear()
        self._reader.clear()

    @property
    def sentinel(self) -> int | None:
        return self.process.sentinel if self.process is not None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def exitcode(self) -> int | None:
        return self.process.exitcode if self.process is not None else None

    def kill(self) -> None:
        if self.process is not None and self.process.is_alive():
            try:
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.process is not None:
            self.process.join(5)
        self._close_conn()

    def close(self, timeout: float) -> None:
        if self.conn is not None:
            try:
                self.conn.send_bytes(STOP)
            except OSError:
                pass
        self._close_conn()
        if self.process is not None:
            self.process.join(timeout)
            if self.process.is_alive():
                self.kill()

    def _close_conn(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class ThreadSlot(Slot):
    """A thread of the supervisor's process: no pipe, no JSON; `report(slot, outcome)` is
    called from the thread after each job."""

    def __init__(self, index: int, resolve: Resolver) -> None:
        super().__init__(index)
        self.resolve = resolve
        self.report: Callable[[Slot, dict[str, Any]], None] | None = None
        self.thread: threading.Thread | None = None
        self.inbox: queue.SimpleQueue[tuple[dict[str, Any], bytes] | None] = queue.SimpleQueue()

    def start(self) -> None:
        self.inbox = queue.SimpleQueue()
        self.thread = threading.Thread(
            target=self._serve, name=f"pluq-thread-{self.index}", daemon=True
        )
        self.thread.start()

    def send(self, job: dict[str, Any], body: bytes) -> None:
        self.inbox.put((job, body))

    def flush(self) -> None:
        pass  # `send` handed it over already

    def _serve(self) -> None:
        report = self.report
        assert report is not None, "the supervisor sets report before starting the slot"
        while (item := self.inbox.get()) is not None:
            job, body = item
            outcome = run_job(job, body, self.resolve)
            outcome["token"] = job["token"]
            report(self, outcome)

    def close(self, timeout: float) -> None:
        self.inbox.put(None)
        if self.thread is not None:
            self.thread.join(timeout)


class SoloSlot(Slot):
    """Runs the job in the supervisor's own thread: no pipe; the supervisor calls `run`."""

    def __init__(self, index: int, resolve: Resolver) -> None:
        super().__init__(index)
        self.resolve = resolve

    def start(self) -> None:
        pass


def make_pool(
    pool: str, concurrency: int, spec: ChildSpec, *, start_method: str | None
) -> list[Slot]:
    """Create (not start) the slots of a pool."""
    if pool == "processes":
        import multiprocessing

        method = start_method or default_start_method()
        fork_ctx = _fork_while_alone() if start_method is None else None
        if method not in multiprocessing.get_all_start_methods():
            raise ConfigurationError(
                f"start method {method!r} is not available here; use one of "
                f"{', '.join(multiprocessing.get_all_start_methods())}"
            )
        ctx = multiprocessing.get_context(method)
        if method == "forkserver":
            # Children forked from the server start with pluq already imported.
            ctx.set_forkserver_preload(["pluq.worker._forkserver", "pluq.worker.child"])
        slots: list[Slot] = []

        def siblings() -> list[int]:
            return [s.conn.fileno() for s in slots if s.conn is not None]

        slots.extend(ProcessSlot(i, ctx, spec, siblings, fork_ctx) for i in range(concurrency))
        return slots
    resolver = Resolver(spec)
    if pool == "threads":
        return [ThreadSlot(i, resolver) for i in range(concurrency)]
    if pool == "solo":
        return [SoloSlot(0, resolver)]
    raise ConfigurationError(f"unknown pool {pool!r}; choose one of: {', '.join(POOLS)}")
