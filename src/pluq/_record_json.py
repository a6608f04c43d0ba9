"""The signed JSON of a first-attempt record, from a template: a worker's hot path.

A worker signs and stores a record for every task it runs, and most of them are alike: a
first attempt that ended without an error (a success), of one task, on one queue and one
worker, with no meta. Their JSON differs only in the id, the result and its repr, and the
timestamps. `FirstAttemptJson` encodes one such record with placeholders in those places,
keeps the text between them, and writes every later record of that kind by joining that
text with its own values: the encoder's very bytes (the tests hold the two to each other),
at about a third of its cost, as `message.Packer` does for a message's header.

Any other record (retries in its history, an error, meta, a value of an unusual type)
gets None here, and the encoder as before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii as _escape
from typing import Any, Final

__all__ = ["FirstAttemptJson"]

_MAX_TEMPLATES: Final = 256
_MAX_FLOAT: Final = sys.float_info.max
# The values that differ between records of one template, in the order the encoder writes
# them (the fields' declaration order, the attempt's inside "history").
_VARIABLE: Final = (
    "id",
    "result",
    "result_repr",
    "attempt_started",
    "attempt_finished",
    "created_at",
    "started_at",
    "finished_at",
)


class FirstAttemptJson:
    """`encode(data)` for the usual record, where `data` is its `to_dict()` form without
    "signature", from a cached template; None for a record of another kind."""

    def __init__(self, encode: Callable[[Any], str]) -> None:
        self._encode = encode  # ensure_ascii, not sorted: TaskRecord's signed encoding
        self._templates: dict[tuple[Any, ...], tuple[str, ...]] = {}

    def __call__(self, fields: Mapping[str, Any]) -> str | None:
        """The text for the record given as its fields (`TaskRecord._fields()` form: the
        history as Attempt objects; "signature" is left out), or None."""
        history = fields["history"]
        if len(history) != 1 or fields["meta"]:
            return None
        attempt = history[0]
        started, finished = fields["started_at"], fields["finished_at"]
        if (
            attempt.started_at is not started  # the same objects: written once each
            or attempt.finished_at is not finished
            or fields["exc_type"] is not None
            or fields["exc_message"] is not None
            or fields["traceback"] is not None
            or attempt.exc_type is not None
            or attempt.exc_message is not None
            or attempt.traceback is not None
        ):
            return None
        constant = (
            fields["state"],
            fields["task"],
            fields["queue"],
            fields["result_encoding"],
            fields["retries"],
            fields["worker"],
            attempt.number,
            attempt.state,
            attempt.worker,
        )
        # With the types: 1, 1.0 and True are equal keys, and different JSON.
        key = (constant, tuple(map(type, constant)))
        try:
            chunks = self._templates.get(key)
            if chunks is None:
                chunks = self._template(fields, key)
                if chunks is None:
                    return None
            result = fields["result"]
            try:
                result_json = _scalar(result)
            except TypeError:  # a list or a dict, most likely
                result_json = self._encode(result)
            started_json, finished_json = _scalar(started), _scalar(finished)
            c0, c1, c2, c3, c4, c5, c6, c7, c8 = chunks
            return "".join((
                c0, _string(fields["id"]), c1, result_json, c2, _string(fields["result_repr"]),
                c3, started_json, c4, finished_json, c5, _scalar(fields["created_at"]),
                c6, started_json, c7, finished_json, c8,
            ))  # fmt: skip
        except (TypeError, ValueError):  # not JSON, or not the usual types: the encoder says
            return None

    def _template(self, fields: Mapping[str, Any], key: tuple[Any, ...]) -> tuple[str, ...] | None:
        """The constant text around the `_VARIABLE` values of records like `fields`,
        cached under `key`; None if the placeholders do not come out as expected."""
        marks = {name: f"\x00{name}:{os.urandom(16).hex()}" for name in _VARIABLE}
        attempt = fields["history"][0].to_dict()
        attempt.update(started_at=marks["attempt_started"], finished_at=marks["attempt_finished"])
        data = dict(fields, history=[attempt])
        data.pop("signature", None)
        for name in ("id", "result", "result_repr", "created_at", "started_at", "finished_at"):
            data[name] = marks[name]
        text = self._encode(data)
        chunks = []
        for name in _VARIABLE:
            mark = self._encode(marks[name])  # as a JSON string, quotes included
            if text.count(mark) != 1:  # missing, repeated, or out of order
                return None
            before, _, text = text.partition(mark)
            chunks.append(before)
        chunks.append(text)
        if len(self._templates) >= _MAX_TEMPLATES:
            self._templates.clear()
        self._templates[key] = template = tuple(chunks)
        return template


def _scalar(value: Any) -> str:
    """The JSON of a str, float, int, bool or None, as the encoder writes it; TypeError
    for any other type, ValueError for a float JSON has no number for."""
    kind = type(value)
    if kind is float:
        if -_MAX_FLOAT <= value <= _MAX_FLOAT:  # not inf, not nan
            return float.__repr__(value)
        raise ValueError("not a finite float")
    if kind is str:
        return _escape(value)
    if kind is int:
        return int.__repr__(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    raise TypeError(f"not a JSON scalar: {kind.__name__}")


def _string(value: Any) -> str:
    """The JSON of a str or None; TypeError for anything else."""
    if type(value) is str:
        return _escape(value)
    if value is None:
        return "null"
    raise TypeError(f"not a str: {type(value).__name__}")
