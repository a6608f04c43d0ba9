"""The supervisor's side of a child's pipe: jobs written in one go, outcomes read in one.

The child keeps multiprocessing's `Connection.recv_bytes`/`send_bytes`; the supervisor
writes and parses the same framing itself (`Slot.flush`, `Slot.receive`). These tests hold
the two ends to each other, with a real pipe and no process.
"""

from __future__ import annotations

import multiprocessing
import os
import select
import threading

import pytest

from pluq.worker.child import split_job
from pluq.worker.pool import Slot, _frame


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
    assert slot._inbuf == bytearray()


def test_a_partial_frame_waits_for_the_rest() -> None:
    slot, child = _slot()
    framed = _frame(b"hello")
    fd = child.fileno()
    os.write(fd, framed[:3])  # not even the whole length
    assert slot.receive() == []
    os.write(fd, framed[3:6])
    assert slot.receive() == []
    os.write(fd, framed[6:] + _frame(b"next"))
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
