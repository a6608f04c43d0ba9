"""`pluq._frozen.maker`: a frozen dataclass built through its slots equals one built by
its __init__, and the hot paths that use it keep their refusals."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from pluq import message as msg
from pluq._frozen import maker
from pluq.backend import SUCCESS, TaskRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict)


def test_a_made_object_equals_the_one_init_makes_and_stays_frozen() -> None:
    made = maker(Point)({"x": 1, "y": 2, "tags": {"a": "b"}, "ignored": 3})
    assert made == Point(x=1, y=2, tags={"a": "b"})
    assert type(made) is Point
    with pytest.raises(AttributeError):
        made.x = 5  # type: ignore[misc]


def test_a_missing_field_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="tags"):
        maker(Point)({"x": 1, "y": 2})


def test_only_frozen_slotted_dataclasses_without_hooks_are_taken() -> None:
    @dataclass(frozen=True)
    class NoSlots:
        x: int

    @dataclass(frozen=True, slots=True)
    class Hooked:
        x: int

        def __post_init__(self) -> None:
            pass

    @dataclass(slots=True)
    class Mutable:
        x: int

    for cls in (NoSlots, Hooked, Mutable):
        with pytest.raises(TypeError, match="frozen, slotted dataclass"):
            maker(cls)


def test_a_short_header_gets_the_defaults_and_a_meta_dict_of_its_own() -> None:
    line = json.dumps({"id": "a", "task": "t", "queue": "q", "serializer": "json", "v": 1})
    first, _ = msg.decode(line.encode() + b"\nbody")
    second, _ = msg.decode(line.encode() + b"\nbody")
    assert first == msg.Header(id="a", task="t", queue="q", serializer="json")
    assert first.meta == {} and first.meta is not second.meta


def test_signing_with_a_field_the_record_lacks_is_refused() -> None:
    record = TaskRecord(id="a")
    with pytest.raises(TypeError, match="no field"):
        msg.sign_record(record, [b"k"], state=SUCCESS, colour="red")
