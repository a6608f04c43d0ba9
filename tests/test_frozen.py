"""The worker's shortcuts in building records and headers: `pluq._frozen.maker` builds
what __init__ builds, the hot paths that use it keep their refusals, and a fresh task's
STARTED record made from its header's fields is the record built the long way."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from pluq import message as msg
from pluq._frozen import maker, positional
from pluq.backend import SUCCESS, Attempt, TaskRecord
from pluq.broker import Delivery, make_delivery
from pluq.task import Request
from pluq.worker.child import _make_request
from pluq.worker.outcomes import _make_attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class Point:
    x: int
    y: int = 0
    tags: dict[str, str] = field(default_factory=dict)


def test_a_made_object_equals_the_one_init_makes_and_stays_frozen() -> None:
    made = maker(Point)({"x": 1, "y": 2, "tags": {"a": "b"}})
    assert made == Point(x=1, y=2, tags={"a": "b"})
    assert type(made) is Point
    assert repr(made) == repr(Point(x=1, y=2, tags={"a": "b"}))
    with pytest.raises(AttributeError):
        made.x = 5  # type: ignore[misc]


def test_a_missing_field_is_a_key_error_and_more_keys_are_ignored() -> None:
    with pytest.raises(KeyError, match="tags"):
        maker(Point)({"x": 1, "y": 2})
    assert maker(Point)({"x": 1, "y": 2, "tags": {}, "colour": "red"}) == Point(x=1, y=2)


def test_positional_makes_what_init_makes_from_values_in_declaration_order() -> None:
    made = positional(Point)(1, 2, {"a": "b"})
    assert made == Point(x=1, y=2, tags={"a": "b"})
    assert type(made) is Point
    for values in ((1, 2), (1, 2, {}, 4)):
        with pytest.raises(TypeError):
            positional(Point)(*values)


def test_a_made_object_keeps_its_class_s_extra_slots_and_pickles() -> None:
    import pickle

    made = msg._make_header({**msg._DEFAULTS, "id": "a", "task": "t", "queue": "q",
                             "serializer": "json", "meta": {}})  # fmt: skip
    assert made == msg.Header(id="a", task="t", queue="q", serializer="json")
    object.__setattr__(made, "_line", b"{}")  # the slot of its base: still there
    assert made._line == b"{}"
    assert pickle.loads(pickle.dumps(made)) == made


def test_the_hot_paths_positional_calls_match_their_classes() -> None:
    # Positional calls break silently if a class's fields are reordered: pin each one.
    assert _make_attempt(3, SUCCESS, None, None, None, 1.0, 2.0, "w") == Attempt(
        number=3, state=SUCCESS, started_at=1.0, finished_at=2.0, worker="w"
    )
    made = _make_request("id", "t", "q", 1, 3, 2, 5.0, 6.0, (1,), {"k": 2}, "h", False)
    assert made == Request(
        id="id", task="t", queue="q", retries=1, max_retries=3, attempt=2, eta=5.0,
        expires=6.0, args=(1,), kwargs={"k": 2}, hostname="h", called_directly=False,
    )  # fmt: skip
    assert make_delivery("i", "q", b"m", 2, "l", 9.0) == Delivery(
        id="i", queue="q", message=b"m", attempt=2, lease_id="l", lease_deadline=9.0
    )


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
        for make in (maker, positional):
            with pytest.raises(TypeError, match="frozen, slotted dataclass"):
                make(cls)


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


def test_a_fresh_tasks_started_record_is_the_one_built_from_its_header() -> None:
    from pluq.backend import STARTED
    from pluq.worker.supervisor import Running

    header = msg.Header(id="t1", task="m.add", queue="q", serializer="json", retries=2, created=5.0)
    delivery = Delivery(
        id="t1", queue="q", message=b"", attempt=3, lease_id="l", lease_deadline=9.0
    )
    held = Running(delivery, header, b"", None, worker="w1", admitted=7.0)
    expected = TaskRecord(
        id="t1", state=STARTED, task="m.add", queue="q", retries=2, worker="w1",
        created_at=5.0, started_at=7.0,
    )  # fmt: skip
    fields = held.fields()
    assert list(fields) == list(expected._fields())  # declaration order: what is signed
    assert fields == expected._fields()
    assert held.record == expected  # built on first use, then kept
    assert held.record is held.record
    held.record = expected.evolve(history=(Attempt(number=1, state="LOST"),))
    assert held.fields()["history"] == (Attempt(number=1, state="LOST"),)


def test_a_class_of_one_field_is_made_too() -> None:
    @dataclass(frozen=True, slots=True)
    class One:
        x: int

    assert maker(One)({"x": 1, "y": 2}) == One(1)
    assert positional(One)(1) == One(1)
    with pytest.raises(KeyError, match="x"):
        maker(One)({})


def test_a_fresh_tasks_success_is_the_record_the_long_way_builds() -> None:
    from pluq.broker import Delivery
    from pluq.worker.outcomes import Outcomes
    from pluq.worker.supervisor import Running

    class Sink(Outcomes):
        name = "w2"
        keys = (b"k",)
        _task_log = False

        def __init__(self) -> None:
            self._stores = []

    header = msg.Header(id="t1", task="m.add", queue="q", serializer="json", retries=2, created=5.0)
    delivery = Delivery(
        id="t1", queue="q", message=b"", attempt=3, lease_id="l", lease_deadline=9.0
    )
    outcome = {
        "status": "success", "result": [1], "result_encoding": "json", "result_repr": "[1]",
        "started_at": 8.0, "finished_at": 9.0,
    }  # fmt: skip
    fresh = Running(delivery, header, b"", None, worker="w1", admitted=7.0)
    built = Running(delivery, header, b"", None, worker="w1", admitted=7.0)
    assert built.record is not None and fresh.fresh and not built.fresh
    made = []
    for held in (fresh, built):
        sink = Sink()
        sink._succeed(held, outcome)
        made.append(sink._stores[0].record)
    assert made[0] == made[1]
    assert made[0].to_json() == made[1].to_json()  # the same signed text
    assert made[0].history == (
        Attempt(number=3, state=SUCCESS, started_at=8.0, finished_at=9.0, worker="w2"),
    )
