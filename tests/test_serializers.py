"""Serializers: cloudpickle for any value, json for JSON values; plain data takes a shortcut."""

from __future__ import annotations

import enum
import json
import pickle
import sys

import cloudpickle
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pluq
from pluq._outcome import _json_exact, _same_shape, decode_value, encode_value
from pluq.serializers import _PLAIN_DEPTH, _PLAIN_ITEMS, _plain, get_serializer

CLOUDPICKLE = get_serializer("cloudpickle")

plain_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers() | st.floats(allow_nan=False), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(plain_values)
def test_plain_data_pickles_to_the_bytes_cloudpickle_writes(value: object) -> None:
    payload = {"args": [value], "kwargs": {"k": value}}
    data = CLOUDPICKLE.dumps(payload)
    assert data == cloudpickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    assert repr(CLOUDPICKLE.loads(data)) == repr(payload)  # repr: NaN is not equal to itself


class Colour(enum.IntEnum):
    RED = 1


class Text(str):
    pass


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        Colour.RED,  # an int subclass: its class must travel, pickled by reference or value
        Text("x"),
        {Text("key"): 1},
        [1, {2, 3}],
        {"f": lambda: 1},
        nested(_PLAIN_DEPTH + 1),
        list(range(_PLAIN_ITEMS + 1)),
        [[0] * 100, [0] * 100, [0] * 100],
    ],
    ids=[
        "int-subclass", "str-subclass", "subclass-key", "set", "function", "too-deep",
        "too-many", "too-many-in-all",
    ],
)  # fmt: skip
def test_anything_but_small_plain_data_goes_through_cloudpickle(value: object) -> None:
    assert not _plain(value)
    assert CLOUDPICKLE.dumps(value) == cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def test_plain_data_within_the_bounds_takes_the_shortcut() -> None:
    assert _plain({"args": [nested(_PLAIN_DEPTH - 2)], "kwargs": {}})
    assert _plain({"args": list(range(_PLAIN_ITEMS - 2)), "kwargs": {}})
    assert _plain(("a", b"b", 1.5, None, True, {1: [2]}))


def test_a_closure_travels_by_value_and_runs_after_loading() -> None:
    factor = 3

    def triple(x: int) -> int:
        return x * factor

    loaded = CLOUDPICKLE.loads(CLOUDPICKLE.dumps({"args": [2], "fn": triple}))
    assert loaded["fn"](loaded["args"][0]) == 6


def test_unpicklable_values_raise_serialization_error() -> None:
    with pytest.raises(pluq.SerializationError, match="cannot pickle"):
        CLOUDPICKLE.dumps({"args": [(x for x in ())]})


def test_json_writes_compact_utf8_and_names_what_it_cannot_encode() -> None:
    json_serializer = get_serializer("json")
    assert json_serializer.dumps({"args": ["é", 1.5], "kwargs": {}}) == (
        '{"args":["é",1.5],"kwargs":{}}'.encode()
    )
    with pytest.raises(pluq.SerializationError, match="cannot encode"):
        json_serializer.dumps({"args": [object()]})


def _round_trip_exact(value: object) -> bool:
    """What `_json_exact` answered for every value before it had a shortcut for atoms."""
    try:
        return bool(json.loads(json.dumps(value, allow_nan=False)) == value) and _same_shape(value)
    except (TypeError, ValueError, RecursionError):
        return False


@settings(max_examples=300, deadline=None)
@given(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**65)
    | st.floats()
    | st.text()
    | plain_values
)
def test_a_return_value_is_stored_as_json_exactly_when_a_round_trip_keeps_it(
    value: object,
) -> None:
    assert _json_exact(value) == _round_trip_exact(value)


def test_an_int_too_long_for_str_is_pickled_not_stored_as_json() -> None:
    huge = 10 ** (sys.get_int_max_str_digits() + 1)
    result, encoding, _ = encode_value(huge, CLOUDPICKLE)
    assert encoding == "cloudpickle"
    assert decode_value(result, encoding) == huge
    assert encode_value(-(2**63), CLOUDPICKLE)[1] == "json"
    assert encode_value(2**63, CLOUDPICKLE)[1] == "json"  # the round trip keeps it too
