"""The envelope: a readable header, a body only children load, and signatures."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pluq
from pluq import message as msg
from pluq.backend import Attempt, TaskRecord
from pluq.errors import SignatureError
from pluq.serializers import get_serializer

KEYS = (b"k1",)


def header(**changes: object) -> msg.Header:
    base = msg.Header(id="t1", task="mod.add", queue="default", serializer="json")
    return base.evolve(**changes)


def test_the_header_is_one_json_line_readable_without_the_body() -> None:
    data = msg.encode(header(retries=2, eta=5.0), b"\x80binary body")
    first_line = data.split(b"\n", 1)[0]
    assert json.loads(first_line)["task"] == "mod.add"
    decoded, body = msg.decode(data)
    assert decoded.retries == 2 and decoded.eta == 5.0
    assert body == b"\x80binary body"


def test_a_signed_message_verifies_with_any_accepted_key() -> None:
    data = msg.encode(header(), b"body", (b"new", b"old"))
    decoded, body = msg.decode(data)
    msg.verify(decoded, body, (b"new",))
    msg.verify(decoded, body, (b"other", b"new"))  # rotation: several keys accepted
    with pytest.raises(pluq.SignatureError):
        msg.verify(decoded, body, (b"old",))


@pytest.mark.parametrize(
    "field,value", [("task", "mod.evil"), ("eta", 1.0), ("retries", 0), ("queue", "q")]
)
def test_a_tampered_header_field_fails_verification(field: str, value: object) -> None:
    decoded, body = msg.decode(msg.encode(header(retries=1), b"body", KEYS))
    with pytest.raises(pluq.SignatureError):
        msg.verify(decoded.evolve(**{field: value}), body, KEYS)


def test_a_tampered_body_fails_verification() -> None:
    decoded, _ = msg.decode(msg.encode(header(), b"body", KEYS))
    with pytest.raises(pluq.SignatureError):
        msg.verify(decoded, b"bodY", KEYS)


def test_an_unsigned_message_fails_where_a_secret_is_required() -> None:
    decoded, body = msg.decode(msg.encode(header(), b"body"))
    msg.verify(decoded, body, ())
    with pytest.raises(pluq.SignatureError, match="not signed"):
        msg.verify(decoded, body, KEYS)


@pytest.mark.parametrize(
    "data,problem",
    [
        (b"", "no header line"),
        (b"not json\nbody", "not JSON"),
        (b"[1]\nbody", "not a JSON object"),
        (b'{"id":"x"}\n', "format version"),
        (b'{"v":1,"id":"x"}\n', "lacks"),
        (b'{"v":99,"id":"x","task":"t","queue":"q","serializer":"json"}\n', "newer pluq"),
        (
            b'{"v":1,"id":"x","task":"t","queue":"q","serializer":"json","retries":"2"}\n',
            "bad value",
        ),
        (
            b'{"v":1,"id":"x","task":"t","queue":"q","serializer":"json","retries":true}\n',
            "bad value",
        ),
        (b'{"v":1,"id":"x","task":"t","queue":"q","serializer":"json","x":1}\n', "does not know"),
    ],
)
def test_malformed_bytes_raise_message_error_naming_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(pluq.MessageError, match=problem):
        msg.decode(data)


def test_a_shape_that_passed_once_is_still_checked_for_its_version() -> None:
    # decode remembers the key order and value types of headers that passed its checks;
    # the version's value is not part of that, and is checked every time.
    good = b'{"v":1,"id":"x","task":"t","queue":"q","serializer":"json","retries":2}\n'
    assert msg.decode(good)[0].retries == 2
    assert msg.decode(good)[0].retries == 2  # the remembered shape
    with pytest.raises(pluq.MessageError, match="newer pluq"):
        msg.decode(good.replace(b'"v":1', b'"v":2'))
    # The same keys with a value of another type is another shape: checked in full.
    with pytest.raises(pluq.MessageError, match="'retries' has a bad value"):
        msg.decode(good.replace(b'"retries":2', b'"retries":2.5'))
    # A newer version is named before fields this pluq does not know (it may add some).
    newer = b'{"v":2,"id":"x","task":"t","queue":"q","serializer":"json","later":1}\n'
    with pytest.raises(pluq.MessageError, match="newer pluq"):
        msg.decode(newer)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzzed_bytes_decode_or_raise_message_error_only(data: bytes) -> None:
    try:
        msg.decode(data)
    except pluq.MessageError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "task", "queue", "serializer", "retries", "eta", "meta"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.lists(st.integers())
        ),
    ),
    st.binary(max_size=20),
)
def test_fuzzed_headers_decode_or_raise_message_error_only(
    fields: dict[str, object], body: bytes
) -> None:
    data = json.dumps(fields).encode() + b"\n" + body
    try:
        msg.decode(data)
    except pluq.MessageError:
        pass


def test_records_are_signed_and_verified() -> None:
    record = msg.sign_record(
        TaskRecord(id="t", state="SUCCESS", result=5, result_encoding="json"), KEYS
    )
    msg.verify_record(record, KEYS)
    with pytest.raises(pluq.SignatureError):
        msg.verify_record(record.evolve(result=6), KEYS)
    with pytest.raises(pluq.SignatureError):
        msg.verify_record(record.evolve(signature=None), KEYS)


def test_a_record_survives_its_json_form() -> None:
    record = TaskRecord(id="t", state="RETRY", retries=2, meta={"a": [1]})
    assert TaskRecord.from_json(record.to_json()) == record


# -- the bytes are stable: messages and records stored by an earlier pluq must still verify


def pinned_header() -> msg.Header:
    return msg.Header(
        id="5f0c9e1b2a3d4c5e6f708192a3b4c5d6",
        task="tutorial.add",
        queue="default",
        serializer="cloudpickle",
        retries=1,
        max_retries=3,
        eta=1700000000.5,
        created=1699999999.25,
        seen=2,
        lost=1,
        meta={"zeta": {"y": 1, "x": "café"}, "chain": ["b", "a"]},
    )


# Written by pluq before the producer path was rewritten (dataclasses.asdict + json.dumps).
PINNED_CANONICAL = (
    b'{"by_value":false,"created":1699999999.25,"eta":1700000000.5,"expires":null,'
    b'"id":"5f0c9e1b2a3d4c5e6f708192a3b4c5d6","lost":1,"max_retries":3,'
    b'"meta":{"chain":["b","a"],"zeta":{"x":"caf\\u00e9","y":1}},"queue":"default",'
    b'"retries":1,"seen":2,"serializer":"cloudpickle","task":"tutorial.add","v":1}'
)
PINNED_SIG = "4e1c63ca6c229d5665fda14e2629f50b6cd5b5e8e948a90ca77ca37d40612089"
# The header line as earlier versions wrote it: declaration order, not ASCII-escaped.
PINNED_WIRE_HEAD = (
    b'{"id":"5f0c9e1b2a3d4c5e6f708192a3b4c5d6","task":"tutorial.add","queue":"default",'
    b'"serializer":"cloudpickle","retries":1,"max_retries":3,"eta":1700000000.5,'
    b'"expires":null,"created":1699999999.25,"by_value":false,"seen":2,"lost":1,'
    b'"meta":{"zeta":{"y":1,"x":"caf\xc3\xa9"},"chain":["b","a"]},"sig":%s,"v":1}'
)


def test_the_canonical_header_bytes_are_those_of_earlier_versions() -> None:
    assert pinned_header().canonical() == PINNED_CANONICAL


def test_the_signature_is_that_of_earlier_versions_and_the_line_is_the_canonical_header() -> None:
    body = b"\x80body\n"
    signed = msg.encode(pinned_header(), body, (b"k1", b"k0"))
    assert signed == PINNED_CANONICAL[:-1] + f',"sig":"{PINNED_SIG}"}}'.encode() + b"\n" + body
    assert msg.encode(pinned_header(), body) == PINNED_CANONICAL[:-1] + b',"sig":null}\n' + body
    assert msg.sign(pinned_header(), body, (b"k1",)).sig == PINNED_SIG
    decoded, rest = msg.decode(signed)
    msg.verify(decoded, rest, (b"k0", b"k1"))
    assert decoded == pinned_header().evolve(sig=PINNED_SIG)


def test_messages_written_by_earlier_versions_still_read_and_verify() -> None:
    body = b"\x80body\n"
    old = PINNED_WIRE_HEAD % f'"{PINNED_SIG}"'.encode() + b"\n" + body
    decoded, rest = msg.decode(old)
    msg.verify(decoded, rest, (b"k0", b"k1"))
    assert (decoded, rest) == (pinned_header().evolve(sig=PINNED_SIG), body)
    unsigned, _ = msg.decode(PINNED_WIRE_HEAD % b"null" + b"\n" + body)
    assert unsigned == pinned_header()


def pinned_record() -> TaskRecord:
    return TaskRecord(
        id="t1",
        state="FAILURE",
        task="tutorial.add",
        queue="default",
        result="b64==",
        result_encoding="cloudpickle",
        result_repr="ValueError('né')",
        exc_type="ValueError",
        exc_message="né",
        traceback="Traceback...",
        retries=1,
        history=(
            Attempt(
                number=1, state="RETRY", exc_type="KeyError", started_at=1.5, finished_at=2.5,
                worker="w@h",
            ),
            Attempt(
                number=2, state="FAILURE", exc_type="ValueError", exc_message="né",
                started_at=3.0, finished_at=4.0, worker="w@h",
            ),
        ),
        worker="w@h",
        created_at=1.0,
        started_at=3.0,
        finished_at=4.0,
        meta={"b": [1, 2], "a": {"d": None, "c": True}},
    )  # fmt: skip


def test_a_record_signs_and_stores_its_fields_in_declaration_order() -> None:
    record = pinned_record()
    payload = record.signing_payload()
    # Declaration order, ASCII; a meta value's own keys keep their order.
    assert payload == (
        b'{"id":"t1","state":"FAILURE","task":"tutorial.add","queue":"default","result":"b64==",'
        b'"result_encoding":"cloudpickle","result_repr":"ValueError(\'n\\u00e9\')",'
        b'"exc_type":"ValueError","exc_message":"n\\u00e9","traceback":"Traceback...",'
        b'"retries":1,"history":[{"number":1,"state":"RETRY","exc_type":"KeyError",'
        b'"exc_message":null,"traceback":null,"started_at":1.5,"finished_at":2.5,'
        b'"worker":"w@h"},{"number":2,"state":"FAILURE","exc_type":"ValueError",'
        b'"exc_message":"n\\u00e9","traceback":null,"started_at":3.0,"finished_at":4.0,'
        b'"worker":"w@h"}],"worker":"w@h","created_at":1.0,"started_at":3.0,"finished_at":4.0,'
        b'"meta":{"b":[1,2],"a":{"d":null,"c":true}}}'
    )
    signed = msg.sign_record(record, KEYS)
    sig = hmac.new(KEYS[0], payload, hashlib.sha256).hexdigest()
    assert signed == record.evolve(signature=sig)
    # Stored as it was signed: the signed bytes, then the signature and the extra fields.
    assert signed.to_json({"expires_at": 99.5}) == (
        payload[:-1].decode() + f',"signature":"{sig}","expires_at":99.5}}'
    )
    msg.verify_record(TaskRecord.from_json(signed.to_json({"expires_at": 99.5})), KEYS)


def test_a_record_an_earlier_version_signed_with_sorted_keys_still_verifies() -> None:
    # Earlier versions signed the record's JSON with sorted keys, and stored it in
    # declaration order (with non-ASCII text as is).
    sig = "459266076d5ab915e7ac17a48bd1a6b98a9a179275e4cd36f20f80556136ea22"
    earlier = (
        '{"id":"t1","state":"FAILURE","task":"tutorial.add","queue":"default","result":"b64==",'
        '"result_encoding":"cloudpickle","result_repr":"ValueError(\'né\')",'
        '"exc_type":"ValueError","exc_message":"né","traceback":"Traceback...","retries":1,'
        '"history":[{"number":1,"state":"RETRY","exc_type":"KeyError","exc_message":null,'
        '"traceback":null,"started_at":1.5,"finished_at":2.5,"worker":"w@h"},{"number":2,'
        '"state":"FAILURE","exc_type":"ValueError","exc_message":"né","traceback":null,'
        '"started_at":3.0,"finished_at":4.0,"worker":"w@h"}],"worker":"w@h","created_at":1.0,'
        '"started_at":3.0,"finished_at":4.0,"meta":{"b":[1,2],"a":{"d":null,"c":true}},'
        f'"signature":"{sig}","expires_at":99.5}}'
    )
    record = TaskRecord.from_json(earlier)
    assert record == pinned_record().evolve(signature=sig)
    msg.verify_record(record, KEYS)
    with pytest.raises(SignatureError):
        msg.verify_record(record.evolve(retries=2), KEYS)


def test_evolving_a_record_or_header_changes_only_the_fields_given() -> None:
    record = pinned_record()
    assert record.evolve(state="SUCCESS", retries=4) == dataclasses.replace(
        record, state="SUCCESS", retries=4
    )
    header = pinned_header()
    assert header.evolve(retries=7, sig="s") == dataclasses.replace(header, retries=7, sig="s")
    with pytest.raises(TypeError):
        record.evolve(colour="red")
    with pytest.raises(TypeError):
        header.evolve(colour="red")


def test_a_record_dict_holds_every_field_and_the_history_as_dicts() -> None:
    record = pinned_record()
    data = record.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(TaskRecord)]
    assert data["history"] == [dataclasses.asdict(a) for a in record.history]
    assert data == {**dataclasses.asdict(record), "history": data["history"]}


# -- pack and Packer: two ways to the same bytes

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
pickled_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text() | st.integers(), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    now=st.floats() | st.integers(min_value=0, max_value=2**40),
    task_id=st.none() | st.text(),
    task=st.text(),
    queue=st.text(),
    keys=st.sampled_from([(), (b"k1",), (b"k2", b"k1")]),
    serializer=st.sampled_from(["cloudpickle", "json"]),
    max_retries=st.none() | st.integers(min_value=0, max_value=10),
    not_before=st.none() | st.floats(),
    expires=st.none() | st.floats(),
    meta=st.none() | st.dictionaries(st.text(), json_values, max_size=2),
)
def test_a_packer_builds_the_bytes_pack_builds(
    data: st.DataObject, now: float, task_id: str | None, task: str, queue: str,
    keys: tuple[bytes, ...], serializer: str, max_retries: int | None,
    not_before: float | None, expires: float | None, meta: dict[str, object] | None,
) -> None:  # fmt: skip
    values = json_values if serializer == "json" else pickled_values
    args = data.draw(st.lists(values, max_size=3))
    kwargs = data.draw(st.dictionaries(st.text(), values, max_size=2))
    fn = None if serializer == "json" else data.draw(st.none() | st.binary(max_size=10))
    options: dict[str, Any] = dict(
        task=task, queue=queue, serializer=get_serializer(serializer), keys=keys,
        max_retries=max_retries, not_before=not_before, expires=expires, fn=fn, meta=meta,
    )  # fmt: skip
    out = msg.Packer(**options).pack(args, kwargs, now, task_id)
    assert out.id == (task_id or out.id)
    assert out == msg.pack(args=args, kwargs=kwargs, now=now, task_id=out.id, **options)


@pytest.mark.parametrize("keys", [(), KEYS])
def test_a_packed_message_reads_back_and_encodes_to_the_same_bytes(
    keys: tuple[bytes, ...],
) -> None:
    out = msg.pack(
        task="mod.add", args=(1, "é"), kwargs={"k": [2]}, queue="q",
        serializer=get_serializer("cloudpickle"), keys=keys, now=1700000000.123,
        not_before=1700000005.0, expires=1700000060.0, max_retries=None, fn=b"fn",
        link=[{"id": "next", "task": "mod.mul"}], meta={"z": 1, "time_limit": 5.0},
    )  # fmt: skip
    header, body = msg.decode(out.message)
    msg.verify(header, body, keys)
    assert msg.encode(header, body, keys) == out.message
    assert header.meta == {"z": 1, "time_limit": 5.0, "chain": ["next"]}
    assert (header.by_value, header.max_retries, header.eta) == (True, None, 1700000005.0)
    assert get_serializer("cloudpickle").loads(body)["link"] == [{"id": "next", "task": "mod.mul"}]


def test_new_task_ids_are_random_uuid4_hex() -> None:
    ids = {msg.pack(task="t", args=(), kwargs={}, queue="q", serializer=get_serializer("json"),
                    keys=(), now=0.0).id for _ in range(200)}  # fmt: skip
    packer = msg.Packer(task="t", queue="q", serializer=get_serializer("json"), keys=())
    ids |= {packer.pack((), {}, 0.0).id for _ in range(200)}
    assert len(ids) == 400
    for task_id in ids:
        assert uuid.UUID(task_id).hex == task_id
        assert uuid.UUID(task_id).version == 4 and uuid.UUID(task_id).variant == uuid.RFC_4122


def test_a_header_over_the_limit_says_so() -> None:
    data = b'{"v":1,"meta":"' + b"x" * (1 << 20) + b'"}\n' + b"body"
    with pytest.raises(pluq.MessageError, match="longer than 1 MiB"):
        msg.decode(data)


@settings(max_examples=300, deadline=None)
@given(
    key=st.binary(min_size=0, max_size=200),  # shorter, as long as, longer than a block
    parts=st.lists(st.binary(max_size=300), max_size=4),
)
def test_the_mac_is_hmac_sha256_of_the_joined_parts(key: bytes, parts: list[bytes]) -> None:
    expected = hmac.new(key, b"".join(parts), hashlib.sha256).hexdigest()
    assert msg._mac(key, *parts) == expected
    assert msg._mac(key, *parts) == expected  # the cached pads are copied, not used up
