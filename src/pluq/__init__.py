"""pluq: a task framework for Python with pluggable brokers.

import pluq

app = pluq.App("sqlite:///pluq.db")

@app.task
def add(x, y):
    return x + y

add.delay(2, 3).get(timeout=10)   # 5, once a worker runs: pluq worker -A module:app

`import pluq` loads only the exceptions: every other public name is imported on first use
(PEP 562), so that a worker's child processes and the command line do not pay for the
parts of pluq they never touch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pluq.errors import (
    BackendUnavailable,
    ConfigurationError,
    LeaseLost,
    MaxRetriesExceededError,
    MessageError,
    NotRegistered,
    PluqError,
    Retry,
    SerializationError,
    SignatureError,
    TaskError,
    TaskRevokedError,
    TimeLimitExceeded,
    TimeoutError,
    TransportError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from pluq.app import App, DeadTask, Stats
    from pluq.backend import Attempt, ResultBackend, TaskRecord
    from pluq.broker import Broker, Capabilities, DeadLetter, Delivery, QueueCounts, WorkerInfo
    from pluq.canvas import Chain, Chord, Group, GroupResult, Signature, chain, chord, group
    from pluq.registry import register_transport
    from pluq.result import AsyncResult
    from pluq.task import Request, Task, current_request
    from pluq.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "App",
    "AsyncResult",
    "Attempt",
    "BackendUnavailable",
    "Broker",
    "Capabilities",
    "Chain",
    "Chord",
    "ConfigurationError",
    "DeadLetter",
    "DeadTask",
    "Delivery",
    "Group",
    "GroupResult",
    "LeaseLost",
    "MaxRetriesExceededError",
    "MessageError",
    "NotRegistered",
    "PluqError",
    "QueueCounts",
    "Request",
    "ResultBackend",
    "Retry",
    "SerializationError",
    "Signature",
    "SignatureError",
    "Stats",
    "Task",
    "TaskError",
    "TaskRecord",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "TransportError",
    "Worker",
    "WorkerInfo",
    "WorkerLostError",
    "__version__",
    "chain",
    "chord",
    "current_request",
    "group",
    "register_transport",
]

_LAZY: dict[str, str] = {
    "App": "pluq.app",
    "DeadTask": "pluq.app",
    "Stats": "pluq.app",
    "Attempt": "pluq.backend",
    "ResultBackend": "pluq.backend",
    "TaskRecord": "pluq.backend",
    "Broker": "pluq.broker",
    "Capabilities": "pluq.broker",
    "DeadLetter": "pluq.broker",
    "Delivery": "pluq.broker",
    "QueueCounts": "pluq.broker",
    "WorkerInfo": "pluq.broker",
    "Chain": "pluq.canvas",
    "Chord": "pluq.canvas",
    "Group": "pluq.canvas",
    "GroupResult": "pluq.canvas",
    "Signature": "pluq.canvas",
    "chain": "pluq.canvas",
    "chord": "pluq.canvas",
    "group": "pluq.canvas",
    "register_transport": "pluq.registry",
    "AsyncResult": "pluq.result",
    "Request": "pluq.task",
    "Task": "pluq.task",
    "current_request": "pluq.task",
    "Worker": "pluq.worker",
}
"""Public name -> the module that defines it, imported when the name is first read."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pluq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
