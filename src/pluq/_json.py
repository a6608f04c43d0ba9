"""JSON for the worker's hot paths, at the cost of the C codec alone.

`json.dumps(obj, separators=...)` builds an encoder for every call, `JSONEncoder.encode`
builds its C encoder for every call too, and `json.loads` runs a whitespace regex around
the parse. A worker encodes and parses a few JSON texts per task, so the encoders and the
scanner here are built once and called directly. What they write and accept is what `json`
writes and accepts; a text the scanner does not take whole goes to `json.loads`, which
parses it or raises its own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from json import encoder as _encoder
from json import scanner as _scanner
from typing import Any, Final

__all__ = ["compact_encoder", "loads"]


def compact_encoder(*, ensure_ascii: bool = True, sort_keys: bool = False) -> Callable[[Any], str]:
    """`json.JSONEncoder(separators=(",", ":"), ...).encode`, built once.

    Unlike `JSONEncoder`, it does not track the containers it is inside: a container that
    holds itself is refused as nested too deeply (ValueError), once the C encoder's
    recursion limit stops it, rather than at once.
    """
    python = json.JSONEncoder(separators=(",", ":"), ensure_ascii=ensure_ascii, sort_keys=sort_keys)
    make = getattr(_encoder, "c_make_encoder", None)  # not in the type stubs
    if make is None:  # an interpreter without json's C speedups
        return python.encode
    escape = _encoder.encode_basestring_ascii if ensure_ascii else _encoder.encode_basestring
    c_encode = make(None, python.default, escape, None, ":", ",", sort_keys, False, True)

    def encode(value: Any) -> str:
        try:
            chunks = c_encode(value, 0)
        except RecursionError:
            raise ValueError("the value is nested too deeply, or holds itself") from None
        return "".join(chunks)

    return encode


_scan: Final = _scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def loads(text: str) -> Any:
    """`json.loads(text)` for a str."""
    try:
        value, end = _scan(text, 0)
    except StopIteration:  # not a JSON value at its first character: json explains
        return json.loads(text)
    if end != len(text):  # whitespace or more after the value: json decides
        return json.loads(text)
    return value
