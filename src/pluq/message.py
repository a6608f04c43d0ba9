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
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from pluq.backend import TaskRecord
from pluq.broker import Outgoing
from pluq.errors import MessageError, SignatureError
from pluq.serializers import Serializer

__all__ = [
    "FORMAT_VERSION",
    "Header",
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
        return replace(self, **changes)

    def canonical(self) -> bytes:
        data = asdict(self)
        data.pop("sig")
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


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
_REQUIRED: Final = ("id", "task", "queue", "serializer")


def _mac(key: bytes, header: Header, body: bytes) -> str:
    digest = hmac.new(key, header.canonical(), hashlib.sha256)
    digest.update(_SEPARATOR)
    digest.update(body)
    return digest.hexdigest()


def sign(header: Header, body: bytes, keys: Sequence[bytes]) -> Header:
    """The header with its signature set by the first key (unchanged when there is none)."""
    if not keys:
        return header.evolve(sig=None) if header.sig else header
    return header.evolve(sig=_mac(keys[0], header, body))


def verify(header: Header, body: bytes, keys: Sequence[bytes]) -> None:
    """Check the signature against every accepted key; SignatureError if none matches."""
    if not keys:
        return
    if not header.sig:
        raise SignatureError(
            f"message {header.id} is not signed, and this worker requires signed messages; "
            f"give the producer the same secret (App(secret=...) or PLUQ_SECRET)"
        )
    for key in keys:
        if hmac.compare_digest(header.sig, _mac(key, header, body)):
            return
    raise SignatureError(
        f"message {header.id} has a signature that matches none of this worker's secrets: "
        f"it was changed after signing, or signed with another secret"
    )


def encode(header: Header, body: bytes, keys: Sequence[bytes] = ()) -> bytes:
    """The wire form of a message, signed when keys are given."""
    header = sign(header, body, keys)
    head = json.dumps(asdict(header), separators=(",", ":"), ensure_ascii=False).encode()
    return head + _SEPARATOR + body


def decode(data: bytes) -> tuple[Header, bytes]:
    """Split wire bytes into header and body, checking the header's shape (not the body).

    Raises MessageError, naming what is wrong, for anything that is not a pluq message.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError(f"a message must be bytes, not {type(data).__name__}")
    data = bytes(data)
    end = data.find(_SEPARATOR, 0, _MAX_HEADER)
    if end < 0:
        raise MessageError(
            "not a pluq message: no header line (the bytes are truncated or foreign)"
        )
    try:
        raw = json.loads(data[:end])
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
    unknown = set(raw) - set(_FIELD_TYPES)
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
    """Build a signed message for one task call: the one way every producer builds them.

    `fn` is the pickled Task for a task that travels by value. `link` holds the remaining
    steps of a chain (portable signatures, see `pluq.canvas`); the body carries them, and
    the header lists their ids so a worker can fail them without loading the body.
    """
    payload: dict[str, Any] = {"args": list(args), "kwargs": dict(kwargs)}
    if fn is not None:
        payload["fn"] = fn
    header_meta = dict(meta or {})
    if link:
        payload["link"] = [dict(step) for step in link]
        header_meta["chain"] = [step["id"] for step in link]
    body = serializer.dumps(payload)
    header = Header(
        id=task_id or uuid.uuid4().hex,
        task=task,
        queue=queue,
        serializer=serializer.name,
        max_retries=max_retries,
        eta=not_before,
        expires=expires,
        created=now,
        by_value=fn is not None,
        meta=header_meta,
    )
    return Outgoing(queue, encode(header, body, keys), header.id, not_before)
