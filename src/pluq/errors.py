"""The exceptions pluq raises, in one tree.

    PluqError
    ├── ConfigurationError      bad URL, unknown scheme, bad option    (also a ValueError)
    ├── NotRegistered           a task name nobody registered          (also a LookupError)
    ├── SignatureError          a message or result with a bad or missing HMAC
    ├── MessageError            bytes that are not a pluq message
    ├── SerializationError      a value the serializer cannot encode   (also a TypeError)
    ├── TimeoutError            AsyncResult.get() waited too long      (also builtins')
    ├── TaskError               a task's exception that cannot be rebuilt where it is read
    ├── MaxRetriesExceededError a task asked to retry once more than it may
    ├── TimeLimitExceeded       a task ran past its hard time limit
    ├── WorkerLostError         the process running a task died
    ├── TaskRevokedError        the task was revoked or expired before it ran
    ├── LeaseLost               acting on a delivery whose lease has expired (transports raise it)
    └── TransportError          a broker or backend could not do what it was asked
        └── BackendUnavailable  the result store cannot be reached right now

Every message says what happened and what to do about it.
"""

from __future__ import annotations

import builtins

__all__ = [
    "BackendUnavailable",
    "ConfigurationError",
    "LeaseLost",
    "MaxRetriesExceededError",
    "MessageError",
    "NotRegistered",
    "PluqError",
    "Retry",
    "SerializationError",
    "SignatureError",
    "TaskError",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "TransportError",
    "WorkerLostError",
]


class PluqError(Exception):
    """Raised for every error pluq itself reports; catch this to catch them all."""


class ConfigurationError(PluqError, ValueError):
    """Raised when a URL, a scheme or an option is wrong; the message names the fix."""


class NotRegistered(PluqError, LookupError):
    """Raised when a task name is not registered with the app that should run it."""

    def __str__(self) -> str:  # LookupError's repr-style str would quote the message
        return str(self.args[0]) if self.args else "task not registered"


class SignatureError(PluqError):
    """Raised when a message or a result has a missing or wrong HMAC signature."""


class MessageError(PluqError):
    """Raised when bytes taken from a broker are not a message this pluq can read."""


class SerializationError(PluqError, TypeError):
    """Raised when arguments or a result cannot be encoded by the chosen serializer."""


class TimeoutError(PluqError, builtins.TimeoutError):
    """Raised when `AsyncResult.get` waited `timeout` seconds and the task was not ready."""


class TaskError(PluqError):
    """Raised by `get()` for a failed task whose exception class cannot be rebuilt here.

    `exc_type` holds the dotted name of the original class.
    """

    def __init__(self, message: str, *, exc_type: str | None = None) -> None:
        super().__init__(message)
        self.exc_type = exc_type


class MaxRetriesExceededError(PluqError):
    """Raised when a task calls `self.retry()` after its last allowed retry."""


class TimeLimitExceeded(PluqError):
    """Raised (as the task's failure) when a task ran past its hard `time_limit`."""


class WorkerLostError(PluqError):
    """Raised (as the task's failure) when the process running the task died."""


class TaskRevokedError(PluqError):
    """Raised by `get()` when the task was revoked or expired before it could run."""


class LeaseLost(PluqError):
    """Raised by a broker when a delivery's lease expired and the message went to another.

    The worker that gets it must not act on the message again: someone else owns it now.
    """


class TransportError(PluqError):
    """Raised when a broker or result backend could not do what it was asked."""


class BackendUnavailable(TransportError):
    """Raised when the result store cannot be reached; the worker keeps the message unacked."""


class Retry(PluqError):
    """Raised by `self.retry()` inside a task to ask the worker to run it again later.

    Re-raise it (`raise self.retry(...)`); the worker catches it. It is not a failure.
    """

    def __init__(
        self,
        message: str = "",
        *,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: float | None = None,
        max_retries: int | None = None,
    ) -> None:
        super().__init__(message or "retry requested")
        self.exc = exc
        self.countdown = countdown
        self.eta = eta
        self.max_retries = max_retries
