"""How task arguments and results become bytes: `cloudpickle` (the default) or `json`.

cloudpickle carries any Python value, and functions defined in `__main__` (a notebook, a
script) by value. json carries only JSON values, but a json message can be read, and
safely loaded, by anyone. Only the worker's children and the caller ever load a body; the
supervisor never does.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from typing import Any, Final, Protocol

from pluq.errors import ConfigurationError, SerializationError

__all__ = ["SERIALIZERS", "Serializer", "get_serializer"]


class Serializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


# Built once: json.dumps with options builds a new encoder per call.
_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


class JsonSerializer:
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return _JSON.encode(obj).encode()
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot encode {_short(obj)} as JSON ({exc}); pass JSON values only "
                f"(str, int, float, bool, None, list, dict with str keys), or use "
                f'App(..., serializer="cloudpickle")'
            ) from exc

    def loads(self, data: bytes) -> Any:
        return json.loads(data)


class CloudpickleSerializer:
    name = "cloudpickle"

    def dumps(self, obj: Any) -> bytes:
        if _plain(obj) or _plain_exception(obj):
            # Plain data pickles to the same bytes either way (cloudpickle only changes how
            # functions, classes and modules go), and pickle.dumps costs several times less.
            return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        # Imported lazily: about 4 MB that json-only apps, the supervisor, and a worker's
        # children running tasks of plain data never need.
        import cloudpickle

        try:
            data: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle {_short(obj)} ({type(exc).__name__}: {exc}); pass values "
                f"that can be pickled (no open files, sockets, locks or generators)"
            ) from exc
        return data

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)


_ATOMS: Final = frozenset({type(None), bool, int, float, str, bytes})
_PLAIN_DEPTH: Final = 6
_PLAIN_ITEMS: Final = 256


def _plain(obj: Any) -> bool:
    """True when `obj` is made only of None, bool, int, float, str and bytes in lists,
    tuples and dicts (exact types, not subclasses): data with nothing that cloudpickle
    would pickle differently from pickle.

    Bounded so it stays cheap next to pickling: containers nested more than
    `_PLAIN_DEPTH` deep or holding more than `_PLAIN_ITEMS` values in all count as not
    plain (cloudpickle takes those, as before).
    """
    return type(obj) in _ATOMS or _plain_budget(obj, _PLAIN_ITEMS, _PLAIN_DEPTH) >= 0


_BY_REFERENCE: Final = frozenset({"builtins", "pluq.errors"})


def _plain_exception(obj: Any) -> bool:
    """True for an exception of a class from `_BY_REFERENCE` carrying plain data, such as
    ValueError("boom") or a ConnectionError a task retries on: the usual way a task fails.

    Both pickle and cloudpickle refer to those classes by name, so the bytes are the same,
    and a worker's child records a failure without importing cloudpickle.
    """
    return (
        isinstance(obj, BaseException)
        and type(obj).__module__ in _BY_REFERENCE
        and _plain(obj.args)
        and _plain(vars(obj))
    )


def _plain_budget(value: Any, budget: int, depth: int) -> int:
    """The budget left after checking the container `value`, or -1 if it is not plain."""
    kind = type(value)
    items: Iterable[Any]
    if kind is list or kind is tuple:
        items = value
    elif kind is dict:
        items = value.values()
    else:
        return -1
    budget -= len(value)
    if budget < 0 or depth == 0:
        return -1
    if kind is dict:
        for key in value:
            if type(key) not in _ATOMS:
                return -1
    for item in items:
        if type(item) not in _ATOMS:  # atoms inline: one call per container, not per value
            budget = _plain_budget(item, budget, depth - 1)
            if budget < 0:
                return -1
    return budget


def _short(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


SERIALIZERS: dict[str, Serializer] = {
    "json": JsonSerializer(),
    "cloudpickle": CloudpickleSerializer(),
}


def get_serializer(name: str) -> Serializer:
    """The serializer called `name`, or a ConfigurationError listing the known ones."""
    try:
        return SERIALIZERS[name]
    except KeyError:
        raise ConfigurationError(
            f"unknown serializer {name!r}; choose one of: {', '.join(sorted(SERIALIZERS))}"
        ) from None
