"""pluq._json: the worker's JSON writes and reads exactly what the json module does."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from pluq._json import compact_encoder, loads

VALUES: list[Any] = [
    {"id": "t1", "n": 1, "f": 2.5, "none": None, "yes": True, "list": [1, [2, {}]]},
    {"zeta": 1, "alpha": {"d": 1, "c": 2}},  # an order to keep, or to sort
    {"text": 'café \u2603 "quoted" \\ \n \x00'},
    {2.5: "a float key", 1: "an int key"},
    [1e300, -0.0, 1e-7, 12345678901234567890],
    "a bare string",
    3,
    [],
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("sort_keys", [True, False])
def test_the_encoder_writes_what_json_dumps_writes(
    value: Any, ensure_ascii: bool, sort_keys: bool
) -> None:
    encode = compact_encoder(ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    expected = json.dumps(
        value, separators=(",", ":"), ensure_ascii=ensure_ascii, sort_keys=sort_keys
    )
    assert encode(value) == expected


def test_the_encoder_refuses_what_json_refuses() -> None:
    encode = compact_encoder()
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()})
    with pytest.raises(TypeError, match="keys must be"):
        encode({(1, 2): "a tuple key"})
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="nested too deeply, or holds itself"):
        encode({"loop": loop})
    assert encode({"after": "a refusal"}) == '{"after":"a refusal"}'  # nothing left behind


@pytest.mark.parametrize(
    "text",
    ['{"a":1,"b":[true,null,2.5]}', '"x"', "0", "[]", "NaN", ' {"a": 1}\n', '{"a":1,"a":2}'],
)
def test_loads_reads_what_json_loads_reads(text: str) -> None:
    got, expected = loads(text), json.loads(text)
    if isinstance(expected, float) and math.isnan(expected):
        assert math.isnan(got)
    else:
        assert got == expected


@pytest.mark.parametrize("text", ["", "{", '{"a":1}x', '{"a":1} {}', "nope", '{"a":"\x01"}'])
def test_loads_refuses_what_json_loads_refuses(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        loads(text)
