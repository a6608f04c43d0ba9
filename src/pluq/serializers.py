"""How task arguments and results become bytes: `cloudpickle` (the default) or `json`.

cloudpickle carries any Python value, and functions defined in `__main__` (a notebook, a
script) by value. json carries only JSON values, but a json message can be read, and
safely loaded, by anyone. Only the worker's children and the caller ever load a body; the
supervisor never does.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol

from pluq.errors import ConfigurationError, SerializationError

__all__ = ["SERIALIZERS", "Serializer", "get_serializer"]


class Serializer(Protocol):
    name: str

    def dumps(self, obj: Any) -> bytes: ...

    def loads(self, data: bytes) -> Any: ...


class JsonSerializer:
    name = "json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
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
        import cloudpickle  # imported lazily: json-only apps and the supervisor never need it

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
