"""Each header and each signed record is encoded once: the bytes signed are the bytes sent
or stored, and the signature is checked over the bytes received."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import pickle
from typing import Any

import pytest

import pluq
from pluq import message as msg
from pluq.backend import Attempt, TaskRecord
from pluq.errors import SignatureError
from pluq.serializers import get_serializer

KEYS = (b"k1",)
BODY = b'{"args":[1,"\xc3\xa9"],"kwargs":{}}'


def record() -> TaskRecord:
    return TaskRecord(
        id="t1",
        state="SUCCESS",
        task="mod.add",
        queue="default",
        result={"zeta": [1, 2.5], "alpha": "café", "none": None},
        result_encoding="json",
        result_repr="{...}",
        retries=1,
        history=(Attempt(number=1, state="RETRY", exc_type="KeyError", worker="w@h"),),
        worker="w@h",
        created_at=1.0,
        finished_at=2.5,
        meta={"b": [1], "a": {"d": None, "c": True}},
    )


def header() -> msg.Header:
    return msg.Header(
        id="t1",
        task="mod.add",
        queue="default",
        serializer="json",
        retries=1,
        eta=5.0,
        created=1.25,
        meta={"zeta": "é", "chain": ["t2"]},
    )


def line_of(data: bytes) -> bytes:
    return data.partition(b"\n")[0]


# -- records


def test_a_signed_records_stored_text_reads_back_equal_and_verifies() -> None:
    # given a signed record
    signed = msg.sign_record(record(), KEYS)
    # when its stored text is read back
    back = TaskRecord.from_json(signed.to_json())
    # then it is the same record, and its signature holds
    assert back == signed
    msg.verify_record(back, KEYS)
    assert back.signature == signed.signature is not None


def test_signing_with_changes_is_changing_then_signing() -> None:
    # given the changes a worker makes when a task succeeds
    changes: dict[str, Any] = {
        "state": "SUCCESS",
        "result": [1, {"b": 2, "a": None}],
        "history": (*record().history, Attempt(number=2, state="SUCCESS", worker="w@h")),
        "meta": {"followups": [{"id": "t2"}]},
    }
    # when they are made as the record is signed
    at_once = msg.sign_record(record(), KEYS, **changes)
    # then it is the record that changing, then signing, makes, stored as the same text
    in_two = msg.sign_record(record().evolve(**changes), KEYS)
    assert at_once == in_two
    assert at_once.to_json() == in_two.to_json()
    msg.verify_record(TaskRecord.from_json(at_once.to_json()), KEYS)
    # and without keys the changes are made, and nothing is signed
    unsigned = msg.sign_record(record(), (), **changes)
    assert unsigned == record().evolve(**changes)
    assert unsigned.signature is None


def test_a_signed_records_stored_text_is_the_signed_bytes_plus_its_signature() -> None:
    signed = msg.sign_record(record(), KEYS)
    text = signed.to_json()
    payload = record().signing_payload()
    assert text == payload[:-1].decode() + f',"signature":"{signed.signature}"}}'
    assert hmac.new(KEYS[0], payload, hashlib.sha256).hexdigest() == signed.signature


@pytest.mark.parametrize(
    "extra",
    [
        {"expires_at": 99.5},
        {"_expires_at": 1700000000.123456, "note": "é", "n": 3, "list": [1, None]},
        {"big": 1e308, "inf": float("inf")},
    ],
)
def test_to_json_with_extra_fields_adds_them_to_a_signed_records_text(
    extra: dict[str, Any],
) -> None:
    signed = msg.sign_record(record(), KEYS)
    text = signed.to_json(extra)
    assert json.loads(text) == {**signed.to_dict(), **extra}
    # the same document an unsigned encoding gives (the key order aside)
    assert json.loads(text) == json.loads(signed.evolve().to_json(extra))
    assert TaskRecord.from_json(text) == signed
    assert signed.to_json({}) == signed.to_json(None) == signed.to_json()


def test_extra_fields_that_are_not_json_raise_serialization_error() -> None:
    signed = msg.sign_record(record(), KEYS)
    with pytest.raises(pluq.SerializationError, match="cannot be stored: it is not JSON") as exc:
        signed.to_json({"expires_at": object()})
    assert type(exc.value) is pluq.SerializationError


def test_evolving_a_signed_record_drops_its_stored_text() -> None:
    # given a signed record
    signed = msg.sign_record(record(), KEYS)
    # when it is changed
    changed = signed.evolve(result=6)
    replaced = dataclasses.replace(signed, state="FAILURE")
    # then the change is what is stored
    assert json.loads(changed.to_json())["result"] == 6
    assert json.loads(replaced.to_json())["state"] == "FAILURE"
    # and an unchanged copy is encoded anew, in declaration order
    fresh = signed.evolve()
    assert list(json.loads(fresh.to_json())) == [f.name for f in dataclasses.fields(TaskRecord)]
    assert getattr(fresh, "_stored", None) is None
    assert getattr(signed, "_stored", None) == signed.to_json()


def test_the_stored_text_is_no_field_equality_repr_or_pickle_sees() -> None:
    signed = msg.sign_record(record(), KEYS)
    plain = record().evolve(signature=signed.signature)
    assert signed == plain
    assert repr(signed) == repr(plain)
    assert [f.name for f in dataclasses.fields(TaskRecord)][-1] == "signature"
    unpickled = pickle.loads(pickle.dumps(signed))
    assert unpickled == signed
    assert TaskRecord.from_json(unpickled.to_json()) == signed


@pytest.mark.parametrize(
    "changes",
    [
        {"meta": {"when": object()}},
        {"result": {1, 2}},
    ],
)
def test_a_record_that_is_not_json_raises_serialization_error_from_sign_record(
    changes: dict[str, Any],
) -> None:
    bad = record().evolve(**changes)
    with pytest.raises(pluq.SerializationError) as signing:
        msg.sign_record(bad, KEYS)
    assert type(signing.value) is pluq.SerializationError
    assert str(signing.value).startswith("the record of task 't1' cannot be stored: it is not JSON")
    assert str(signing.value).endswith("encode results and meta values as JSON before putting them")
    with pytest.raises(pluq.SerializationError):
        bad.signing_payload()


def test_sign_record_raises_the_message_to_json_raises() -> None:
    bad = record().evolve(meta={"when": object()})
    with pytest.raises(pluq.SerializationError) as storing:
        bad.to_json()
    with pytest.raises(pluq.SerializationError) as signing:
        msg.sign_record(bad, KEYS)
    assert str(signing.value) == str(storing.value)


def test_without_keys_a_record_is_not_signed_and_is_stored_in_declaration_order() -> None:
    unsigned = msg.sign_record(record(), ())
    assert unsigned.signature is None
    assert list(json.loads(unsigned.to_json())) == [f.name for f in dataclasses.fields(TaskRecord)]


# -- headers


def test_the_header_line_is_the_canonical_header_with_the_signature_last() -> None:
    data = msg.encode(header(), BODY, KEYS)
    signed = msg.sign(header(), BODY, KEYS)
    assert line_of(data) == header().canonical()[:-1] + f',"sig":"{signed.sig}"}}'.encode()
    assert line_of(msg.encode(header(), BODY)) == header().canonical()[:-1] + b',"sig":null}'
    packer = msg.Packer(task="mod.add", queue="q", serializer=get_serializer("json"), keys=KEYS)
    out = packer.pack((1,), {}, 2.5)
    decoded, _ = msg.decode(out.message)
    assert line_of(out.message) == decoded.canonical()[:-1] + f',"sig":"{decoded.sig}"}}'.encode()


def test_verify_checks_a_decoded_line_without_encoding_the_header_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # given messages from encode, pack and a Packer, decoded
    packer = msg.Packer(task="mod.add", queue="q", serializer=get_serializer("json"), keys=KEYS)
    packed = msg.pack(
        task="mod.add", args=(1,), kwargs={}, queue="q", serializer=get_serializer("json"),
        keys=KEYS, now=2.5, meta={"z": "é"},
    )  # fmt: skip
    messages = [
        msg.encode(header(), BODY, KEYS),
        packed.message,
        packer.pack((1,), {}, 2.5).message,
    ]
    decoded = [msg.decode(data) for data in messages]

    # when the canonical encoding is not available
    def refuse(self: msg.Header) -> bytes:
        raise AssertionError("the fast path did not take this message")

    monkeypatch.setattr(msg.Header, "canonical", refuse)
    # then each verifies all the same, with the signing key among others
    for head, body in decoded:
        msg.verify(head, body, (b"other", *KEYS))


def test_a_header_built_or_changed_here_is_verified_by_encoding_it() -> None:
    head, body = msg.decode(msg.encode(header(), BODY, KEYS))
    msg.verify(head.evolve(), body, KEYS)  # no line kept: verified the slow way
    msg.verify(msg.sign(header(), BODY, KEYS), BODY, KEYS)
    with pytest.raises(pluq.SignatureError):
        msg.verify(head.evolve(retries=2), body, KEYS)


def _changed(data: bytes, at: int) -> bytes:
    """`data` with the byte at `at` replaced by another that keeps the line UTF-8 where it
    can (so that more of the changes reach verify)."""
    old = data[at]
    new = ord("0") if old != ord("0") else ord("1")
    if old in b"0123456789abcdef":
        new = ord("e") if old != ord("e") else ord("f")
    return data[:at] + bytes([new]) + data[at + 1 :]


def test_a_message_changed_in_any_byte_after_signing_fails_verification() -> None:
    # given a signed message
    data = msg.encode(header(), BODY, KEYS)
    original = msg.decode(data)
    line_length = len(line_of(data))
    refused = {"line": 0, "body": 0}
    for at in range(len(data)):
        # when one byte of the header line or of the body is changed
        changed = _changed(data, at)
        try:
            head, body = msg.decode(changed)
        except pluq.MessageError:
            continue  # refused before any signature is checked
        # then it fails verification, unless what was read is exactly what was signed
        try:
            msg.verify(head, body, KEYS)
        except pluq.SignatureError:
            refused["line" if at < line_length else "body"] += 1
        else:
            assert (head, body) == original, f"a change at byte {at} was accepted"
    # (and the changes that reached verify were many: every one in the body, and those in
    # the line that left it readable, which the fast path saw ending in a signature)
    assert refused["body"] == len(BODY)
    assert refused["line"] > 50


def test_a_member_added_before_the_signature_fails_verification() -> None:
    # given a signed message, and a line that repeats a key just before its "sig"
    data = msg.encode(header(), BODY, KEYS)
    head, _ = msg.decode(data)
    canonical = head.canonical()
    forged = canonical[:-1] + b',"task":"mod.evil","sig":"' + (head.sig or "").encode() + b'"}'
    # when it is decoded (the later key wins) and verified
    decoded, body = msg.decode(forged + b"\n" + BODY)
    assert decoded.task == "mod.evil"
    # then the signature fails
    with pytest.raises(pluq.SignatureError, match="matches none"):
        msg.verify(decoded, body, KEYS)


def test_a_body_changed_after_signing_fails_verification() -> None:
    head, body = msg.decode(msg.encode(header(), BODY, KEYS))
    for changed in (body + b" ", body[:-1], b"", body.replace(b"1", b"2")):
        with pytest.raises(pluq.SignatureError):
            msg.verify(head, changed, KEYS)


def _old_wire(head: msg.Header, body: bytes, keys: tuple[bytes, ...]) -> bytes:
    """The message as pluq wrote it before: fields in declaration order, `sig` among them,
    not ASCII-escaped."""
    fields = dataclasses.asdict(msg.sign(head, body, keys) if keys else head)
    line = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    return line.encode() + b"\n" + body


def test_a_message_in_the_earlier_declaration_order_still_verifies() -> None:
    # given a message written in the earlier wire form
    old = _old_wire(header(), BODY, KEYS)
    assert line_of(old).startswith(b'{"id":"t1","task":"mod.add"')
    assert line_of(old).endswith(b',"v":1}')
    # when it is decoded and verified
    head, body = msg.decode(old)
    msg.verify(head, body, (b"other", *KEYS))
    # then it is the header that was signed; and a changed one still fails
    assert (head, body) == (msg.sign(header(), BODY, KEYS), BODY)
    tampered = old.replace(b'"retries":1', b'"retries":0')
    assert tampered != old
    with pytest.raises(pluq.SignatureError):
        msg.verify(*msg.decode(tampered), KEYS)


def test_an_unsigned_message_decodes_with_or_without_a_sig_key() -> None:
    # given an unsigned message as encode writes it, and one whose line has no "sig"
    data = msg.encode(header(), BODY)
    bare = header().canonical() + b"\n" + BODY
    for message in (data, bare, _old_wire(header(), BODY, ())):
        # when it is decoded
        head, body = msg.decode(message)
        # then it is the header, unsigned: accepted without keys, refused with them
        assert (head, body) == (header(), BODY)
        assert head.sig is None
        msg.verify(head, body, ())
        with pytest.raises(pluq.SignatureError, match="not signed"):
            msg.verify(head, body, KEYS)


def test_decode_takes_any_bytes_like_message_and_refuses_other_types() -> None:
    data = msg.encode(header(), BODY, KEYS)
    for form in (bytearray(data), memoryview(data)):
        head, body = msg.decode(form)
        assert (head, body) == msg.decode(data)
        assert type(body) is bytes
        msg.verify(head, body, KEYS)
    with pytest.raises(pluq.MessageError, match="must be bytes, not str"):
        msg.decode(data.decode())  # type: ignore[arg-type]


def test_a_results_key_order_survives_signing_storing_and_verifying() -> None:
    # A caller sees the dict its task returned, in its order (json and pickle keep it too).
    value = {"zeta": 1, "alpha": {"z": 2, "a": 3}}
    signed = msg.sign_record(record().evolve(result=value, result_encoding="json"), KEYS)
    back = TaskRecord.from_json(signed.to_json({"expires_at": 1.5}))
    assert list(back.result) == ["zeta", "alpha"]
    assert list(back.result["alpha"]) == ["z", "a"]
    msg.verify_record(back, KEYS)


def test_a_signature_that_is_not_ascii_is_refused_not_a_crash() -> None:
    data = msg.encode(msg.Header(id="x", task="t", queue="q", serializer="json"), b"{}", KEYS)
    forged = data.replace(b'"sig":"', '"sig":"é'.encode(), 1)
    header, body = msg.decode(forged)
    with pytest.raises(SignatureError, match="not hex"):
        msg.verify(header, body, KEYS)


def test_a_record_signature_that_is_not_ascii_is_refused_not_a_crash() -> None:
    signed = msg.sign_record(record(), KEYS)
    with pytest.raises(SignatureError, match="does not match"):
        msg.verify_record(signed.evolve(signature="é" + signed.signature[1:]), KEYS)
