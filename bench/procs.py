"""Processes read from /proc: a worker's session, its resident memory, and stopping it.

Every worker the bench starts is the leader of a new session (`start_new_session=True`), so
its whole tree - children, a forkserver, grandchildren re-parented after their parent
died - shares one session id, which is how it is measured and how it is stopped. No psutil:
`/proc/<pid>/stat` gives the parent, the session, the state and the RSS in one read.

RSS is summed over the session's processes. Pages shared between a parent and its forked
children count once per process, as `ps` and every peer's documentation count them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# A worker whose driver dies (a crash, a Ctrl-C) gets SIGTERM instead of living on.
from transports._servers import CAN_SIGNAL_ON_PARENT_DEATH, parent_death_signal

__all__ = [
    "PeakSampler",
    "ProcStat",
    "SessionWorker",
    "kill_session",
    "process_rss",
    "session_members",
    "session_rss",
]

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SAMPLE_INTERVAL = 0.1
"""Seconds between RSS samples: Python processes grow steadily, so this finds the peak."""
STOP_TIMEOUT = 20.0
"""Seconds a worker gets to stop after SIGTERM before its whole session is SIGKILLed."""


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of `/proc/<pid>/stat` the bench uses."""

    pid: int
    ppid: int
    session: int
    state: str
    rss: int  # bytes


def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:  # it exited between the listing and the read
        return None
    # The command name is in parentheses and may hold spaces or ")": split at the last one.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        session=int(fields[3]),
        state=fields[0].decode(),
        rss=int(fields[21]) * PAGE_SIZE,
    )


def _all_stats() -> list[ProcStat]:
    stats = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = _read_stat(int(name))
            if stat is not None:
                stats.append(stat)
    return stats


def session_members(session: int) -> list[ProcStat]:
    """The live (not zombie) processes of a session."""
    return [s for s in _all_stats() if s.session == session and s.state not in ("Z", "X")]


def session_rss(session: int) -> int:
    """The summed RSS, in bytes, of a session's live processes."""
    return sum(s.rss for s in session_members(session))


def process_rss(pid: int | None = None) -> int:
    """The RSS of one process (default: this one), in bytes."""
    stat = _read_stat(os.getpid() if pid is None else pid)
    return stat.rss if stat is not None else 0


class PeakSampler:
    """Samples a memory figure from a thread and keeps the largest value seen.

    with PeakSampler(lambda: session_rss(sid)) as peak:
        ...
    peak.peak          # bytes
    """

    def __init__(self, measure: Callable[[], int], interval: float = SAMPLE_INTERVAL) -> None:
        self.measure = measure
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-rss", daemon=True)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        self.peak = max(self.peak, self.measure())

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()  # the figure at the end counts too


def kill_session(session: int) -> list[int]:
    """SIGKILL every live process of a session; the pids that were still there."""
    left = [s.pid for s in session_members(session)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


class SessionWorker:
    """A worker command started as the leader of its own session, logging to a file.

    `stop()` sends SIGTERM (every peer's graceful stop), waits for the whole session to end,
    and SIGKILLs what is left after `STOP_TIMEOUT`; `leftovers` lists what it had to kill.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path,
        log: Path,
        pid_file: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log = log
        self.leftovers: list[int] = []
        with open(log, "ab") as out:
            self.started = time.monotonic()
            self.process = subprocess.Popen(
                self.argv,
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=parent_death_signal if CAN_SIGNAL_ON_PARENT_DEATH else None,
            )
        self.session = self.process.pid
        if pid_file is not None:
            # The orchestrator reads this after the driver exits, to kill what a crashed
            # driver left behind.
            with open(pid_file, "a") as f:
                f.write(f"{self.session}\n")

    def rss(self) -> int:
        return session_rss(self.session)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        give_up = time.monotonic() + STOP_TIMEOUT
        pause = 0.01
        while time.monotonic() < give_up:
            if self.process.poll() is not None and not session_members(self.session):
                break
            time.sleep(pause)  # polling /proc for the session to empty, with a deadline
            pause = min(pause * 2, 0.2)
        self.leftovers = kill_session(self.session)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.strip().splitlines()[-lines:])
