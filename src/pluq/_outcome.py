"""Values and exceptions in and out of a TaskRecord's `result` field.

A value that survives a JSON round trip unchanged is stored as plain JSON, so people and
other languages can read it (`redis-cli GET`, `sqlite-utils rows`, `cat`). Anything else is
stored as base64 of the app serializer's bytes, next to a short `repr` for people.
"""

from __future__ import annotations

import base64
import builtins
import importlib
import json
import math
from typing import Any

from pluq.errors import SerializationError, TaskError
from pluq.serializers import Serializer, get_serializer

__all__ = [
    "decode_value",
    "encode_exception",
    "encode_value",
    "exception_name",
    "rebuild_exception",
]

_REPR_LIMIT = 200
_INT64 = 1 << 63


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception as exc:  # a broken __repr__ must not fail the task
        text = f"<unrepresentable {type(value).__name__}: {exc}>"
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _json_exact(value: Any) -> bool:
    # The usual return values first, without a round trip: the answer it would give.
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int and -_INT64 <= value < _INT64:  # a longer one may pass str()'s limit
        return True
    if kind is float:
        return math.isfinite(value)  # a finite float's repr reads back as the same float
    try:
        return bool(json.loads(json.dumps(value, allow_nan=False)) == value) and _same_shape(value)
    except (TypeError, ValueError, RecursionError):
        return False


def _same_shape(value: Any) -> bool:
    # 1 == 1.0 == True compare equal in Python but are different JSON: check types too.
    if isinstance(value, bool | int | float | str) or value is None:
        return True
    if isinstance(value, list):
        return all(_same_shape(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _same_shape(v) for k, v in value.items())
    return False


def encode_value(value: Any, serializer: Serializer) -> tuple[Any, str, str]:
    """(result field, encoding, repr) for a task's return value."""
    if _json_exact(value):
        return value, "json", _short_repr(value)
    if serializer.name == "json":
        raise SerializationError(
            f"the task returned {_short_repr(value)}, which JSON cannot carry exactly; "
            f'return JSON values, or use App(..., serializer="cloudpickle")'
        )
    data = serializer.dumps(value)
    return base64.b64encode(data).decode("ascii"), serializer.name, _short_repr(value)


def decode_value(result: Any, encoding: str | None) -> Any:
    """The Python value of a result field (the caller has verified the record)."""
    if encoding is None or encoding == "json":
        return result
    return get_serializer(encoding).loads(base64.b64decode(result))


def exception_name(exc: BaseException | type[BaseException]) -> str:
    cls = exc if isinstance(exc, type) else type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def encode_exception(exc: BaseException, serializer: Serializer) -> tuple[Any, str | None]:
    """(result field, encoding) for a failure: the pickled exception where possible."""
    if serializer.name == "json":
        return None, None
    try:
        data = serializer.dumps(exc)
        serializer.loads(data)  # an exception whose __init__ needs other args fails here
    except Exception:
        return None, None
    return base64.b64encode(data).decode("ascii"), serializer.name


def rebuild_exception(
    exc_type: str | None, exc_message: str | None, result: Any, encoding: str | None
) -> BaseException:
    """The failed task's exception: unpickled, or rebuilt from its class name and message."""
    if result is not None and encoding not in (None, "json"):
        try:
            value = decode_value(result, encoding)
        except Exception:
            value = None
        if isinstance(value, BaseException):
            return value
    message = exc_message or ""
    cls = _find_exception_class(exc_type)
    if cls is not None:
        try:
            return cls(message)
        except Exception:
            pass
    return TaskError(f"{exc_type}: {message}" if exc_type else message, exc_type=exc_type)


def _find_exception_class(name: str | None) -> type[BaseException] | None:
    if not name:
        return None
    module_name, _, attr = name.rpartition(".")
    try:
        target: Any = importlib.import_module(module_name) if module_name else builtins
    except Exception:
        return None
    target = getattr(target, attr, None)
    if isinstance(target, type) and issubclass(target, BaseException):
        return target
    return None
