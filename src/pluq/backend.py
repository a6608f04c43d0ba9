"""The ResultBackend interface: one readable record per task id.

This file is the specification. Every transport implements `ResultBackend`, and the
contract kit in `transports/` has a test named after each guarantee stated here.

The record's JSON form (`TaskRecord.to_json`) is owned by the core, so every transport
stores the same readable document: a SQLite row, a Redis string, a `.json` file. A task's
return value sits in that document as plain JSON where it can, and as a base64 string of
the app serializer's bytes where it cannot; the backend never decodes it. Readers parse the
document: the order of its keys is not part of the form.
"""

from __future__ import annotations

import abc
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Final, Self

from pluq._frozen import maker
from pluq._json import compact_encoder
from pluq._record_json import FirstAttemptJson
from pluq.broker import Capabilities, Clock
from pluq.errors import SerializationError

__all__ = [
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RETRY",
    "REVOKED",
    "STARTED",
    "STATES",
    "SUCCESS",
    "Attempt",
    "ResultBackend",
    "TaskRecord",
]

PENDING: Final = "PENDING"
STARTED: Final = "STARTED"
RETRY: Final = "RETRY"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"
REVOKED: Final = "REVOKED"
STATES: Final = (PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED)
READY_STATES: Final = frozenset({SUCCESS, FAILURE, REVOKED})
"""States after which a task never changes again."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """One execution of a task (or one delivery that was lost), as the history keeps it."""

    number: int
    """The broker's delivery number of this attempt (`Delivery.attempt`)."""
    state: str
    """How the attempt ended: SUCCESS, RETRY, FAILURE, REVOKED, or LOST (its worker died
    without reporting: killed, or its lease expired)."""
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict, in declaration order."""
        return {
            "number": self.number,
            "state": self.state,
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "traceback": self.traceback,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "worker": self.worker,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(**{k: data[k] for k in _ATTEMPT_FIELDS if k in data})


_ATTEMPT_FIELDS = tuple(Attempt.__dataclass_fields__)


class _StoredText:
    """TaskRecord's one slot outside its dataclass fields: the stored JSON that signing
    made (see `TaskRecord._signed`), when it did.

    A base class because a `slots=True` dataclass has a slot for each field and no other:
    a slot here is not an init argument, not compared, not in the repr, not pickled, and
    not carried over by `evolve`. A cache of the encoded fields must be none of those.
    """

    __slots__ = ("_stored",)
    _stored: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskRecord(_StoredText):
    """Everything known about one task: state, outcome, retries and attempt history."""

    id: str
    state: str = PENDING
    task: str | None = None
    queue: str | None = None
    result: Any = None
    """The return value (SUCCESS) or the exception (FAILURE), encoded as `result_encoding`
    says: "json" means `result` is the value itself; any other name means `result` is a
    base64 string of that serializer's bytes. None when there is no result."""
    result_encoding: str | None = None
    result_repr: str | None = None
    """A short `repr` of the value, for people and tools that cannot decode it."""
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    retries: int = 0
    history: tuple[Attempt, ...] = ()
    worker: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra fields for workflows and the scheduler (JSON values)."""
    signature: str | None = None
    """HMAC of `signing_payload()`, when the app has a secret."""

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values, in declaration order.

        `history` becomes a list of dicts; `result` and `meta` are the record's own
        objects, not copies.
        """
        data = self._fields()
        data["history"] = [attempt.to_dict() for attempt in self.history]
        return data

    def _fields(self) -> dict[str, Any]:
        # Written out: dataclasses.asdict deep-copies every value, and this runs for every
        # record a worker signs and stores.
        return {
            "id": self.id,
            "state": self.state,
            "task": self.task,
            "queue": self.queue,
            "result": self.result,
            "result_encoding": self.result_encoding,
            "result_repr": self.result_repr,
            "exc_type": self.exc_type,
            "exc_message": self.exc_message,
            "traceback": self.traceback,
            "retries": self.retries,
            "history": self.history,
            "worker": self.worker,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "meta": self.meta,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskRecord:
        values = {k: data[k] for k in _RECORD_FIELDS if k in data}
        values["history"] = tuple(Attempt.from_dict(a) for a in data.get("history") or ())
        values["meta"] = dict(data.get("meta") or {})
        return cls(**values)

    def to_json(self, extra: Mapping[str, Any] | None = None) -> str:
        """The stored JSON form, with a transport's own `extra` fields (e.g. an expiry).

        A record signed by `msg.sign_record` has its text ready-made (the bytes it signed,
        ASCII, plus its signature): a worker encodes each record it stores once. Any other
        record is encoded here. Either way the fields come in declaration order, and a
        result's or meta value's own keys in the order they have.

        Raises SerializationError when a field (a result, a meta value) is not JSON.
        """
        stored: str | None = getattr(self, "_stored", None)
        if stored is None:
            data = self.to_dict()
            if extra:
                data.update(extra)
            return _encode_record(_stored_json, data, self.id)
        if not extra:
            return stored
        # Extra keys never collide with record fields: add them before the final "}".
        return f"{stored[:-1]},{self._members(extra)}}}"

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskRecord:
        return cls.from_dict(json.loads(text))

    def signing_payload(self) -> bytes:
        """The canonical bytes a signature covers: the whole record but the signature.

        Raises SerializationError when a field is not JSON, as `to_json` does.
        """
        return self._signing_text().encode()

    def evolve(self, **changes: Any) -> TaskRecord:
        """A new record with `changes` applied; it is encoded anew when stored (the stored
        text that signing made is not carried over)."""
        return TaskRecord(**{**self._fields(), **changes})

    @staticmethod
    def _signed(fields: dict[str, Any], sign: Callable[[bytes], str]) -> TaskRecord:
        """The record of `fields` (a value for every field, as `_fields()` or
        `record_fields` gives them; "signature" is replaced) with the signature `sign`
        gives for its `signing_payload()`, and its stored JSON made from those same bytes
        (`msg.sign_record` calls this).

        Signing encodes the whole record already (ASCII): the stored text is that encoding
        with the signature added as its last key, so that a record is not encoded a second
        time to be stored.

        Raises SerializationError when a field (a result, a meta value) is not JSON, and
        TypeError for a key that is not a field.
        """
        if not _FIELD_SET.issuperset(fields):  # as TaskRecord(**fields) would refuse it
            raise TypeError(f"TaskRecord has no field {sorted(fields.keys() - _FIELD_SET)}")
        # As `_signing_text` encodes it: `to_dict`'s form, in declaration order.
        text = _first_attempt_json(fields)  # the usual record, from a template
        if text is None:
            data = dict(fields, history=[attempt.to_dict() for attempt in fields["history"]])
            del data["signature"]
            text = _encode_record(_signed_json, data, fields["id"])
        fields["signature"] = signature = sign(text.encode())
        record = _make_record(fields)
        # The text is a JSON object holding at least "id": cut its final "}".
        stored = f'{text[:-1]},"signature":{encode_basestring_ascii(signature)}}}'
        object.__setattr__(record, "_stored", stored)  # frozen: past the dataclass's guard
        return record

    def _earlier_signing_payload(self) -> bytes:
        """The bytes earlier pluq versions signed (sorted keys): their records still verify."""
        data = self.to_dict()
        del data["signature"]
        return _encode_record(_sorted_json, data, self.id).encode()

    def _signing_text(self) -> str:
        """`signing_payload()` as text (ASCII)."""
        data = self.to_dict()
        del data["signature"]
        return _encode_record(_signed_json, data, self.id)

    def _members(self, extra: Mapping[str, Any]) -> str:
        """`extra` as the members of a JSON object (no braces), as `_stored_json` writes
        them.

        What transports add is an expiry time, a float: written directly, as the encoder
        writes a finite float, at less than half the cost of a call of the encoder.
        """
        members = []
        for key, value in extra.items():
            if type(key) is str and type(value) is float and -_MAX_FLOAT <= value <= _MAX_FLOAT:
                members.append(f"{encode_basestring(key)}:{float.__repr__(value)}")
            else:
                members.append(_encode_record(_stored_json, {key: value}, self.id)[1:-1])
        return ",".join(members)


_RECORD_FIELDS = tuple(TaskRecord.__dataclass_fields__)
_FIELD_SET: Final = frozenset(_RECORD_FIELDS)
_make_record: Final = maker(TaskRecord)
_DEFAULT_FIELDS: Final = {
    name: None if f.default is MISSING else f.default
    for name, f in TaskRecord.__dataclass_fields__.items()
}  # "id" has no default, "history" and "meta" a factory: `record_fields` sets them
_stored_json: Final = compact_encoder(ensure_ascii=False)
# Not sorted: a task's result is a dict whose order its caller sees, and a JSON round trip
# keeps every dict's order, so re-encoding a parsed record gives back the bytes it signed.
_signed_json: Final = compact_encoder()
_first_attempt_json: Final = FirstAttemptJson(_signed_json)
_sorted_json: Final = compact_encoder(sort_keys=True)
"""How earlier pluq versions encoded what they signed: their records still verify."""
_MAX_FLOAT: Final = sys.float_info.max


def _encode_record(encode: Callable[[Any], str], data: dict[str, Any], id: str) -> str:
    try:
        return encode(data)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"the record of task {id!r} cannot be stored: it is not JSON ({exc}); encode "
            f"results and meta values as JSON before putting them"
        ) from exc


def record_fields(**values: Any) -> dict[str, Any]:
    """A TaskRecord's fields as `_fields()` gives them (every field, in declaration order),
    from `values` and the defaults; for building a record without a record to start from."""
    return {**_DEFAULT_FIELDS, "history": (), "meta": {}, **values}


class ResultBackend(abc.ABC):
    """One record per task id, readable without pluq, expiring after a set time.

    Guarantees, each a test of the same name in the contract kit:

    - put_then_get_roundtrips: `get` returns the record last `put`, field for field.
    - expiry_is_enforced: a record is gone (`get` returns None) once its `expires`
      seconds have passed on the backend's clock.
    - wait_returns_when_ready: `wait` returns the record as soon as a ready state
      (SUCCESS, FAILURE, REVOKED) is put, also when it is put from another process, and
      returns None after `timeout` otherwise.
    - incr_is_atomic: concurrent `incr` calls on one key from several processes never
      lose a count.
    """

    capabilities: Capabilities = Capabilities()
    clock: Clock = time.time

    @abc.abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The current record of `task_id`, or None if there is none (or it expired)."""

    def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord | None]:
        """Records for several ids, in order; transports override to batch."""
        return [self.get(task_id) for task_id in task_ids]

    @abc.abstractmethod
    def put(self, record: TaskRecord, *, expires: float) -> None:
        """Store `record` in place of any earlier one for its id; it expires `expires`
        seconds from now. When its state is ready, wake every `wait` on that id."""

    def put_many(self, records: Sequence[TaskRecord], *, expires: float) -> None:
        """`put` each record, in order; transports override it to store a batch in one
        round trip or transaction. On an error any subset may be stored (put again: a put
        is idempotent)."""
        for record in records:
            self.put(record, expires=expires)

    @abc.abstractmethod
    def forget(self, task_id: str) -> bool:
        """Delete the record; True if there was one."""

    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        """Block until the record is in a ready state, or `timeout` seconds pass (None:
        forever). Returns the ready record, or None on timeout.

        The default polls `get` with a capped backoff (1 ms growing to 50 ms); transports
        override it with a real notification where they have one.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            record = self.get(task_id)
            if record is not None and record.ready:
                return record
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    @abc.abstractmethod
    def incr(self, key: str, amount: int = 1, *, expires: float) -> int:
        """Atomically add `amount` to the counter `key` (created at 0) and return the new
        value. The counter expires `expires` seconds after its last change. Counters live
        apart from task records."""

    def purge_expired(self) -> int:
        """Delete expired records now; return how many. A no-op where the store expires
        keys by itself; other transports also purge as they go."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
