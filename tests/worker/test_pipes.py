"""Both ends of a child's pipe: jobs written in one go, outcomes read in one.

The framing is multiprocessing's (`Connection.send_bytes`); the supervisor (`Slot.flush`,
`Slot.receive`) and the child (`serve`) write and parse it themselves, many messages a
read. These tests hold the ends to each other and to `Connection`, with a real pipe; the
child's loop runs in a thread.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import select
import threading

import pytest

import pluq
from pluq.worker.child import STOP, ChildSpec, Resolver, frame, join_job, serve, split_job
from pluq.worker.pool import Slot


def _slot() -> tuple[Slot, multiprocessing.connection.Connection]:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    slot = Slot(0)
    slot.conn = ours
    return slot, theirs


def test_jobs_sent_in_one_pass_arrive_one_message_each() -> None:
    slot, child = _slot()
    for i in range(5):
        slot.send({"token": str(i)}, b"body-%d" % i)
    assert not child.poll(0)  # nothing written before flush
    slot.flush()
    got = [split_job(child.recv_bytes()) for _ in range(5)]
    assert got == [({"token": str(i)}, b"body-%d" % i) for i in range(5)]
    assert not child.poll(0)
    slot.flush()  # nothing queued: writes nothing
    assert not child.poll(0)


def test_outcomes_sent_one_by_one_are_read_in_one_receive() -> None:
    slot, child = _slot()
    for i in range(3):
        child.send_bytes(b"outcome-%d" % i)
    assert slot.receive() == [b"outcome-0", b"outcome-1", b"outcome-2"]


def test_a_message_split_across_reads_is_returned_once_whole() -> None:
    slot, child = _slot()
    assert slot.conn is not None
    big = os.urandom(200_000)  # more than one read takes
    writer = threading.Thread(target=child.send_bytes, args=(big,))
    writer.start()
    got: list[bytes] = []
    while not got:
        select.select([slot.conn], [], [], 5)
        got = slot.receive()
    writer.join()
    assert got == [big]
    assert slot._reader._buf == bytearray()


def test_a_partial_frame_waits_for_the_rest() -> None:
    slot, child = _slot()
    framed = frame(b"hello")
    fd = child.fileno()
    os.write(fd, framed[:3])  # not even the whole length
    assert slot.receive() == []
    os.write(fd, framed[3:6])
    assert slot.receive() == []
    os.write(fd, framed[6:] + frame(b"next"))
    assert slot.receive() == [b"hello", b"next"]


def test_the_long_form_of_the_length_is_understood() -> None:
    # multiprocessing writes -1 and an 8-byte length for messages of 2 GiB or more; the
    # parser takes that form too (shown here on a small message, as the format allows).
    slot, child = _slot()
    data = b"long form"
    os.write(child.fileno(), (-1).to_bytes(4, "big", signed=True) + len(data).to_bytes(8, "big"))
    assert slot.receive() == []
    os.write(child.fileno(), data)
    assert slot.receive() == [data]


def test_a_closed_pipe_reads_as_eof() -> None:
    slot, child = _slot()
    child.send_bytes(b"last words")
    assert slot.receive() == [b"last words"]
    child.close()
    with pytest.raises(EOFError):
        slot.receive()


def _job(app: pluq.App, task: pluq.Task, value: int) -> tuple[dict[str, object], bytes]:
    task.delay(value)
    [delivery] = app.broker.reserve(["default"], timeout=0, lease=30)
    header, body = pluq.message.decode(delivery.message)
    job = {
        "token": header.id,
        "id": header.id,
        "task": header.task,
        "serializer": header.serializer,
    }
    return job, body


def test_the_child_runs_a_batch_from_one_write_and_stops_at_stop() -> None:
    app = pluq.App("memory://pipes-child")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    jobs = [_job(app, double, i) for i in range(4)]
    ours, theirs = multiprocessing.Pipe(duplex=True)
    # Three jobs, STOP, and one job that must never run: all in a single write.
    data = b"".join(frame(join_job(job, body)) for job, body in jobs[:3])
    data += frame(STOP) + frame(join_job(*jobs[3]))
    child = threading.Thread(target=serve, args=(theirs, Resolver(ChildSpec(app=app))))
    child.start()
    os.write(ours.fileno(), data)
    child.join(30)
    assert not child.is_alive()
    outcomes = []
    while ours.poll(0):
        outcomes.append(json.loads(ours.recv_bytes()))  # Connection reads the child's framing
    assert [o["token"] for o in outcomes] == [job["token"] for job, _ in jobs[:3]]
    assert [o["status"] for o in outcomes] == ["success"] * 3
    assert [o["result"] for o in outcomes] == [0, 2, 4]


def test_the_child_ends_when_the_supervisor_closes_the_pipe() -> None:
    ours, theirs = multiprocessing.Pipe(duplex=True)
    child = threading.Thread(target=serve, args=(theirs, Resolver(ChildSpec())))
    child.start()
    os.write(ours.fileno(), frame(b"x")[:2])  # half a frame, then the supervisor is gone
    ours.close()
    child.join(30)
    assert not child.is_alive()
