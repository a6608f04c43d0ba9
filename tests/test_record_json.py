"""A first-attempt record's JSON from a template: the encoder's very bytes, or no answer.

The text a worker signs is the text readers check the signature against after encoding
the parsed record again (`verify_record`): one byte apart, and every result is refused.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pluq import message as msg
from pluq._record_json import FirstAttemptJson
from pluq.backend import SUCCESS, Attempt, TaskRecord, _signed_json, record_fields
from pluq.errors import SerializationError

KEYS = (b"secret",)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats()
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)
times = st.none() | st.floats(min_value=0, max_value=4e9) | st.integers(0, 4_000_000_000)
names = st.none() | st.text()


def encoded(fields: dict[str, Any]) -> str:
    """What the encoder writes for the record: the long way."""
    data = dict(fields, history=[a.to_dict() for a in fields["history"]])
    del data["signature"]
    return _signed_json(data)


def first_attempt(**changes: Any) -> dict[str, Any]:
    started, finished = 1700000000.25, 1700000000.5
    values: dict[str, Any] = {
        "id": "a" * 32,
        "state": SUCCESS,
        "task": "tasks.add",
        "queue": "default",
        "result": 5,
        "result_encoding": "json",
        "result_repr": "5",
        "worker": "host:1:2",
        "created_at": 1700000000.0,
        "started_at": started,
        "finished_at": finished,
        "history": (
            Attempt(
                number=1, state=SUCCESS, started_at=started, finished_at=finished, worker="host:1:2"
            ),
        ),
    }
    values.update(changes)
    return record_fields(**values)


@settings(max_examples=400, deadline=None)
@given(
    id=st.text(),
    state=st.text(),
    task=names,
    queue=names,
    result=json_values,
    encoding=names,
    result_repr=names,
    retries=st.integers(0, 10) | st.booleans(),
    number=st.integers(1, 10),
    worker=names,
    created=times,
    started=times,
    finished=times,
)
def test_the_template_writes_the_encoders_bytes(
    id: str,
    state: str,
    task: str | None,
    queue: str | None,
    result: Any,
    encoding: str | None,
    result_repr: str | None,
    retries: int,
    number: int,
    worker: str | None,
    created: float | None,
    started: float | None,
    finished: float | None,
) -> None:
    template = FirstAttemptJson(_signed_json)
    fields = record_fields(
        id=id, state=state, task=task, queue=queue, result=result, result_encoding=encoding,
        result_repr=result_repr, retries=retries, worker=worker, created_at=created,
        started_at=started, finished_at=finished,
        history=(Attempt(number=number, state=state, started_at=started, finished_at=finished,
                         worker=worker),),
    )  # fmt: skip
    # Twice: the first builds the template, the second uses it.
    for _ in range(2):
        text = template(fields)
        if text is not None:
            assert text == encoded(fields)
    finite = all(not isinstance(t, float) or math.isfinite(t) for t in (created, started, finished))
    if finite and not (isinstance(result, float) and not math.isfinite(result)):
        assert text is not None  # every such record takes the template


def test_equal_keys_of_other_types_get_templates_of_their_own() -> None:
    # 1 == True == 1.0 as dict keys, and "1", "true", "1.0" in JSON.
    template = FirstAttemptJson(_signed_json)
    for retries in (1, True, 1.0, 0, False):
        fields = first_attempt(retries=retries)
        assert template(fields) == encoded(fields)


@pytest.mark.parametrize(
    "changes",
    [
        {"meta": {"followups": []}},
        {"exc_type": "ValueError"},
        {"traceback": "Traceback ..."},
        {"history": ()},
        {"started_at": float("1700000000.25")},  # equal, not the attempt's own object
        {"result": float("nan")},
        {"created_at": float("inf")},
        {"result": object()},
        {"result_repr": 5},
    ],
    ids=repr,
)
def test_other_records_get_no_answer(changes: dict[str, Any]) -> None:
    fields = first_attempt(**changes)
    assert FirstAttemptJson(_signed_json)(fields) is None


def test_a_retried_task_gets_no_answer() -> None:
    fields = first_attempt()
    earlier = Attempt(number=1, state="RETRY", exc_type="ValueError", exc_message="boom")
    fields["history"] = (earlier, *fields["history"])
    assert FirstAttemptJson(_signed_json)(fields) is None


def test_a_signed_first_attempt_verifies_and_reads_back() -> None:
    fields = first_attempt(result={"sum": [1, 2.5, "é"]}, result_repr="{'sum': ...}")
    record = msg.signed_record(dict(fields), KEYS)
    msg.verify_record(record, KEYS)
    assert record.to_json() == encoded(fields)[:-1] + f',"signature":"{record.signature}"}}'
    back = TaskRecord.from_json(record.to_json())
    msg.verify_record(back, KEYS)
    assert back == record


def test_a_result_that_is_not_json_is_refused_as_before() -> None:
    fields = first_attempt(result={1j})
    with pytest.raises(SerializationError, match="cannot be stored"):
        msg.signed_record(fields, KEYS)
