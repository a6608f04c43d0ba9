"""pluq: a task framework for Python with pluggable brokers.

import pluq

app = pluq.App("sqlite:///pluq.db")

@app.task
def add(x, y):
    return x + y

add.delay(2, 3).get(timeout=10)   # 5, once a worker runs: pluq worker -A module:app
"""

from __future__ import annotations

from pluq.app import App, DeadTask, Stats
from pluq.backend import Attempt, ResultBackend, TaskRecord
from pluq.broker import Broker, Capabilities, DeadLetter, Delivery, QueueCounts, WorkerInfo
from pluq.canvas import Chain, Chord, Group, GroupResult, Signature, chain, chord, group
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
