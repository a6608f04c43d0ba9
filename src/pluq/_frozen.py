"""Building frozen, slotted dataclasses on the worker's hot paths.

A frozen dataclass's `__init__` sets each field through `object.__setattr__(self, name,
value)`, a lookup of the name on the class and a call for every field: most of the cost
of a Header or a TaskRecord made for every task. Setting each slot through its descriptor
from Python (`Header.id.__set__(obj, value)`) is not much cheaper, a call per field too.

What is cheap is a plain `self.name = value`, as the `__init__` of a dataclass that is not
frozen does it; and CPython lets an object change its class to another of the very same
layout (`obj.__class__ = cls`). So `maker` and `positional` build the object as its
*twin* (a class with the same base and the same slots, not frozen) and then make it a
`cls`: the object `cls(...)` makes, at about a third of the cost of its `__init__`. No
`__init__` of `cls` runs, so they are for classes whose `__init__` does nothing but set
fields (no `__post_init__`), and for callers that hold a value for every field already: as
a mapping (`maker`: a record's fields with some changed, a parsed header with its
defaults), or one by one (`positional`: an attempt, a task's request).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

__all__ = ["maker", "positional"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[[Mapping[str, Any]], T]:
    """A function making a `cls` from a mapping holding a value for every field (more
    keys are ignored; a missing one is a KeyError). The object equals `cls(**values)`.

    The values are looked up by name (in one call of an `itemgetter`) and passed in order,
    not as keywords: a mapping parsed from JSON holds keys that are equal to the parameter
    names but are not the same objects, and keyword matching compares those character by
    character.
    """
    twin = _twin(cls)
    names = list(twin.__dataclass_fields__)  # the fields of `cls`, in order
    values_of = operator.itemgetter(*names) if len(names) > 1 else lambda v: (v[names[0]],)

    def make(values: Mapping[str, Any]) -> T:
        obj = twin(*values_of(values))
        obj.__class__ = cls
        return obj  # type: ignore[no-any-return]

    make.__doc__ = f"A {cls.__name__} from a value for each of its fields."
    return make


def positional(cls: type[T]) -> Callable[..., T]:
    """A function making a `cls` from a value for every field, passed positionally in
    declaration order (too few or too many: TypeError). The object equals `cls(**values)`:
    for a hot path that has each value at hand, without building a mapping first."""
    twin = _twin(cls)

    def make(*values: Any) -> T:
        obj = twin(*values)
        obj.__class__ = cls
        return obj  # type: ignore[no-any-return]

    make.__doc__ = f"A {cls.__name__} from a value for each of its fields, in order."
    return make


def _twin(cls: type[Any]) -> type[Any]:
    """A class with the layout of `cls` (its bases, its slots in their order), not frozen,
    whose `__init__` takes every field of `cls` (in order, without defaults) and sets each
    with a plain `self.name = value`. Its objects may become `cls` objects."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in vars(cls):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without hooks")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} is not a frozen, slotted dataclass without hooks")
    names = [f.name for f in dataclasses.fields(cls)]
    namespace = {"__slots__": cls.__slots__, "__annotations__": dict.fromkeys(names, Any)}
    twin = type(f"_{cls.__name__}Twin", cls.__bases__, namespace)
    return dataclasses.dataclass(repr=False, eq=False, match_args=False)(twin)
