"""AsyncResult: the caller's handle on a queued task, read from the result backend."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pluq._outcome import decode_value, rebuild_exception
from pluq.backend import FAILURE, PENDING, REVOKED, SUCCESS, Attempt, TaskRecord
from pluq.errors import TaskRevokedError, TimeoutError

if TYPE_CHECKING:
    from pluq.app import App

__all__ = ["AsyncResult"]

R = TypeVar("R")


class AsyncResult(Generic[R]):
    """The state and outcome of one task, by id.

    Every property reads the backend afresh: a task moves on while you look, and even a
    failed one starts again when it is retried from the dead-letter queue.
    """

    def __init__(self, id: str, *, app: App) -> None:
        self.id = id
        self.app = app

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id} {self.state}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading -------------------------------------------------------------------------

    def _record(self) -> TaskRecord | None:
        record = self.app.backend.get(self.id)
        if record is not None:
            self.app._verify_record(record)
        return record

    @property
    def record(self) -> TaskRecord | None:
        """The backend's whole record, or None while there is none (PENDING)."""
        return self._record()

    @property
    def state(self) -> str:
        """PENDING, STARTED, RETRY, SUCCESS, FAILURE or REVOKED."""
        record = self._record()
        return record.state if record is not None else PENDING

    @property
    def status(self) -> str:
        return self.state

    def ready(self) -> bool:
        """True once the task succeeded, failed for good, or was revoked."""
        record = self._record()
        return record is not None and record.ready

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value once succeeded, the exception once failed, else None."""
        record = self._record()
        if record is None:
            return None
        return self._outcome(record)

    @property
    def info(self) -> Any:
        return self.result

    @property
    def traceback(self) -> str | None:
        record = self._record()
        return record.traceback if record is not None else None

    @property
    def retries(self) -> int:
        """How many retries have happened so far."""
        record = self._record()
        return record.retries if record is not None else 0

    @property
    def history(self) -> list[Attempt]:
        """Every attempt so far: state, exception type and message, traceback, times, worker."""
        record = self._record()
        return list(record.history) if record is not None else []

    @property
    def name(self) -> str | None:
        record = self._record()
        return record.task if record is not None else None

    @property
    def date_done(self) -> float | None:
        record = self._record()
        return record.finished_at if record is not None else None

    def _outcome(self, record: TaskRecord) -> Any:
        if record.state == SUCCESS:
            return decode_value(record.result, record.result_encoding)
        if record.state == FAILURE:
            return rebuild_exception(
                record.exc_type, record.exc_message, record.result, record.result_encoding
            )
        if record.state == REVOKED:
            return TaskRevokedError(record.exc_message or f"task {self.id} was revoked")
        return None

    # -- waiting -------------------------------------------------------------------------

    def get(
        self, timeout: float | None = None, propagate: bool = True, *, progress: bool = False
    ) -> R:
        """Wait for the task and return its value.

        Args:
            timeout: seconds to wait at most (None: forever).
            propagate: re-raise the task's exception when it failed (the default); with
                False, return the exception instead.
            progress: show a progress bar (a terminal or a notebook) while waiting.

        Raises:
            pluq.TimeoutError: the task was not ready after `timeout` seconds.
            pluq.TaskRevokedError: the task was revoked or expired (with `propagate`).
            Exception: the task's own exception when it failed (with `propagate`).
        """
        record = self._wait(timeout, progress)
        value = self._outcome(record)
        if propagate and record.state in (FAILURE, REVOKED):
            raise value
        return value  # type: ignore[no-any-return]

    def wait(self, timeout: float | None = None, propagate: bool = True) -> R:
        return self.get(timeout=timeout, propagate=propagate)

    def _wait(self, timeout: float | None, progress: bool) -> TaskRecord:
        started = time.monotonic()
        if progress:
            from pluq._progress import wait_with_progress

            record = wait_with_progress(self.app.backend, [self.id], timeout)[0]
        else:
            record = self.app.backend.wait(self.id, timeout=timeout)
        if record is None:
            waited = time.monotonic() - started
            state = self.state
            hint = (
                "is a worker running for its queue? (pluq worker -A module:app)"
                if state == PENDING
                else "it is still running or waiting to retry"
            )
            raise TimeoutError(
                f"task {self.id} was not ready after {waited:.1f} s (state {state}): {hint}; "
                f"wait longer with get(timeout=...)"
            )
        self.app._verify_record(record)
        return record

    # -- acting --------------------------------------------------------------------------

    def forget(self) -> None:
        """Delete the stored result (the task itself is not stopped)."""
        self.app.backend.forget(self.id)

    def revoke(self, *, terminate: bool = False) -> None:
        """Cancel the task: one that has not started never starts.

        A task already running finishes and records its outcome, unless `terminate=True`:
        then the worker running it kills its child process within about a second (the
        processes pool only; a thread cannot be killed) and the task stays REVOKED.
        """
        self.app._revoke(self.id, terminate=terminate)
