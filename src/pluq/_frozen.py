"""Building frozen, slotted dataclasses on the worker's hot paths.

A frozen dataclass's `__init__` sets each field through `object.__setattr__(self, name,
value)`, a lookup of the name on the class and a call for every field: most of the cost
of a Header or a TaskRecord made for every task. `maker` and `positional` set the fields
through their slots directly, about twice as fast, for callers that hold a value for
every field already: as a mapping (`maker`: a record's fields with some changed, a parsed
header with its defaults), or one by one (`positional`: an attempt, a task's request).
No `__init__` runs, so they are for classes whose `__init__` does nothing but set fields.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["maker", "positional"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[[Mapping[str, Any]], T]:
    """A function making a `cls` from a mapping holding a value for every field (more
    keys are ignored; a missing one is a KeyError). The object equals `cls(**values)`."""
    slots = _setters(cls)
    new = object.__new__

    def make(values: Mapping[str, Any]) -> T:
        obj = new(cls)
        for name, set_slot in slots:
            set_slot(obj, values[name])
        return obj

    make.__doc__ = f"A {cls.__name__} from a value for each of its fields."
    return make


def positional(cls: type[T]) -> Callable[..., T]:
    """A function making a `cls` from a value for every field, passed positionally in
    declaration order (too few or too many: ValueError). The object equals `cls(**values)`:
    for a hot path that has each value at hand, without building a mapping first."""
    slots = _setters(cls)
    setters = tuple(set_slot for _, set_slot in slots)
    new = object.__new__

    def make(*values: Any) -> T:
        obj = new(cls)
        for set_slot, value in zip(setters, values, strict=True):
            set_slot(obj, value)
        return obj

    make.__doc__ = f"A {cls.__name__} from a value for each of its fields, in order."
    return make


def _setters(cls: type[Any]) -> tuple[tuple[str, Callable[[Any, Any], None]], ...]:
    """(name, slot setter) for each field of a frozen, slotted dataclass without hooks."""
    params = cls.__dataclass_params__
    if not (params.frozen and hasattr(cls, "__slots__")) or hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without hooks")
    return tuple((f.name, getattr(cls, f.name).__set__) for f in dataclasses.fields(cls))
