"""The filesystem transport: a directory of message files, Maildir-style (`file://`).

Features:
    - Broker and ResultBackend in one directory tree; every process on the host that opens
      the same URL shares it. No server, no database, no dependency.
    - Every change of a message's state is one atomic `rename(2)` of its file: exactly one
      of several racing processes wins a claim, the others get ENOENT and try the next
      file. A new file is written under a temporary name in `tmp/` and renamed into place,
      so no reader ever sees half a message or half a result.
    - `reserve` and `wait` poll with an adaptive interval (1 ms doubling to 50 ms while
      idle, earlier when a delayed message or a lease comes due); a publish in the same
      process wakes them at once. Idle cost per queue every 50 ms: one listing of ready/
      and two stats (delayed/ and leased/ listings are cached while their mtime holds).
    - `incr` takes an `fcntl.flock` lock per counter. POSIX only (Linux, macOS, BSD).
    - Capabilities: shared between processes, not between hosts, durable. Network
      filesystems (NFS, SMB, sshfs) are NOT supported: rename atomicity and `flock` are not
      reliable there. Use a local disk.

URL grammar:
    file:///absolute/path/to/dir[?option=value&...]
    file://relative/dir[?...]        host + path, relative to the current directory when the
                                     URL is opened (case kept); file://~/dir is in $HOME
    `file://` alone is an error: the directory must be named.

Options:
    prefix          a namespace inside the directory (tenants, tests): {dir}/{prefix}/...
    dedupe_window   seconds an acknowledged or cancelled id stays known to `publish`
                    (default 300)
    fsync           true (default) | false. With false, nothing is flushed to disk: a
                    process crash still loses nothing, but a power loss or kernel crash
                    may lose or empty recently published messages and results. For tests
                    and benchmarks: it saves two flushes per publish (measured on an ext4
                    VM disk: 9 ms down to 3.6 ms per publish; tmpfs has nothing to flush).

Layout ({root} is {dir}, or {dir}/{prefix}; names are encoded, see below):
    tmp/                          files being written; renamed into place when complete
    ids/{id}                      the id index: created with O_EXCL at publish, holds
                                  {"id", "queue"}; kept while the message is ready,
                                  delayed, leased or dead
    done/{id}                     tombstones of acknowledged or cancelled ids; the file's
                                  mtime is the clock time the id is forgotten (purge and
                                  purge_dead forget their ids at once)
    ids.lock                      flock taken only to forget an id: its tombstone expired,
                                  or its index was left by a publish that died
    queues/{queue}/name           the queue's name
    queues/{queue}/ready/{t}.{attempt}.{lease}.{id}.msg     t: when it became ready
    queues/{queue}/delayed/{t}.{attempt}.{lease}.{id}.msg   t: not_before
    queues/{queue}/leased/{t}.{attempt}.{lease}.{id}.msg    t: lease deadline
    queues/{queue}/dead/{t}.{attempt}.-.{id}.msg            t: when it died
    results/{id}.json             TaskRecord.to_json() plus "expires_at": `cat`, `jq`
    counters/{key}.json, .lock    {"key", "value", "expires_at"} and its flock file
    workers/{id}.json             a WorkerInfo plus "expires_at"

    Times in names are microseconds on the broker's clock, zero-padded to 20 digits, so a
    sorted listing is time order. `attempt` counts reservations; `lease` is the lease_id
    of the current (leased) or last expired reservation, "-" for none. A .msg file is one
    JSON header line ({"id", "queue", "published_at"} and, when dead, "reason" and
    "dead_at") followed by the message bytes. Folders are 0700, files 0600.

    Names (ids, queues, prefix, counter keys) that are plain lower-case [a-z0-9._-] are
    used as they are; others are percent-encoded byte by byte (lower-case hex, so a
    case-insensitive filesystem never folds two ids into one), and names that would be
    longer than 120 characters become "%%" + their SHA-256. The id itself is always inside
    the file.

Ordering: FIFO per queue by the time a message became ready (published, released, due, or
its lease expired), to the microsecond of the clock; within one process publishes are
strictly ordered; messages that became ready in the same microsecond in different
processes are ordered by id. An expired lease goes back at its deadline's place.

Durability (fsync=true): a publish fsyncs the message file before the rename and the
folder after it, before returning True; results and counters likewise (`publish_many`
and `put_many` fsync each file, and the folder once per batch). Heartbeats, claims, acks
and moves are not flushed: after a power loss they may be undone, which redelivers a
message (at-least-once), never loses one. A process that dies half-way
through any operation leaves a state that heals by itself: a message rewritten for release
or dead_letter is pinned under a private lease that expires; an index entry whose
tombstone expired is cleared by the next publisher of that id; an index entry left by a
publish that died before its rename (that publish never returned True) is reclaimed after
an hour; temporary files older than an hour are removed by any broker.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar, Final, ParamSpec, TypeVar
from urllib.parse import unquote, urlsplit

from pluq.backend import ResultBackend, TaskRecord
from pluq.broker import (
    Broker,
    Capabilities,
    Clock,
    DeadLetter,
    Delivery,
    Outgoing,
    QueueCounts,
    WorkerInfo,
)
from pluq.errors import ConfigurationError, LeaseLost, TransportError
from pluq.registry import URL

__all__ = ["FileBackend", "FileBroker", "FileTransport"]

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_DEDUPE_WINDOW: Final = 300.0
CAPABILITIES: Final = Capabilities(
    shared_between_processes=True, shared_between_hosts=False, durable=True
)
_FORMS: Final = "file:///absolute/dir or file://relative/dir"

_MIN_PAUSE: Final = 0.001
_MAX_PAUSE: Final = 0.05
_PIN_SECONDS: Final = 60.0
"""Clock seconds a message is held (pinned) while its file is rewritten; if this process
dies meanwhile, the message is ready again after that."""
_RACY_NS: Final = 2_000_000_000
"""A cached folder listing is trusted only if the folder had not changed for this long
before it was listed: mtimes are coarse (a clock tick, or a second on some filesystems)."""
_MAINTENANCE_EVERY: Final = 30.0
_TMP_MAX_AGE: Final = 3600.0
_SHRINK_OVER: Final = 64 * 1024
_MAX_NAME: Final = 120
_MAX_US: Final = 10**20 - 1
_PLAIN: Final = re.compile(r"[a-z0-9_-][a-z0-9._-]*")
_SAFE: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789._-")
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_NO_LEASE: Final = "-"


# -- names -----------------------------------------------------------------------------


def _encode(text: str) -> str:
    """A file name for any string: unique, reversible unless hashed, never '.' or '..'."""
    if len(text) <= _MAX_NAME and _PLAIN.fullmatch(text):
        return text
    raw = text.encode("utf-8", "surrogatepass")
    encoded = "".join(
        chr(b) if b in _SAFE and not (i == 0 and b == ord(".")) else f"%{b:02x}"
        for i, b in enumerate(raw)
    )
    if len(encoded) > _MAX_NAME:
        return "%%" + hashlib.sha256(raw).hexdigest()
    return encoded or "%"


def _decode(name: str) -> str | None:
    """The string `_encode` made `name` from, or None when it was hashed."""
    if name.startswith("%%"):
        return None
    if name == "%":
        return ""
    return unquote(name, errors="surrogatepass")


def _us(t: float) -> int:
    """Clock seconds as whole microseconds for a file name."""
    if not math.isfinite(t):
        raise ValueError(f"a time must be a finite number of seconds, not {t!r}")
    return min(max(round(t * 1_000_000), 0), _MAX_US)


def _msg_name(t_us: int, attempt: int, lease: str, e: str) -> str:
    return f"{t_us:020d}.{attempt}.{lease}.{e}.msg"


@dataclass(frozen=True, slots=True)
class _Name:
    t_us: int
    attempt: int
    lease: str
    e: str

    @classmethod
    def parse(cls, name: str) -> _Name | None:
        if not name.endswith(".msg"):
            return None
        fields = name[:-4].split(".", 3)
        if len(fields) != 4 or not all(f.isascii() and f.isdigit() for f in fields[:2]):
            return None
        return cls(int(fields[0]), int(fields[1]), fields[2], fields[3])


def _pack(header: dict[str, Any], body: bytes) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def _unpack(data: bytes) -> tuple[dict[str, Any], bytes]:
    line, newline, body = data.partition(b"\n")
    with contextlib.suppress(ValueError):
        header = json.loads(line)
        if newline and isinstance(header, dict) and isinstance(header.get("id"), str):
            return header, body
    return {}, data  # not written by pluq: the whole file is the message


# -- configuration ---------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not value >= 0 or math.isinf(value):  # also rejects nan
        raise ValueError("expected a number of seconds >= 0")
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


_OPTIONS: Final = {"prefix": str, "dedupe_window": _seconds, "fsync": _boolean}


@dataclass(frozen=True, slots=True)
class _Config:
    url: URL
    root: str
    dedupe_window: float
    fsync: bool


def _config(url: URL) -> _Config:
    options = url.options(_OPTIONS)
    if url.username or url.password or url.port is not None:
        raise ConfigurationError(
            f"{url.redacted}: a file:// URL names a directory, not a server; write {_FORMS}"
        )
    netloc = unquote(urlsplit(url.raw).netloc)  # not url.host, which is lower-cased
    path = netloc + url.path
    if not path:
        raise ConfigurationError(
            f"{url.redacted}: name the queue directory: {_FORMS} (relative to the current "
            f"directory), e.g. file:///var/spool/pluq or file://queue"
        )
    directory = os.path.abspath(os.path.expanduser(path))
    prefix = options.get("prefix", "")
    return _Config(
        url=url,
        root=os.path.join(directory, _encode(prefix)) if prefix else directory,
        dedupe_window=options.get("dedupe_window", DEFAULT_DEDUPE_WINDOW),
        fsync=options.get("fsync", True),
    )


# -- errors ----------------------------------------------------------------------------

_HINTS: Final = {
    errno.ENOSPC: "the disk is full: free space on the filesystem that holds it; nothing "
    "was half-written, so retrying works once there is room",
    errno.EDQUOT: "the disk quota is exhausted: free space or raise the quota; nothing was "
    "half-written, so retrying works once there is room",
    errno.EACCES: "this user may not write there: the folder and everything under it must "
    "belong to the user running pluq (folders 0700, files 0600)",
    errno.EROFS: "the filesystem is read-only: remount it read-write or choose another directory",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def _error(action: str, root: str, exc: OSError) -> TransportError:
    hint = _HINTS.get(exc.errno or 0, "check that it exists, is on a local disk and is writable")
    where = f" ({exc.filename})" if exc.filename else ""
    return TransportError(
        f"file:// transport could not {action} in {root}: {exc.strerror or exc}{where}; {hint}"
    )


def _translated(action: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn an OSError escaping a public method into a TransportError that says what to do."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except OSError as exc:
                raise _error(action, getattr(args[0], "root", "?"), exc) from exc

        return wrapper

    return decorate


class _Gone(Exception):
    """The file a lease or a claim pointed at is no longer there (someone else moved it)."""


# -- files -----------------------------------------------------------------------------


def _unlink_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Files:
    """The operations every part of the transport builds on; holds no open descriptors."""

    def __init__(self, config: _Config, *folders: str) -> None:
        self.config = config
        self.root = config.root
        self.tmp = os.path.join(self.root, "tmp")
        try:
            for folder in ("tmp", *folders):
                self.mkdir(os.path.join(self.root, folder))
        except OSError as exc:
            raise ConfigurationError(
                f"{config.url.redacted}: cannot use {self.root} as a pluq directory "
                f"({exc.strerror or exc}); choose a local directory this user can create "
                f"and write"
            ) from exc

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def mkdir(self, path: str) -> None:
        """Create `path` (and missing parents) as 0700, whatever the umask."""
        try:
            os.mkdir(path, _DIR_MODE)
        except FileExistsError:
            return
        except FileNotFoundError:
            self.mkdir(os.path.dirname(path))
            try:
                os.mkdir(path, _DIR_MODE)
            except FileExistsError:
                return
        os.chmod(path, _DIR_MODE)

    def tmp_path(self) -> str:
        return os.path.join(self.tmp, f"{os.getpid()}.{secrets.token_hex(8)}.tmp")

    def create(self, path: str, data: bytes, *, sync: bool = False) -> None:
        """Create a new file (0600) holding `data`; FileExistsError if it exists already."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
        try:
            try:
                os.fchmod(fd, _FILE_MODE)
                _write_all(fd, data)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quiet(path)  # never leave half a file behind (ENOSPC)
            raise

    def write(
        self, path: str, data: bytes, *, mtime: float | None = None, sync: bool = True
    ) -> None:
        """Replace `path` atomically: write a temporary file, fsync it (if `sync` and the
        URL's fsync option), rename it over."""
        tmp = self.tmp_path()
        self.create(tmp, data, sync=sync and self.config.fsync)
        try:
            if mtime is not None:
                os.utime(tmp, (mtime, mtime))
            os.replace(tmp, path)
        except BaseException:
            _unlink_quiet(tmp)
            raise

    def sync_dir(self, path: str) -> None:
        if self.config.fsync:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove_if_same(self, path: str, ino: int) -> bool:
        """Delete `path` only if it is still the inode `ino` (not a newer replacement)."""
        aside = self.tmp_path()
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if os.stat(aside).st_ino == ino:
            os.unlink(aside)
            return True
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)  # a newer file was put meanwhile: put it back
        os.unlink(aside)
        return False

    @contextlib.contextmanager
    def flock(self, path: str) -> Iterator[None]:
        """Hold an exclusive `flock` on the lock file `path` (created if missing).

        A lock file may be deleted by its holder; whoever locked the deleted inode sees
        that the path now names another (or no) file and locks again.
        """
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _FILE_MODE)
            try:
                os.fchmod(fd, _FILE_MODE)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = os.fstat(fd)
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                if current is not None and (current.st_ino, current.st_dev) == (
                    held.st_ino,
                    held.st_dev,
                ):
                    yield
                    return
            finally:
                os.close(fd)  # also releases the lock


def _maybe(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class _Wakeup:
    """Wakes this process's waiters on one root when this process changes it."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.generation = 0

    def notify(self) -> None:
        with self.cond:
            self.generation += 1
            self.cond.notify_all()

    def wait(self, generation: int, seconds: float) -> None:
        with self.cond:
            if self.generation == generation:
                self.cond.wait(seconds)


class _Process:
    """Per-process state of each root: in-process wake-ups and the publish sequence."""

    def __init__(self, last_us: dict[str, int] | None = None) -> None:
        self.lock = threading.Lock()
        self.wakeups: dict[str, _Wakeup] = {}
        self.last_us: dict[str, int] = dict(last_us or {})

    def wakeup(self, root: str) -> _Wakeup:
        with self.lock:
            return self.wakeups.setdefault(root, _Wakeup())

    def sequence(self, root: str, now: float) -> int:
        """Microseconds of `now`, strictly increasing per root within this process (FIFO
        even when the clock stands still or steps back)."""
        with self.lock:
            us = self.last_us[root] = max(_us(now), self.last_us.get(root, -1) + 1)
            return us


_process = _Process()


def _after_fork() -> None:
    # A lock held by another thread at fork time would stay held in the child forever.
    global _process
    _process = _Process(_process.last_us)


os.register_at_fork(after_in_child=_after_fork)


def _adaptive_wait(
    root: str, attempt: Callable[[], tuple[R | None, float | None]], timeout: float | None
) -> R | None:
    """Call `attempt` until it returns a value or `timeout` real seconds pass.

    `attempt` returns (value or None, clock seconds until something comes due or None).
    Between calls we sleep 1 ms doubling to 50 ms, less when something comes due sooner; a
    change made by this process wakes us at once.
    """
    give_up = None if timeout is None else time.monotonic() + max(timeout, 0.0)
    pause = _MIN_PAUSE
    while True:
        wakeup = _process.wakeup(root)
        generation = wakeup.generation
        value, due_in = attempt()
        if value is not None:
            return value
        wait = pause
        if give_up is not None:
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                return None
            wait = min(wait, remaining)
        if due_in is not None:
            wait = min(wait, max(due_in, _MIN_PAUSE))
        wakeup.wait(generation, wait)
        pause = min(pause * 2, _MAX_PAUSE)


@dataclass(frozen=True, slots=True)
class _Listing:
    mtime_ns: int
    listed_ns: int
    names: list[str]


# -- broker ----------------------------------------------------------------------------


class FileBroker(Broker):
    """Queues as folders of message files; see the module docstring."""

    capabilities = CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock = time.time) -> None:
        self._config = _config(url)
        self._fs = _Files(self._config, "ids", "done", "queues", "workers")
        self.root = self._fs.root
        self._clock = clock
        self._window = self._config.dedupe_window
        # Plain dict/set updates: atomic under the GIL, and harmless to redo after a race.
        self._queues: set[str] = set()
        self._listings: dict[str, _Listing] = {}
        self._next_maintenance = 0.0

    def __repr__(self) -> str:
        return f"<FileBroker {self.root}>"

    # -- helpers -------------------------------------------------------------------------

    def _qdir(self, queue: str, *sub: str) -> str:
        return self._fs.path("queues", _encode(queue), *sub)

    def _ensure_queue(self, queue: str) -> None:
        qdir = self._qdir(queue)
        if qdir in self._queues:
            return
        for sub in ("ready", "delayed", "leased", "dead"):
            self._fs.mkdir(os.path.join(qdir, sub))
        name = os.path.join(qdir, "name")
        if not os.path.exists(name):
            self._fs.write(name, queue.encode("utf-8", "surrogatepass"))
        self._queues.add(qdir)

    def _queue_names(self) -> list[str]:
        names = []
        for entry in _listdir(self._fs.path("queues")):
            try:
                names.append(
                    _read(self._fs.path("queues", entry, "name")).decode("utf-8", "surrogatepass")
                )
            except FileNotFoundError:
                decoded = _decode(entry)
                if decoded is not None:
                    names.append(decoded)
        return sorted(names)

    def _listing(self, path: str) -> list[str]:
        """Sorted names in `path`, cached while the folder's mtime says it did not change."""
        st = _maybe(path)
        if st is None:
            return []
        cached = self._listings.get(path)
        if (
            cached is not None
            and cached.mtime_ns == st.st_mtime_ns
            and st.st_mtime_ns < cached.listed_ns - _RACY_NS
        ):
            return cached.names
        listed_ns = time.time_ns()
        names = _listdir(path)
        self._listings[path] = _Listing(st.st_mtime_ns, listed_ns, names)
        return names

    def _wake(self) -> None:
        _process.wakeup(self.root).notify()

    def _tombstone(self, e: str) -> float | None:
        """The clock time the acked id `e` is forgotten, or None without a tombstone."""
        st = _maybe(self._fs.path("done", e))
        return None if st is None else st.st_mtime_ns / 1e9

    def _retire(self, path: str, e: str, forget_at: float, now: float) -> bool:
        """Take the message file `path` away for good, leaving a tombstone for its id.

        The rename into done/ is the claim (False if someone else moved `path` first); the
        tombstone's mtime, set before the rename, says when the id may be reused.
        """
        done = self._fs.path("done", e)
        try:
            os.utime(path, (forget_at, forget_at))
            os.rename(path, done)
        except FileNotFoundError:
            return False
        if forget_at > now and os.stat(done).st_size > _SHRINK_OVER:
            self._fs.write(done, b"", mtime=forget_at, sync=False)  # free the disk space
        _unlink_quiet(self._fs.path("ids", e))
        if forget_at <= now:
            _unlink_quiet(done)
        return True

    def _maintain(self) -> None:
        """Now and then: drop stale temporary files, expired tombstones and workers."""
        if time.monotonic() < self._next_maintenance:
            return
        self._next_maintenance = time.monotonic() + _MAINTENANCE_EVERY
        old = time.time() - _TMP_MAX_AGE
        for name in _listdir(self._fs.tmp):
            st = _maybe(os.path.join(self._fs.tmp, name))
            if st is not None and st.st_mtime < old:
                _unlink_quiet(os.path.join(self._fs.tmp, name))
        now = self._clock()
        expired = []
        for e in _listdir(self._fs.path("done")):
            forget_at = self._tombstone(e)
            if forget_at is not None and forget_at <= now:
                expired.append(e)
        if expired:
            with self._fs.flock(self._fs.path("ids.lock")):
                for e in expired:
                    forget_at = self._tombstone(e)
                    # With an index beside it, a publisher clears both (see _claim_id).
                    stale = forget_at is not None and forget_at <= now
                    if stale and not os.path.exists(self._fs.path("ids", e)):
                        _unlink_quiet(self._fs.path("done", e))
        self.workers()

    # -- producer side -------------------------------------------------------------------

    def _orphan(self, e: str) -> bool:
        """Whether ids/{e} is a leftover of a publish that crashed before its rename.

        Only an index older than an hour is examined (a fresh one may belong to a publish
        in progress): it is an orphan when no folder of its queue holds the message. Two
        passes, so that a message moving between folders meanwhile is not missed.
        """
        st = _maybe(self._fs.path("ids", e))
        if st is None or time.time() - st.st_mtime < _TMP_MAX_AGE:
            return False
        try:
            queue = json.loads(_read(self._fs.path("ids", e)))["queue"]
        except FileNotFoundError:
            return False
        except (ValueError, KeyError, TypeError):
            return True  # the crash came before the index was even written
        for _ in range(2):
            for place in ("ready", "delayed", "leased", "dead"):
                for name in _listdir(self._qdir(queue, place)):
                    n = _Name.parse(name)
                    if n is not None and n.e == e:
                        return False
        return True

    def _claim_id(self, e: str, id: str, queue: str, now: float) -> bool:
        """Make `id` known (create ids/{e}); False if it is known already."""
        index = self._fs.path("ids", e)
        content = json.dumps({"id": id, "queue": queue}).encode()
        created = False
        if self._tombstone(e) is None:  # the common case: a new id, no lock taken
            try:
                self._fs.create(index, content)
            except FileExistsError:
                if not self._orphan(e):
                    return False
                with self._fs.flock(self._fs.path("ids.lock")):
                    if self._orphan(e):  # again, under the lock: only one publisher wins
                        _unlink_quiet(index)
                return self._claim_id(e, id, queue, now)
            if self._tombstone(e) is None:
                return True
            created = True  # an ack of the same id landed between our two looks
        # A tombstone exists: whether it still holds, and forgetting it, are decided under
        # the lock, so that two publishers never both see an expired one and both publish.
        with self._fs.flock(self._fs.path("ids.lock")):
            forget_at = self._tombstone(e)
            if forget_at is not None and forget_at > now:
                if created:
                    _unlink_quiet(index)
                return False
            if forget_at is not None:
                if not created:
                    _unlink_quiet(index)  # a leftover of the message the tombstone ended
                _unlink_quiet(self._fs.path("done", e))
            if created:
                return True
            try:
                self._fs.create(index, content)
            except FileExistsError:
                return False
            return True

    def _publish(self, m: Outgoing, now: float) -> str | None:
        """Publish one message; the folder it went to (to sync), or None if id is known."""
        not_before = None if m.not_before is None else _us(m.not_before)
        e = _encode(m.id)
        self._ensure_queue(m.queue)
        if not self._claim_id(e, m.id, m.queue, now):
            return None
        try:
            data = _pack({"id": m.id, "queue": m.queue, "published_at": now}, bytes(m.message))
            if not_before is not None and not_before > _us(now):
                path = self._qdir(m.queue, "delayed", _msg_name(not_before, 0, _NO_LEASE, e))
            else:
                t = _process.sequence(self.root, now)
                path = self._qdir(m.queue, "ready", _msg_name(t, 0, _NO_LEASE, e))
            self._fs.write(path, data)
        except BaseException:
            _unlink_quiet(self._fs.path("ids", e))  # so that a retry can publish it
            raise
        return os.path.dirname(path)

    @_translated("publish")
    def publish(
        self, queue: str, message: bytes, *, id: str, not_before: float | None = None
    ) -> bool:
        return self.publish_many([Outgoing(queue, message, id, not_before)])[0]

    @_translated("publish")
    def publish_many(self, messages: Iterable[Outgoing]) -> list[bool]:
        now = self._clock()
        folders: dict[str, None] = {}
        results = []
        try:
            for m in messages:
                folder = self._publish(m, now)
                results.append(folder is not None)
                if folder is not None:
                    folders[folder] = None
        finally:
            # One folder fsync per batch, before saying True; also when a later message
            # failed, since the caller may retry and then hear False for the earlier ones.
            for folder in folders:
                self._fs.sync_dir(folder)
            if folders:
                self._wake()
        self._maintain()
        return results

    # -- consumer side -------------------------------------------------------------------

    def _settle(self, queue: str, now: float) -> float | None:
        """Move due delayed messages and expired leases of `queue` to ready.

        Returns the clock time the next one comes due, or None.
        """
        now_us = _us(now)
        due: list[int] = []
        for place in ("delayed", "leased"):
            folder = self._qdir(queue, place)
            for name in self._listing(folder):
                n = _Name.parse(name)
                if n is None:
                    continue
                if n.t_us > now_us:
                    due.append(n.t_us)
                    break
                lease = n.lease if place == "leased" else _NO_LEASE
                # An expired lease keeps its lease_id in the ready name: until someone
                # reserves it again its holder may still ack, release or extend it.
                target = self._qdir(queue, "ready", _msg_name(n.t_us, n.attempt, lease, n.e))
                with contextlib.suppress(FileNotFoundError):
                    os.rename(os.path.join(folder, name), target)
        return min(due) / 1e6 if due else None

    def _claim(self, queue: str, now: float, lease: float, limit: int) -> list[Delivery]:
        ready = self._qdir(queue, "ready")
        taken: list[Delivery] = []
        for name in _listdir(ready):  # one listing per call, whatever the limit
            n = _Name.parse(name)
            if n is None:
                continue
            lease_id = secrets.token_hex(12)
            deadline = _us(now + lease)
            path = self._qdir(queue, "leased", _msg_name(deadline, n.attempt + 1, lease_id, n.e))
            try:
                os.rename(os.path.join(ready, name), path)  # the claim: one process wins
                header, body = _unpack(_read(path))
            except FileNotFoundError:
                continue  # another consumer was faster
            taken.append(
                Delivery(
                    id=header.get("id", _decode(n.e) or n.e),
                    queue=queue,
                    message=body,
                    attempt=n.attempt + 1,
                    lease_id=lease_id,
                    lease_deadline=deadline / 1e6,
                )
            )
            if len(taken) == limit:
                break
        return taken

    def _reserve_now(
        self, queues: Sequence[str], lease: float, limit: int
    ) -> tuple[list[Delivery] | None, float | None]:
        now = self._clock()
        taken: list[Delivery] = []
        due: list[float] = []
        for queue in queues:
            next_due = self._settle(queue, now)
            if next_due is not None:
                due.append(next_due)
            taken += self._claim(queue, now, lease, limit - len(taken))
            if len(taken) >= limit:
                break
        self._maintain()
        return (taken or None), (min(due) - now if due else None)

    @_translated("reserve messages")
    def reserve(
        self, queues: Sequence[str], *, timeout: float, lease: float, limit: int = 1
    ) -> list[Delivery]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        found = _adaptive_wait(self.root, lambda: self._reserve_now(queues, lease, limit), timeout)
        return found or []

    def _act(self, delivery: Delivery, op: Callable[[str, _Name], R]) -> R:
        """Run `op(path, name)` on the file `delivery` holds, or raise LeaseLost.

        The fast path is the name the delivery implies; after an `extend` from another
        delivery object, or an expired lease that nobody reserved again (back in ready/
        under the same lease_id), the file is found by listing.
        """
        e = _encode(delivery.id)
        leased = self._qdir(delivery.queue, "leased")
        fast = _msg_name(_us(delivery.lease_deadline), delivery.attempt, delivery.lease_id, e)
        candidates = [(leased, [fast]), (leased, None), (self._qdir(delivery.queue, "ready"), None)]
        for folder, names in candidates:
            for name in names if names is not None else _listdir(folder):
                n = _Name.parse(name)
                if n is None or (n.e, n.lease) != (e, delivery.lease_id):
                    continue
                try:
                    return op(os.path.join(folder, name), n)
                except _Gone:
                    continue
        raise LeaseLost(
            f"the lease {delivery.lease_id} on message {delivery.id!r} of queue "
            f"{delivery.queue!r} is no longer held (it expired and the message was reserved "
            f"again, or it was already acknowledged, released or dead-lettered); do not act "
            f"on this delivery again"
        )

    def _move(self, path: str, target: str) -> None:
        try:
            os.rename(path, target)
        except FileNotFoundError as exc:
            raise _Gone from exc

    def _rewrite(
        self, path: str, n: _Name, now: float, edit: Callable[[dict[str, Any], bytes], bytes]
    ) -> str:
        """Pin the message (a private lease), replace its file with `edit(header, body)`.

        Returns the pinned path. The pin is the atomic claim; should this process die
        before the caller moves the file on, the pin expires and the message is ready
        again (at-least-once), never lost.
        """
        pinned = self._qdir_of(
            path,
            "leased",
            _msg_name(_us(now + _PIN_SECONDS), n.attempt, secrets.token_hex(12), n.e),
        )
        self._move(path, pinned)
        header, body = _unpack(_read(pinned))
        self._fs.write(pinned, edit(header, body))
        return pinned

    @staticmethod
    def _qdir_of(path: str, place: str, name: str) -> str:
        return os.path.join(os.path.dirname(os.path.dirname(path)), place, name)

    @_translated("acknowledge a message")
    def ack(self, delivery: Delivery) -> None:
        now = self._clock()

        def op(path: str, n: _Name) -> None:
            if not self._retire(path, n.e, now + self._window, now):
                raise _Gone

        self._act(delivery, op)

    def _back(self, path: str, n: _Name, not_before: float | None, now: float) -> str:
        if not_before is not None and _us(not_before) > _us(now):
            return self._qdir_of(
                path, "delayed", _msg_name(_us(not_before), n.attempt, _NO_LEASE, n.e)
            )
        t = _process.sequence(self.root, now)
        return self._qdir_of(path, "ready", _msg_name(t, n.attempt, _NO_LEASE, n.e))

    @_translated("release a message")
    def release(
        self, delivery: Delivery, *, not_before: float | None = None, message: bytes | None = None
    ) -> None:
        if not_before is not None:
            _us(not_before)  # reject nan before touching anything
        now = self._clock()

        def op(path: str, n: _Name) -> None:
            if message is not None:
                path = self._rewrite(path, n, now, lambda header, _: _pack(header, message))
            self._move(path, self._back(path, n, not_before, now))

        self._act(delivery, op)
        self._wake()

    @_translated("dead-letter a message")
    def dead_letter(self, delivery: Delivery, *, reason: str, message: bytes | None = None) -> None:
        now = self._clock()

        def edit(header: dict[str, Any], body: bytes) -> bytes:
            header = {"id": delivery.id, "queue": delivery.queue, **header}
            header.update(reason=reason, dead_at=now)
            return _pack(header, body if message is None else message)

        def op(path: str, n: _Name) -> None:
            pinned = self._rewrite(path, n, now, edit)
            dead = _msg_name(_process.sequence(self.root, now), n.attempt, _NO_LEASE, n.e)
            self._move(pinned, self._qdir_of(pinned, "dead", dead))

        self._act(delivery, op)

    @_translated("extend a lease")
    def extend(self, delivery: Delivery, *, lease: float) -> Delivery:
        deadline = _us(self._clock() + lease)

        def op(path: str, n: _Name) -> None:
            name = _msg_name(deadline, n.attempt, delivery.lease_id, n.e)
            self._move(path, self._qdir_of(path, "leased", name))

        self._act(delivery, op)
        return replace(delivery, lease_deadline=deadline / 1e6)

    @_translated("cancel a message")
    def cancel(self, id: str) -> bool:
        e = _encode(id)
        try:
            queue = json.loads(_read(self._fs.path("ids", e)))["queue"]
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return False  # unknown, done, or being published this very moment
        now = self._clock()
        self._settle(queue, now)  # an expired lease counts as ready: cancel it too
        for place in ("delayed", "ready"):  # in the order a promotion moves them
            folder = self._qdir(queue, place)
            for name in _listdir(folder):
                n = _Name.parse(name)
                path = os.path.join(folder, name)
                if n is not None and n.e == e and self._retire(path, e, now + self._window, now):
                    return True
        return False

    # -- admin ---------------------------------------------------------------------------

    @_translated("count messages")
    def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueCounts]:
        now_us = _us(self._clock())
        result = {}
        for queue in self._queue_names() if queues is None else queues:
            tally = {"ready": 0, "delayed": 0, "leased": 0, "dead": 0}
            for place in tally:
                for name in _listdir(self._qdir(queue, place)):
                    n = _Name.parse(name)
                    if n is None:
                        continue
                    due = place in ("delayed", "leased") and n.t_us <= now_us
                    tally["ready" if due else place] += 1
            result[queue] = QueueCounts(**tally)
        return result

    @_translated("purge a queue")
    def purge(self, queue: str) -> int:
        now = self._clock()
        self._settle(queue, now)
        removed = 0
        for place in ("ready", "delayed"):
            folder = self._qdir(queue, place)
            for name in _listdir(folder):
                n = _Name.parse(name)
                if n is not None and self._retire(os.path.join(folder, name), n.e, now, now):
                    removed += 1
        return removed

    def _dead(
        self, ids: Sequence[str] | None, only: str | None = None
    ) -> Iterator[tuple[str, str, _Name]]:
        """(queue, path, name) of the dead messages named by `ids` (all when None), of
        the queue `only` or of every queue."""
        wanted = None if ids is None else {_encode(i) for i in ids}
        for queue in self._queue_names() if only is None else [only]:
            folder = self._qdir(queue, "dead")
            for name in _listdir(folder):
                n = _Name.parse(name)
                if n is not None and (wanted is None or n.e in wanted):
                    yield queue, os.path.join(folder, name), n

    @_translated("list dead letters")
    def dead_letters(self, queue: str | None = None) -> list[DeadLetter]:
        letters = []
        for name_queue, path, n in self._dead(None, queue):
            try:
                header, body = _unpack(_read(path))
            except FileNotFoundError:
                continue
            letter = DeadLetter(
                id=header.get("id", _decode(n.e) or n.e),
                queue=name_queue,
                message=body,
                reason=str(header.get("reason", "")),
                attempt=n.attempt,
                dead_at=float(header.get("dead_at", n.t_us / 1e6)),
            )
            letters.append((n.t_us, letter))
        return [letter for _, letter in sorted(letters, key=lambda pair: pair[0])]

    @_translated("retry dead letters")
    def retry_dead(self, ids: Sequence[str] | None = None) -> int:
        now = self._clock()
        moved = 0

        def edit(header: dict[str, Any], body: bytes) -> bytes:
            header.pop("reason", None)
            header.pop("dead_at", None)
            return _pack(header, body)

        for _, path, n in self._dead(ids):
            try:
                pinned = self._rewrite(path, n, now, edit)
                self._move(pinned, self._back(pinned, n, None, now))
            except _Gone:
                continue
            moved += 1
        if moved:
            self._wake()
        return moved

    @_translated("purge dead letters")
    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        now = self._clock()
        return sum(self._retire(path, n.e, now, now) for _, path, n in self._dead(ids))

    @_translated("record a worker heartbeat")
    def heartbeat(self, worker: WorkerInfo, *, ttl: float) -> None:
        document = {**asdict(worker), "expires_at": self._clock() + ttl}
        data = json.dumps(document, separators=(",", ":")).encode()
        # Not flushed: a heartbeat is worthless after a power loss anyway.
        self._fs.write(self._fs.path("workers", _encode(worker.id) + ".json"), data, sync=False)

    @_translated("unregister a worker")
    def unregister(self, worker_id: str) -> None:
        _unlink_quiet(self._fs.path("workers", _encode(worker_id) + ".json"))

    @_translated("list workers")
    def workers(self) -> list[WorkerInfo]:
        now = self._clock()
        alive = []
        for name in _listdir(self._fs.path("workers")):
            path = self._fs.path("workers", name)
            try:
                with open(path, "rb") as f:
                    ino = os.fstat(f.fileno()).st_ino
                    document = json.loads(f.read())
                expires_at = float(document.pop("expires_at"))
                document["queues"] = tuple(document.get("queues", ()))
                info = WorkerInfo(**document)
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError):
                continue  # not a heartbeat file this version wrote
            if expires_at <= now:
                self._fs.remove_if_same(path, ino)
            else:
                alive.append(info)
        return alive


# -- result backend --------------------------------------------------------------------


class FileBackend(ResultBackend):
    """One JSON file per task record; see the module docstring."""

    capabilities = CAPABILITIES

    def __init__(self, url: URL, *, clock: Clock = time.time) -> None:
        self._config = _config(url)
        self._fs = _Files(self._config, "results", "counters")
        self.root = self._fs.root
        self.clock = clock

    def __repr__(self) -> str:
        return f"<FileBackend {self.root}>"

    def _path(self, task_id: str) -> str:
        return self._fs.path("results", _encode(task_id) + ".json")

    def _load(self, path: str) -> tuple[dict[str, Any], int] | None:
        try:
            with open(path, "rb") as f:
                ino = os.fstat(f.fileno()).st_ino
                data = f.read()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(data)
            if not isinstance(document, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise TransportError(
                f"the result file {path} is not a pluq record ({exc}); delete it or restore "
                f"it from a backup"
            ) from exc
        return document, ino

    def _live(self, path: str, now: float) -> tuple[dict[str, Any] | None, bool]:
        """(the unexpired document or None, whether an expired file was deleted)."""
        loaded = self._load(path)
        if loaded is None:
            return None, False
        document, ino = loaded
        if float(document.pop("expires_at", math.inf)) <= now:
            return None, self._fs.remove_if_same(path, ino)  # a newer put is kept
        return document, False

    @_translated("read a result")
    def get(self, task_id: str) -> TaskRecord | None:
        document, _ = self._live(self._path(task_id), self.clock())
        return None if document is None else TaskRecord.from_dict(document)

    @_translated("store a result")
    def put(self, record: TaskRecord, *, expires: float) -> None:
        text = record.to_json({"expires_at": self.clock() + expires})
        self._fs.write(self._path(record.id), text.encode("utf-8", "surrogatepass"))
        self._fs.sync_dir(self._fs.path("results"))
        _process.wakeup(self.root).notify()

    @_translated("store results")
    def put_many(self, records: Sequence[TaskRecord], *, expires: float) -> None:
        if not records:
            return
        extra = {"expires_at": self.clock() + expires}
        # All encoded before any is written; then one folder fsync and one wake-up for the
        # batch instead of one per record (each file is still fsynced before its rename).
        texts = [record.to_json(extra) for record in records]
        for record, text in zip(records, texts, strict=True):
            self._fs.write(self._path(record.id), text.encode("utf-8", "surrogatepass"))
        self._fs.sync_dir(self._fs.path("results"))
        _process.wakeup(self.root).notify()

    @_translated("forget a result")
    def forget(self, task_id: str) -> bool:
        try:
            os.unlink(self._path(task_id))
        except FileNotFoundError:
            return False
        return True

    @_translated("wait for a result")
    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        def attempt() -> tuple[TaskRecord | None, float | None]:
            record = self.get(task_id)
            return (record if record is not None and record.ready else None), None

        return _adaptive_wait(self.root, attempt, timeout)

    @_translated("increment a counter")
    def incr(self, key: str, amount: int = 1, *, expires: float) -> int:
        e = _encode(key)
        path = self._fs.path("counters", e + ".json")
        with self._fs.flock(self._fs.path("counters", e + ".lock")):
            now = self.clock()
            value = 0
            with contextlib.suppress(FileNotFoundError):
                document = json.loads(_read(path))
                if float(document["expires_at"]) > now:
                    value = int(document["value"])
            value += amount
            document = {"key": key, "value": value, "expires_at": now + expires}
            self._fs.write(path, json.dumps(document, separators=(",", ":")).encode())
            self._fs.sync_dir(self._fs.path("counters"))
        return value

    @_translated("purge expired results")
    def purge_expired(self) -> int:
        now = self.clock()
        removed = 0
        for name in _listdir(self._fs.path("results")):
            if name.endswith(".json"):
                with contextlib.suppress(TransportError):  # a foreign file: leave it be
                    removed += self._live(self._fs.path("results", name), now)[1]
        counters = _listdir(self._fs.path("counters"))
        for base in sorted(
            {n.rsplit(".", 1)[0] for n in counters if n.endswith((".json", ".lock"))}
        ):
            path = self._fs.path("counters", base + ".json")
            lock = self._fs.path("counters", base + ".lock")
            with self._fs.flock(lock):
                try:
                    expired = float(json.loads(_read(path))["expires_at"]) <= now
                except FileNotFoundError:
                    expired = True
                except (ValueError, KeyError, TypeError):
                    continue  # a foreign file: leave it be
                if expired:
                    _unlink_quiet(path)
                    os.unlink(lock)  # while locked: a late locker of this inode will notice
        return removed


# -- transport -------------------------------------------------------------------------


class FileTransport:
    """`file:///dir`: message files and result files in a local directory."""

    schemes: ClassVar[tuple[str, ...]] = ("file",)
    capabilities: ClassVar[Capabilities] = CAPABILITIES

    @classmethod
    def broker(cls, url: URL, *, clock: Clock = time.time) -> FileBroker:
        return FileBroker(url, clock=clock)

    @classmethod
    def backend(cls, url: URL, *, clock: Clock = time.time) -> FileBackend:
        return FileBackend(url, clock=clock)
