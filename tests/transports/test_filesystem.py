"""What only the file:// transport promises: URL grammar, layout, permissions, odd names,
readable files, clean failure on a full disk, and claims that race safely.

The behaviour every transport shares is tested by the contract kit:
`pytest transports --transport-url 'file://{tmp}/queue'`.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pluq.backend import SUCCESS, TaskRecord
from pluq.broker import Broker, Delivery, Outgoing, QueueCounts, WorkerInfo
from pluq.errors import ConfigurationError, LeaseLost, TransportError
from pluq.registry import URL, open_backend, open_broker, transport_for
from pluq.transports.filesystem import FileBackend, FileBroker, FileTransport

LEASE = 30.0


class Clock:
    """A clock that moves only when told to (seconds, like time.time)."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"file://{tmp_path}/queue"


@pytest.fixture
def broker(url: str, clock: Clock) -> Iterator[FileBroker]:
    with FileTransport.broker(URL.parse(url), clock=clock) as broker:
        yield broker


@pytest.fixture
def backend(url: str, clock: Clock) -> Iterator[FileBackend]:
    with FileTransport.backend(URL.parse(url), clock=clock) as backend:
        yield backend


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def reserve_one(broker: Broker, queue: str = "q") -> Delivery:
    (delivery,) = broker.reserve([queue], timeout=0, lease=LEASE)
    return delivery


# -- URL grammar -----------------------------------------------------------------------


def test_scheme_file_opens_this_transport() -> None:
    assert transport_for("file:///x") is FileTransport
    assert FileTransport.capabilities.shared_between_processes is True
    assert FileTransport.capabilities.shared_between_hosts is False
    assert FileTransport.capabilities.durable is True


def test_absolute_url_uses_that_directory(tmp_path: Path) -> None:
    # given file:/// with an absolute path that does not exist yet
    target = tmp_path / "deep" / "spool"
    # when a broker is opened and used
    with open_broker(f"file://{target}") as broker:
        broker.publish("q", b"m", id="m1")
    # then the directory was created and holds the queue
    assert (target / "queues" / "q" / "ready").is_dir()
    assert len(list((target / "queues" / "q" / "ready").iterdir())) == 1


def test_relative_url_is_host_plus_path_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_broker("file://Spool/Tasks") as broker:
        # moving away afterwards changes nothing: the path was resolved when opened
        monkeypatch.chdir("/")
        broker.publish("q", b"m", id="m1")
    # the case of the host part is kept (URL parsers lower-case host names)
    assert (tmp_path / "Spool" / "Tasks" / "queues" / "q").is_dir()


def test_relative_url_of_one_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_backend("file://results") as backend:
        backend.put(TaskRecord(id="t1", state=SUCCESS), expires=60)
    assert (tmp_path / "results" / "results" / "t1.json").is_file()


@pytest.mark.parametrize("url", ["file://", "file://?fsync=false"])
def test_url_without_a_directory_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError, match=r"file:///absolute/dir or file://relative/dir"):
        open_broker(url)


def test_url_with_a_user_or_port_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="names a directory, not a server"):
        open_broker(f"file://user@host{tmp_path}")
    with pytest.raises(ConfigurationError, match="names a directory, not a server"):
        open_backend(f"file://host:99{tmp_path}")


@pytest.mark.parametrize(
    "query",
    ["nope=1", "fsync=maybe", "dedupe_window=-1", "dedupe_window=soon", "dedupe_window=nan"],
)
def test_unknown_or_invalid_options_are_configuration_errors(url: str, query: str) -> None:
    with pytest.raises(ConfigurationError):
        open_broker(f"{url}?{query}")
    with pytest.raises(ConfigurationError):
        open_backend(f"{url}?{query}")


def test_known_options_are_accepted(url: str, tmp_path: Path) -> None:
    with open_broker(f"{url}?prefix=t1&dedupe_window=0&fsync=false") as broker:
        assert broker.publish("q", b"m", id="m1") is True
    assert (tmp_path / "queue" / "t1" / "queues" / "q").is_dir()


def test_an_unusable_directory_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ConfigurationError, match="cannot use"):
        open_broker(f"file://{tmp_path}/file/queue")


def test_prefix_is_a_subfolder_with_an_encoded_name(tmp_path: Path, clock: Clock) -> None:
    base = f"file://{tmp_path}/queue"
    with (
        open_broker(f"{base}?prefix=Tenant/A", clock=clock) as a,
        open_broker(f"{base}?prefix=tenant-b", clock=clock) as b,
    ):
        assert a.publish("q", b"a", id="m1") is True
        assert b.publish("q", b"b", id="m1") is True
        assert reserve_one(a).message == b"a"
        assert reserve_one(b).message == b"b"
    # no slash in the prefix became a folder level; the upper case is encoded too
    assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == [
        "%54enant%2f%41",
        "tenant-b",
    ]


# -- layout and readable files ---------------------------------------------------------


def test_message_file_is_a_json_header_line_and_the_bytes(
    broker: FileBroker, tmp_path: Path
) -> None:
    broker.publish("q", b"line one\nline two", id="m1")
    (path,) = (tmp_path / "queue" / "queues" / "q" / "ready").iterdir()
    header, _, body = path.read_bytes().partition(b"\n")
    assert json.loads(header)["id"] == "m1"
    assert json.loads(header)["queue"] == "q"
    assert body == b"line one\nline two"
    assert path.name.endswith(".0.-.m1.msg")


def test_places_are_folders(broker: FileBroker, tmp_path: Path, clock: Clock) -> None:
    queue = tmp_path / "queue" / "queues" / "q"
    broker.publish("q", b"m", id="dead")
    broker.publish("q", b"m", id="leased")
    broker.publish("q", b"m", id="ready")
    broker.publish("q", b"m", id="delayed", not_before=clock() + 60)
    broker.dead_letter(reserve_one(broker), reason="boom")
    leased = reserve_one(broker)
    assert leased.id == "leased"
    folders = [p for p in queue.iterdir() if p.is_dir()]
    places = {p.name: [f.name.split(".")[-2] for f in p.iterdir()] for p in folders}
    assert places == {
        "ready": ["ready"],
        "delayed": ["delayed"],
        "leased": ["leased"],
        "dead": ["dead"],
    }
    assert (queue / "name").read_text() == "q"
    (dead,) = (queue / "dead").iterdir()
    assert json.loads(dead.read_bytes().partition(b"\n")[0])["reason"] == "boom"
    (lease_file,) = (queue / "leased").iterdir()
    assert leased.lease_id in lease_file.name


def test_ready_names_sort_in_publish_order(broker: FileBroker, tmp_path: Path) -> None:
    ids = ["zeta", "alpha", "mid", "b"]
    broker.publish_many([Outgoing("q", b"m", i) for i in ids])
    names = sorted(p.name for p in (tmp_path / "queue" / "queues" / "q" / "ready").iterdir())
    assert [n.split(".")[-2] for n in names] == ids


def test_fifo_holds_across_two_instances(url: str, clock: Clock) -> None:
    with (
        open_broker(url, clock=clock) as one,
        open_broker(url, clock=clock) as two,
    ):
        for i in range(10):
            (one if i % 2 else two).publish("q", b"m", id=f"m{i}")
        got = [d.id for d in one.reserve(["q"], timeout=0, lease=LEASE, limit=10)]
    assert got == [f"m{i}" for i in range(10)]


def test_result_file_is_the_record_as_json(
    backend: FileBackend, tmp_path: Path, clock: Clock
) -> None:
    record = TaskRecord(id="t1", state=SUCCESS, task="add", result=5, result_encoding="json")
    backend.put(record, expires=60)
    with open(tmp_path / "queue" / "results" / "t1.json") as f:
        document = json.load(f)
    assert document == {**record.to_dict(), "expires_at": clock() + 60}


def test_expired_result_file_is_deleted_when_read(
    backend: FileBackend, tmp_path: Path, clock: Clock
) -> None:
    backend.put(TaskRecord(id="t1", state=SUCCESS), expires=10)
    path = tmp_path / "queue" / "results" / "t1.json"
    clock.advance(9)
    assert backend.get("t1") is not None
    clock.advance(1)
    assert backend.get("t1") is None
    assert not path.exists()


def test_purge_expired_counts_records_and_drops_counters(
    backend: FileBackend, tmp_path: Path, clock: Clock
) -> None:
    backend.put(TaskRecord(id="old", state=SUCCESS), expires=10)
    backend.put(TaskRecord(id="new", state=SUCCESS), expires=100)
    assert backend.incr("chord", expires=10) == 1
    clock.advance(50)
    assert backend.purge_expired() == 1
    assert sorted(p.name for p in (tmp_path / "queue" / "results").iterdir()) == ["new.json"]
    assert list((tmp_path / "queue" / "counters").iterdir()) == []
    assert backend.incr("chord", expires=10) == 1


def test_counter_file_is_readable(backend: FileBackend, tmp_path: Path) -> None:
    backend.incr("group:1", 3, expires=60)
    path = tmp_path / "queue" / "counters" / "group%3a1.json"
    assert json.loads(path.read_text())["value"] == 3
    assert json.loads(path.read_text())["key"] == "group:1"


def test_counter_survives_threads(url: str) -> None:
    backend = open_backend(f"{url}?fsync=false")  # atomicity, not durability, is tested
    start = threading.Barrier(4)

    def bump() -> None:
        start.wait(10)
        for _ in range(50):
            backend.incr("n", expires=60)

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert backend.incr("n", 0, expires=60) == 200
    backend.close()


def test_a_corrupt_result_file_is_a_transport_error(backend: FileBackend, tmp_path: Path) -> None:
    (tmp_path / "queue" / "results" / "t1.json").write_text("{half")
    with pytest.raises(TransportError, match="not a pluq record"):
        backend.get("t1")


def test_foreign_files_in_a_queue_folder_are_ignored(broker: FileBroker, tmp_path: Path) -> None:
    broker.publish("q", b"m", id="m1")
    ready = tmp_path / "queue" / "queues" / "q" / "ready"
    (ready / "notes.txt").write_text("hello")
    (ready / ".hidden.swp").write_text("editor")
    assert broker.counts(["q"])["q"] == QueueCounts(ready=1)
    assert [d.id for d in broker.reserve(["q"], timeout=0, lease=LEASE, limit=5)] == ["m1"]
    assert broker.reserve(["q"], timeout=0, lease=LEASE) == []


# -- permissions -----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=["000", "022", "277"])
def test_folders_are_0700_and_files_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    # given a umask that is too open (0), usual (022), or that even drops the owner's
    # write bit (277)
    root = tmp_path / "spool"
    clock = Clock()
    old = os.umask(umask)
    try:
        # when everything that creates a file or a folder runs
        with (
            open_broker(f"file://{root}?prefix=p", clock=clock) as broker,
            open_backend(f"file://{root}?prefix=p", clock=clock) as backend,
        ):
            broker.publish("q", b"m", id="a")
            broker.publish("q", b"m", id="b", not_before=clock() + 5)
            broker.publish("q", b"m", id="c")
            broker.dead_letter(reserve_one(broker), reason="r")
            broker.ack(reserve_one(broker))
            broker.publish("q", b"m", id="d")
            reserve_one(broker)
            broker.heartbeat(WorkerInfo(id="w1", hostname="h", pid=1), ttl=60)
            backend.put(TaskRecord(id="t1", state=SUCCESS), expires=60)
            backend.incr("k", expires=60)
    finally:
        os.umask(old)
    # then every folder pluq made is 0700 and every file 0600
    folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
    files = files_under(root)
    assert len(folders) > 10
    assert len(files) > 8
    assert {p: oct(stat.S_IMODE(p.stat().st_mode)) for p in folders} == {
        p: "0o700" for p in folders
    }
    assert {p: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p: "0o600" for p in files}


# -- odd ids and names -----------------------------------------------------------------

ODD_IDS = [
    "with/slash",
    "../../escape",
    ".",
    "..",
    ".hidden",
    "",
    "UPPER-lower",
    "ünïcode ✓ 日本",
    "%%looks-hashed",
    "%2f",
    "new\nline",
    "x" * 119,
    "y" * 5000,
    "\udc80 lone surrogate",
]


def test_odd_ids_roundtrip_through_every_place(
    broker: FileBroker, tmp_path: Path, clock: Clock
) -> None:
    # given messages whose ids are anything at all
    for i, id in enumerate(ODD_IDS):
        assert broker.publish("q", str(i).encode(), id=id) is True
        assert broker.publish("q", b"dup", id=id) is False
    # then every file stays inside its folder, with a name the filesystem takes
    queue = tmp_path / "queue" / "queues" / "q"
    ready = sorted((queue / "ready").iterdir())
    assert len(ready) == len(ODD_IDS)
    assert all(len(p.name.encode()) <= 255 for p in files_under(tmp_path / "queue"))
    top = {p.name for p in (tmp_path / "queue").iterdir()}
    assert top <= {"tmp", "ids", "done", "queues", "workers", "ids.lock"}
    assert len(list((queue / "ready").iterdir())) == len(ODD_IDS)
    # and they travel through leased, dead and back, by id
    deliveries = broker.reserve(["q"], timeout=0, lease=LEASE, limit=100)
    assert [d.id for d in deliveries] == ODD_IDS
    for delivery in deliveries:
        broker.dead_letter(delivery, reason=f"reason of {delivery.id}")
    assert {d.id: d.reason for d in broker.dead_letters()} == {
        id: f"reason of {id}" for id in ODD_IDS
    }
    assert broker.retry_dead(ODD_IDS[:3]) == 3
    assert broker.purge_dead(ODD_IDS[3:6]) == 3
    assert broker.cancel(ODD_IDS[0]) is True
    assert broker.counts(["q"])["q"] == QueueCounts(ready=2, dead=len(ODD_IDS) - 6)
    again = broker.reserve(["q"], timeout=0, lease=LEASE, limit=100)
    assert [(d.id, d.attempt) for d in again] == [(ODD_IDS[1], 2), (ODD_IDS[2], 2)]


def test_odd_queue_names_are_listed_by_name(broker: FileBroker) -> None:
    names = ["Default", "a/b", "ü", "x" * 300, ".."]
    for name in names:
        broker.publish(name, b"m", id=f"id-{len(name)}-{name[:1]}")
    assert sorted(broker.counts()) == sorted(names)
    assert all(c == QueueCounts(ready=1) for c in broker.counts().values())


def test_odd_result_ids_and_counter_keys(backend: FileBackend) -> None:
    for id in ODD_IDS:
        backend.put(TaskRecord(id=id, state=SUCCESS, result=id), expires=60)
    assert [r.result if r else None for r in backend.get_many(ODD_IDS)] == ODD_IDS
    assert [backend.incr(k, expires=60) for k in ODD_IDS] == [1] * len(ODD_IDS)


def test_ids_differing_only_in_case_are_different_files(broker: FileBroker) -> None:
    # on a case-insensitive filesystem (macOS) "Ab" and "ab" must not share a file
    assert broker.publish("q", b"1", id="ab") is True
    assert broker.publish("q", b"2", id="Ab") is True
    assert broker.publish("q", b"3", id="AB") is True
    assert broker.counts(["q"])["q"].ready == 3


# -- failures leave nothing behind -----------------------------------------------------


def fail_once(
    monkeypatch: pytest.MonkeyPatch, name: str, call: int, code: int = errno.ENOSPC
) -> list[int]:
    """Make the `call`-th call of os.`name` raise OSError(code); the others run."""
    real = getattr(os, name)
    calls = [0]

    def failing(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == call:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, failing)
    return calls


@pytest.mark.parametrize(
    ("name", "call"),
    [("write", 1), ("write", 2), ("replace", 1), ("fsync", 1)],
    ids=["index-write", "message-write", "rename", "fsync"],
)
def test_disk_full_during_publish_leaves_nothing_half_written(
    broker: FileBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, call: int
) -> None:
    root = tmp_path / "queue"
    broker.publish("q", b"before", id="m0")  # the queue folders exist
    before = files_under(root)
    # given a disk that fills up during the next publish
    fail_once(monkeypatch, name, call)
    # when publishing, then a TransportError says what happened and what to do
    with pytest.raises(TransportError, match="disk is full") as caught:
        broker.publish("q", b"x" * 10_000, id="m1")
    assert isinstance(caught.value.__cause__, OSError)
    assert str(root) in str(caught.value)
    # and nothing was left: no temporary file, no index entry, no message
    assert files_under(root) == before
    monkeypatch.undo()
    # and once there is room again, the same publish works
    assert broker.publish("q", b"x" * 10_000, id="m1") is True
    assert [d.id for d in broker.reserve(["q"], timeout=0, lease=LEASE, limit=5)] == ["m0", "m1"]


@pytest.mark.parametrize(("name", "call"), [("write", 1), ("replace", 1)])
def test_disk_full_during_a_result_write_keeps_the_old_record(
    backend: FileBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, call: int
) -> None:
    backend.put(TaskRecord(id="t1", state="STARTED"), expires=60)
    fail_once(monkeypatch, name, call)
    with pytest.raises(TransportError, match="disk is full"):
        backend.put(TaskRecord(id="t1", state=SUCCESS, result=1), expires=60)
    assert list((tmp_path / "queue" / "tmp").iterdir()) == []
    record = backend.get("t1")
    assert record is not None
    assert record.state == "STARTED"
    monkeypatch.undo()
    backend.put(TaskRecord(id="t1", state=SUCCESS, result=1), expires=60)
    record = backend.get("t1")
    assert record is not None
    assert record.state == SUCCESS


def test_disk_full_during_dead_letter_loses_nothing(
    broker: FileBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    broker.publish("q", b"m", id="m1")
    delivery = reserve_one(broker)
    fail_once(monkeypatch, "write", 1)
    with pytest.raises(TransportError, match="disk is full"):
        broker.dead_letter(delivery, reason="r")
    monkeypatch.undo()
    assert list((tmp_path / "queue" / "tmp").iterdir()) == []
    # the message is still leased (pinned under a private lease while it was being
    # rewritten), so it comes back like any expired lease: delayed, never lost
    assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
    clock.advance(61)
    again = reserve_one(broker)
    assert (again.id, again.message, again.attempt) == ("m1", b"m", 2)


def test_permission_errors_say_what_to_do(
    broker: FileBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_once(monkeypatch, "replace", 1, errno.EACCES)
    with pytest.raises(TransportError, match="must belong to the user running pluq"):
        broker.publish("q", b"m", id="m1")


def test_a_nan_not_before_is_refused_before_anything_is_written(
    broker: FileBroker, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="finite"):
        broker.publish("q", b"m", id="m1", not_before=float("nan"))
    assert broker.publish("q", b"m", id="m1") is True


def test_old_temporary_files_are_removed(url: str, tmp_path: Path, clock: Clock) -> None:
    tmp = tmp_path / "queue" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "crashed.tmp").write_bytes(b"half")
    (tmp / "writing.tmp").write_bytes(b"now")
    two_hours_ago = time.time() - 7200
    os.utime(tmp / "crashed.tmp", (two_hours_ago, two_hours_ago))
    with open_broker(url, clock=clock) as broker:
        broker.reserve(["q"], timeout=0, lease=LEASE)
    assert [p.name for p in tmp.iterdir()] == ["writing.tmp"]


# -- ids, tombstones and leases --------------------------------------------------------


def test_ack_leaves_a_tombstone_until_the_window_ends(
    url: str, tmp_path: Path, clock: Clock
) -> None:
    with open_broker(f"{url}?dedupe_window=60", clock=clock) as broker:
        broker.publish("q", b"m", id="m1")
        assert (tmp_path / "queue" / "ids" / "m1").exists()
        broker.ack(reserve_one(broker))
        tombstone = tmp_path / "queue" / "done" / "m1"
        assert not (tmp_path / "queue" / "ids" / "m1").exists()
        assert tombstone.stat().st_mtime == pytest.approx(clock() + 60)
        clock.advance(61)
        assert broker.publish("q", b"again", id="m1") is True
        assert not tombstone.exists()


def test_a_large_acked_message_leaves_a_small_tombstone(broker: FileBroker, tmp_path: Path) -> None:
    broker.publish("q", os.urandom(1 << 20), id="big")
    broker.ack(reserve_one(broker))
    assert (tmp_path / "queue" / "done" / "big").stat().st_size == 0
    assert broker.publish("q", b"m", id="big") is False


def test_an_index_left_by_a_crash_mid_ack_is_cleared_when_its_tombstone_expires(
    broker: FileBroker, tmp_path: Path, clock: Clock
) -> None:
    # given a crash between writing the tombstone and deleting the index entry
    broker.publish("q", b"m", id="m1")
    broker.ack(reserve_one(broker))
    (tmp_path / "queue" / "ids" / "m1").write_text('{"id":"m1","queue":"q"}')
    # then the id is known during the window, and free afterwards
    assert broker.publish("q", b"m", id="m1") is False
    clock.advance(301)
    assert broker.publish("q", b"m", id="m1") is True
    assert reserve_one(broker).id == "m1"


def age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_an_index_left_by_a_publish_that_died_is_reclaimed_after_an_hour(
    broker: FileBroker, tmp_path: Path
) -> None:
    # given index entries of publishes that died before renaming their message in
    # (one of them died even before writing the index content)
    ids = tmp_path / "queue" / "ids"
    broker.publish("q", b"m", id="other")  # the queue exists
    (ids / "young").write_text('{"id":"young","queue":"q"}')
    (ids / "old").write_text('{"id":"old","queue":"q"}')
    (ids / "empty").write_bytes(b"")
    age(ids / "old", 7200)
    age(ids / "empty", 7200)
    # then a young entry still counts (its publish may be in progress), old ones do not
    assert broker.publish("q", b"m", id="young") is False
    assert broker.publish("q", b"m", id="old") is True
    assert broker.publish("q", b"m", id="empty") is True
    assert broker.publish("q", b"m", id="old") is False
    assert broker.counts(["q"])["q"].ready == 3


def test_an_old_index_of_a_live_message_is_not_an_orphan(
    broker: FileBroker, tmp_path: Path, clock: Clock
) -> None:
    # given messages that have lived for more than an hour in every place
    broker.publish("q", b"m", id="dead")
    broker.publish("q", b"m", id="leased")
    broker.publish("q", b"m", id="ready")
    broker.publish("q", b"m", id="delayed", not_before=clock() + 86400)
    broker.dead_letter(reserve_one(broker), reason="r")
    reserve_one(broker)
    for index in (tmp_path / "queue" / "ids").iterdir():
        age(index, 7200)
    # then their ids are still known
    assert [broker.publish("q", b"x", id=i) for i in ("dead", "leased", "ready", "delayed")] == [
        False
    ] * 4


def test_expired_tombstones_are_swept(url: str, tmp_path: Path, clock: Clock) -> None:
    with open_broker(f"{url}?dedupe_window=5", clock=clock) as broker:
        broker.publish("q", b"m", id="m1")
        broker.ack(reserve_one(broker))
    clock.advance(6)
    with open_broker(url, clock=clock) as fresh:  # a new broker sweeps on first use
        fresh.reserve(["q"], timeout=0, lease=LEASE)
    assert list((tmp_path / "queue" / "done").iterdir()) == []


def test_an_expired_lease_nobody_reserved_again_can_still_be_acked(
    broker: FileBroker, clock: Clock
) -> None:
    # given m1's lease expired and another reserve moved it back to ready (behind m2)
    broker.publish("q", b"m", id="m1")
    stale = reserve_one(broker)
    broker.publish("q", b"m", id="m2")
    clock.advance(LEASE + 1)
    assert reserve_one(broker).id == "m2"
    assert broker.counts(["q"])["q"] == QueueCounts(ready=1, leased=1)
    # when its old holder acks it, then that works (nobody else holds it) ...
    broker.ack(stale)
    assert broker.counts(["q"])["q"] == QueueCounts(leased=1)
    # ... once
    with pytest.raises(LeaseLost):
        broker.ack(stale)


def test_an_expired_lease_can_be_extended_back(broker: FileBroker, clock: Clock) -> None:
    broker.publish("q", b"m", id="m1")
    stale = reserve_one(broker)
    broker.publish("q", b"m", id="m2")
    clock.advance(LEASE + 1)
    assert reserve_one(broker).id == "m2"  # m1 went back to ready meanwhile
    renewed = broker.extend(stale, lease=LEASE)
    assert broker.counts(["q"])["q"] == QueueCounts(leased=2)
    # an older Delivery object of the same lease still finds the file after extend
    broker.release(stale)
    assert reserve_one(broker).attempt == 2
    with pytest.raises(LeaseLost):
        broker.ack(renewed)


def test_release_with_new_bytes_keeps_the_header(broker: FileBroker, tmp_path: Path) -> None:
    broker.publish("q", b"one", id="m1")
    broker.release(reserve_one(broker), message=b"two")
    (path,) = (tmp_path / "queue" / "queues" / "q" / "ready").iterdir()
    header, _, body = path.read_bytes().partition(b"\n")
    assert (json.loads(header)["id"], body) == ("m1", b"two")
    assert path.name.split(".")[1] == "1"  # one reservation so far


# -- concurrency -----------------------------------------------------------------------


def test_threads_on_several_instances_claim_each_message_once(url: str) -> None:
    # given 300 messages and 6 threads on 3 broker instances of one directory
    url += "?fsync=false"  # claims are renames; flushing is not what is tested here
    with open_broker(url) as producer:
        producer.publish_many([Outgoing("q", b"m", f"m{i:03}") for i in range(300)])
    brokers = [open_broker(url) for _ in range(3)]
    start = threading.Barrier(6)
    got: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def consume(index: int) -> None:
        broker = brokers[index % 3]
        try:
            start.wait(10)
            while deliveries := broker.reserve(["q"], timeout=0, lease=60, limit=1 + index % 4):
                for delivery in deliveries:
                    broker.ack(delivery)
                with lock:
                    got.extend(d.id for d in deliveries)
        except BaseException as exc:
            errors.append(exc)

    # when they all reserve and ack at once
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for broker in brokers:
        broker.close()
    # then every message was delivered exactly once
    assert errors == []
    duplicates = {id: n for id, n in Counter(got).items() if n > 1}
    assert duplicates == {}
    assert sorted(got) == [f"m{i:03}" for i in range(300)]


def test_racing_publishers_of_one_id_queue_it_once(url: str, clock: Clock) -> None:
    # given an id whose tombstone has expired, republished by 8 threads at once
    with open_broker(url, clock=clock) as broker:
        broker.publish("q", b"m", id="tick")
        broker.ack(reserve_one(broker))
        clock.advance(301)
    brokers = [open_broker(url, clock=clock) for _ in range(8)]
    start = threading.Barrier(8)
    results: list[bool] = []

    def publish(broker: FileBroker) -> None:
        start.wait(10)
        results.append(broker.publish("q", b"m", id="tick"))

    threads = [threading.Thread(target=publish, args=(b,)) for b in brokers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [False] * 7 + [True]
    assert brokers[0].counts(["q"])["q"] == QueueCounts(ready=1)
    for broker in brokers:
        broker.close()


def test_wait_wakes_on_a_put_from_another_thread(backend: FileBackend) -> None:
    def put_later(event: threading.Event) -> None:
        event.wait(10)
        backend.put(TaskRecord(id="t1", state=SUCCESS, result=1), expires=60)

    started = threading.Event()
    thread = threading.Thread(target=put_later, args=(started,))
    thread.start()
    began = time.monotonic()
    started.set()
    record = backend.wait("t1", timeout=30)
    thread.join(10)
    assert record is not None
    assert record.result == 1
    assert time.monotonic() - began < 5


def test_reserve_wakes_when_a_delayed_message_comes_due_on_the_real_clock(url: str) -> None:
    # On the real clock a delayed message wakes a blocked reserve near its not_before,
    # not only at the end of the timeout.
    with open_broker(url) as broker:
        broker.publish("q", b"m", id="m1", not_before=time.time() + 0.2)
        began = time.monotonic()
        deliveries = broker.reserve(["q"], timeout=20, lease=LEASE)
        waited = time.monotonic() - began
    assert [d.id for d in deliveries] == ["m1"]
    assert 0.1 <= waited < 5
