"""The envelope: a readable header, a body only children load, and signatures."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pluq
from pluq import message as msg
from pluq.backend import TaskRecord

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
