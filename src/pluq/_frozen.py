"""Building frozen, slotted dataclasses on the worker's hot paths.

A frozen dataclass's `__init__` sets each field through `object.__setattr__(self, name,
value)`, a lookup of the name on the class and a call for every field: most of the cost
of a Header or a TaskRecord made for every task. `maker(cls)` sets the fields through
their slots directly, about three times faster, for callers that hold a value for every
field already (a record's fields with some changed, a parsed header with its defaults).
No `__init__` runs, so it is for classes whose `__init__` does nothing but set fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["maker"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[[Mapping[str, Any]], T]:
    """A function making a `cls` from a mapping holding a value for every field (more
    keys are ignored; a missing one is a KeyError). The object equals `cls(**values)`."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    if not (params.frozen and hasattr(cls, "__slots__")) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without hooks")
    slots = tuple((f.name, getattr(cls, f.name).__set__) for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    new = object.__new__

    def make(values: Mapping[str, Any]) -> T:
        obj = new(cls)
        for name, set_slot in slots:
            set_slot(obj, values[name])
        return obj

    make.__doc__ = f"A {cls.__name__} from a value for each of its fields."
    return make
