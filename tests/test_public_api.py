"""The public surface is a contract: code outside this repo uses exactly these names."""

from __future__ import annotations

import ast
from pathlib import Path

import pluq
import pluq.errors

SRC = Path(pluq.__file__).parent


def test_public_names_are_pinned() -> None:
    assert sorted(pluq.__all__) == sorted(
        [
            "App", "AsyncResult", "Attempt", "BackendUnavailable", "Broker", "Capabilities", "ConfigurationError",
            "DeadLetter", "DeadTask", "Delivery", "LeaseLost", "MaxRetriesExceededError",
            "MessageError", "NotRegistered", "PluqError", "QueueCounts", "Request",
            "ResultBackend", "Retry", "SerializationError", "Signature", "SignatureError",
            "Stats", "Task", "TaskError", "TaskRecord", "TaskRevokedError", "TimeLimitExceeded",
            "TimeoutError", "TransportError", "Worker", "WorkerInfo", "WorkerLostError",
            "__version__", "current_request", "register_transport", "Chain", "Chord", "Group",
            "GroupResult", "chain", "chord", "group",
        ]
    )  # fmt: skip
    for name in pluq.__all__:
        assert hasattr(pluq, name), name


def test_every_error_is_a_pluq_error_reexported_from_pluq() -> None:
    for name in pluq.errors.__all__:
        cls = getattr(pluq.errors, name)
        assert issubclass(cls, pluq.PluqError)
        assert getattr(pluq, name) is cls
        assert cls.__doc__ and cls.__doc__.startswith("Raised")


def test_errors_subclass_the_builtins_a_user_would_catch() -> None:
    assert issubclass(pluq.TimeoutError, TimeoutError)
    assert issubclass(pluq.ConfigurationError, ValueError)
    assert issubclass(pluq.NotRegistered, LookupError)


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


def test_the_worker_and_the_api_never_import_a_transport() -> None:
    layered = [SRC / "app.py", SRC / "task.py", SRC / "result.py", SRC / "canvas.py"]
    layered += [SRC / "scheduler.py"]
    layered += sorted((SRC / "worker").glob("*.py"))
    for path in layered:
        for name in _imports(path):
            assert "transports" not in name, f"{path.name} imports {name}"


def test_transports_never_import_the_core_above_the_interfaces() -> None:
    allowed = {"pluq.broker", "pluq.backend", "pluq.registry", "pluq.errors"}
    for path in sorted((SRC / "transports").glob("*.py")):
        for name in _imports(path):
            if name.startswith("pluq.") and name.count(".") == 1:
                assert name in allowed, f"{path.name} imports {name}"
