"""The envelope: a JSON header a supervisor can read, and a body only a child loads.

On the wire a message is one line of JSON, a newline, and the body bytes:

    {"v":1,"id":"5f0c…","task":"tutorial.add","queue":"default","retries":0,…,"sig":"…"}\\n<body>

The header carries everything the supervisor needs to route, check and account for a task
without deserializing anything: id, task name, queue, retries, max_retries, eta, expires,
serializer, and the HMAC signature. The body is the serializer's encoding of
`{"args": [...], "kwargs": {...}}`, plus `"fn"` (the function, pickled by value) for a
task defined in `__main__` or in a closure.

With a secret, the signature is HMAC-SHA256 over the canonical header (sorted keys,
without `sig`) and the body, so a changed task name, eta, retry count or argument is
caught before anything is loaded. Several secrets may be accepted at once (key rotation);
the first one signs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pluq.backend import TaskRecord
from pluq.broker import Outgoing
from pluq.errors import MessageError, SignatureError
from pluq.serializers import Serializer

__all__ = [
    "FORMAT_VERSION",
    "Header",
    "Packer",
    "decode",
    "encode",
    "pack",
    "sign",
    "sign_record",
    "verify",
    "verify_record",
]

FORMAT_VERSION: Final = 1
_SEPARATOR: Final = b"\n"
_MAX_HEADER: Final = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Header:
    id: str
    task: str
    queue: str
    serializer: str
    retries: int = 0
    max_retries: int | None = None
    eta: float | None = None
    expires: float | None = None
    created: float = 0.0
    by_value: bool = False
    seen: int = 0
    """The delivery attempt at which a worker last handed the message back on purpose; a
    later attempt minus one minus `seen` counts deliveries that were lost (a dead worker)."""
    lost: int = 0
    """Deliveries lost before `seen` (accumulated on each release)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Workflow links and other extensions, as JSON values."""
    sig: str | None = None
    v: int = FORMAT_VERSION

    def evolve(self, **changes: Any) -> Header:
        return Header(**{**self._fields(), **changes})

    def canonical(self) -> bytes:
        """The bytes a signature covers: the header as JSON with sorted keys, without `sig`."""
        data = self._fields()
        del data["sig"]
        return _CANONICAL_JSON.encode(data).encode()

    def _fields(self) -> dict[str, Any]:
        # Written out (not dataclasses.asdict, which deep-copies): the order is the wire
        # order, so a message's header line reads the same as in every earlier pluq.
        return {
            "id": self.id,
            "task": self.task,
            "queue": self.queue,
            "serializer": self.serializer,
            "retries": self.retries,
            "max_retries": self.max_retries,
            "eta": self.eta,
            "expires": self.expires,
            "created": self.created,
            "by_value": self.by_value,
            "seen": self.seen,
            "lost": self.lost,
            "meta": self.meta,
            "sig": self.sig,
            "v": self.v,
        }


# One encoder each, built once: json.dumps with options builds a new encoder per call.
_CANONICAL_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_WIRE_JSON: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


_FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "id": (str,),
    "task": (str,),
    "queue": (str,),
    "serializer": (str,),
    "retries": (int,),
    "max_retries": (int, type(None)),
    "eta": (int, float, type(None)),
    "expires": (int, float, type(None)),
    "created": (int, float),
    "by_value": (bool,),
    "seen": (int,),
    "lost": (int,),
    "meta": (dict,),
    "sig": (str, type(None)),
    "v": (int,),
}
_FIELD_NAMES: Final = frozenset(_FIELD_TYPES)
_REQUIRED: Final = ("id", "task", "queue", "serializer")


def _mac(key: bytes, canonical: bytes, body: bytes) -> str:
    digest = hmac.new(key, canonical, hashlib.sha256)
    digest.update(_SEPARATOR)
    digest.update(body)
    return digest.hexdigest()


def _canonical(fields: Mapping[str, Any]) -> bytes:
    """`Header.canonical()` of a header given as its `_fields()` dict."""
    return _CANONICAL_JSON.encode({k: v for k, v in fields.items() if k != "sig"}).encode()


def _wire(fields: dict[str, Any], body: bytes, keys: Sequence[bytes]) -> bytes:
    """The wire form of a header given as its `_fields()` dict (its `sig` is replaced)."""
    fields["sig"] = _mac(keys[0], _canonical(fields), body) if keys else None
    return _WIRE_JSON.encode(fields).encode() + _SEPARATOR + body


def sign(header: Header, body: bytes, keys: Sequence[bytes]) -> Header:
    """The header with its signature set by the first key (unchanged when there is none)."""
    if not keys:
        return header.evolve(sig=None) if header.sig else header
    return header.evolve(sig=_mac(keys[0], header.canonical(), body))


def verify(header: Header, body: bytes, keys: Sequence[bytes]) -> None:
    """Check the signature against every accepted key; SignatureError if none matches."""
    if not keys:
        return
    if not header.sig:
        raise SignatureError(
            f"message {header.id} is not signed, and this worker requires signed messages; "
            f"give the producer the same secret (App(secret=...) or PLUQ_SECRET)"
        )
    canonical = header.canonical()
    for key in keys:
        if hmac.compare_digest(header.sig, _mac(key, canonical, body)):
            return
    raise SignatureError(
        f"message {header.id} has a signature that matches none of this worker's secrets: "
        f"it was changed after signing, or signed with another secret"
    )


def encode(header: Header, body: bytes, keys: Sequence[bytes] = ()) -> bytes:
    """The wire form of a message, signed when keys are given."""
    return _wire(header._fields(), body, keys)


def decode(data: bytes) -> tuple[Header, bytes]:
    """Split wire bytes into header and body, checking the header's shape (not the body).

    Raises MessageError, naming what is wrong, for anything that is not a pluq message.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"a message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    end = data.find(_SEPARATOR, 0, _MAX_HEADER)
    if end < 0:
        if len(data) > _MAX_HEADER and data[:1] == b"{":
            raise MessageError(
                f"the message header is longer than {_MAX_HEADER >> 20} MiB (too much in "
                f"its meta?); keep large values in the arguments, which travel in the body"
            )
        raise MessageError(
            "not a pluq message: no header line (the bytes are truncated or foreign)"
        )
    try:
        raw = json.loads(data[:end].decode())  # the header line is UTF-8 by definition
    except (UnicodeDecodeError, ValueError) as exc:
        raise MessageError(f"not a pluq message: the header is not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise MessageError("not a pluq message: the header is not a JSON object")
    version = raw.get("v")
    if not isinstance(version, int) or isinstance(version, bool):
        raise MessageError("not a pluq message: the header has no format version")
    if version > FORMAT_VERSION:
        raise MessageError(
            f"message format v{version} was written by a newer pluq (this one reads "
            f"v{FORMAT_VERSION}); upgrade pluq on the workers"
        )
    missing = [name for name in _REQUIRED if name not in raw]
    if missing:
        raise MessageError(f"not a pluq message: the header lacks {', '.join(missing)}")
    unknown = raw.keys() - _FIELD_NAMES
    if unknown:
        # Unknown fields would fall outside what this version signs: refuse, don't ignore.
        raise MessageError(
            f"message header has fields this pluq does not know ({', '.join(sorted(unknown))}); "
            f"upgrade pluq on the workers"
        )
    for name, value in raw.items():
        types = _FIELD_TYPES[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise MessageError(f"not a pluq message: header field {name!r} has a bad value")
    return Header(**raw), data[end + 1 :]


def sign_record(record: TaskRecord, keys: Sequence[bytes]) -> TaskRecord:
    """The record with its HMAC set by the first key (unchanged without keys)."""
    if not keys:
        return record
    mac = hmac.new(keys[0], record.signing_payload(), hashlib.sha256).hexdigest()
    return record.evolve(signature=mac)


def verify_record(record: TaskRecord, keys: Sequence[bytes]) -> None:
    """SignatureError unless the record was signed by one of `keys` (no keys: no check)."""
    if not keys:
        return
    if record.signature:
        payload = record.signing_payload()
        for key in keys:
            expected = hmac.new(key, payload, hashlib.sha256).hexdigest()
            if hmac.compare_digest(record.signature, expected):
                return
    raise SignatureError(
        f"the result record of task {record.id} is unsigned or its signature does not "
        f"match: it was not written by a worker holding this app's secret; refusing to "
        f"load it"
    )


def pack(
    *,
    task: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    queue: str,
    serializer: Serializer,
    keys: Sequence[bytes],
    now: float,
    task_id: str | None = None,
    not_before: float | None = None,
    expires: float | None = None,
    max_retries: int | None = 3,
    fn: bytes | None = None,
    link: Sequence[Mapping[str, Any]] = (),
    meta: Mapping[str, Any] | None = None,
) -> Outgoing:
    """Build a signed message for one task call: the way every producer builds them (or
    `Packer`, which builds the same bytes for many calls of one task).

    `fn` is the pickled Task for a task that travels by value. `link` holds the remaining
    steps of a chain (portable signatures, see `pluq.canvas`); the body carries them, and
    the header lists their ids so a worker can fail them without loading the body.
    """
    payload: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
    if fn is not None:
        payload["fn"] = fn
    header_meta = dict(meta) if meta else {}
    if link:
        payload["link"] = [dict(step) for step in link]
        header_meta["chain"] = [step["id"] for step in link]
    body = serializer.dumps(payload)
    task_id = task_id or _new_id()
    fields = _new_header(
        task_id, task, queue, serializer.name, max_retries, not_before, expires, now,
        fn is not None, header_meta,
    )  # fmt: skip
    return Outgoing(queue, _wire(fields, body, keys), task_id, not_before)


class Packer:
    """Builds the messages of many calls of one task with the same options, fast.

    `packer.pack(args, kwargs, now)` gives the bytes `pack(...)` gives for the same call
    (tests pin it), at about half the cost: the header's JSON, canonical and wire, is
    encoded once here with placeholders, and each message only fills in its id, its
    creation time and its signature.
    """

    __slots__ = ("_canonical", "_dumps", "_fn", "_mac", "_not_before", "_queue", "_wire")

    def __init__(
        self,
        *,
        task: str,
        queue: str,
        serializer: Serializer,
        keys: Sequence[bytes],
        max_retries: int | None = 3,
        not_before: float | None = None,
        expires: float | None = None,
        fn: bytes | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self._queue = queue
        self._not_before = not_before
        self._dumps = serializer.dumps
        self._fn = fn
        # The signing key's HMAC state, keyed once: each message copies it.
        self._mac = hmac.new(keys[0], digestmod=hashlib.sha256) if keys else None
        for _ in range(3):
            # Placeholders no header field can contain by chance: each must come out of the
            # encoder exactly once, else new ones are drawn.
            marks = {name: f"\x00{name}:{os.urandom(16).hex()}" for name in _FILLED}
            fields = _new_header(
                marks["id"], task, queue, serializer.name, max_retries, not_before, expires,
                marks["created"], fn is not None, dict(meta) if meta else {},
            )  # fmt: skip
            fields["sig"] = marks["sig"]
            canonical = _split(_canonical(fields).decode(), marks, ("created", "id"))
            wire = _split(_WIRE_JSON.encode(fields), marks, ("id", "created", "sig"))
            if canonical is not None and wire is not None:
                break
        else:  # pragma: no cover - three draws of 128 random bits all colliding
            raise RuntimeError("could not build a message template")
        self._canonical = canonical
        self._wire = wire

    def pack(
        self, args: Sequence[Any], kwargs: Mapping[str, Any], now: float, task_id: str | None = None
    ) -> Outgoing:
        """The message of one call, created at `now`, under a new id unless `task_id` is
        given."""
        payload: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
        if self._fn is not None:
            payload["fn"] = self._fn
        body = self._dumps(payload)
        if not task_id:  # as in pack: "" is no id either
            task_id = _new_id()
            id_canonical = id_wire = b'"' + task_id.encode() + b'"'  # hex: nothing to escape
        else:
            id_canonical = _CANONICAL_JSON.encode(task_id).encode()
            id_wire = _WIRE_JSON.encode(task_id).encode()
        # What the JSON encoder writes for a finite float, without the encoder's overhead.
        if type(now) is float and _MIN_FLOAT <= now <= _MAX_FLOAT:
            created = float.__repr__(now).encode()
        else:
            created = _CANONICAL_JSON.encode(now).encode()
        c0, c1, c2 = self._canonical
        w0, w1, w2, w3 = self._wire
        if self._mac is None:
            sig = b"null"
        else:
            digest = self._mac.copy()
            digest.update(c0 + created + c1 + id_canonical + c2)
            digest.update(_SEPARATOR)
            digest.update(body)
            sig = b'"' + digest.hexdigest().encode() + b'"'
        message = b"".join((w0, id_wire, w1, created, w2, sig, w3, _SEPARATOR, body))
        return Outgoing(self._queue, message, task_id, self._not_before)


def _new_header(
    task_id: str,
    task: str,
    queue: str,
    serializer: str,
    max_retries: int | None,
    not_before: float | None,
    expires: float | None,
    created: float | str,
    by_value: bool,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """A new message's header as `Header._fields()` gives it, built directly: a Header
    object would only be taken apart again (tests pin that both give the same bytes)."""
    return {
        "id": task_id,
        "task": task,
        "queue": queue,
        "serializer": serializer,
        "retries": 0,
        "max_retries": max_retries,
        "eta": not_before,
        "expires": expires,
        "created": created,
        "by_value": by_value,
        "seen": 0,
        "lost": 0,
        "meta": meta,
        "sig": None,
        "v": FORMAT_VERSION,
    }


_FILLED: Final = ("id", "created", "sig")
_MAX_FLOAT: Final = sys.float_info.max
_MIN_FLOAT: Final = -sys.float_info.max


def _split(text: str, marks: Mapping[str, str], order: tuple[str, ...]) -> tuple[bytes, ...] | None:
    """`text` cut at the JSON form of each placeholder in `marks` (which must appear once
    each, in `order`), as bytes; None when they do not."""
    pieces = []
    rest = text
    for name in order:
        mark = _WIRE_JSON.encode(marks[name])  # ASCII: both encoders write it the same
        if text.count(mark) != 1:
            return None
        head, found, rest = rest.partition(mark)
        if not found:
            return None
        pieces.append(head.encode())
    pieces.append(rest.encode())
    return tuple(pieces)


_UUID4_CLEAR: Final = ~((0xF000 << 64) | (0xC000 << 48)) & ((1 << 128) - 1)
_UUID4_SET: Final = (0x4000 << 64) | (0x8000 << 48)


def _new_id() -> str:
    """A new task id: a random UUID version 4 as 32 hex digits, as `uuid.uuid4().hex`.

    Built from `os.urandom` with the version and variant bits set by hand: the same
    randomness and format as `uuid.uuid4().hex` at half the cost.
    """
    return f"{int.from_bytes(os.urandom(16), 'big') & _UUID4_CLEAR | _UUID4_SET:032x}"
