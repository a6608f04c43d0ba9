"""Everything a person reads: the rich consoles, log output, and how times are shown.

Imported only by commands that print, so `pluq --help` never pays for rich's renderers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from rich.console import Console

__all__ = [
    "ago",
    "duration",
    "err_console",
    "logging_to",
    "out_console",
    "state_style",
    "timestamp",
]

_STATE_STYLES = {
    "PENDING": "dim",
    "STARTED": "cyan",
    "RETRY": "yellow",
    "SUCCESS": "green",
    "FAILURE": "bold red",
    "REVOKED": "magenta",
    "LOST": "red",
}


def out_console() -> Console:
    """A console on stdout (rich follows `sys.stdout` as it is now)."""
    return Console()


def err_console() -> Console:
    """A console on stderr: banners, logs, progress bars and notes."""
    return Console(stderr=True)


def state_style(state: str) -> str:
    """The rich style a task state is shown in (FAILURE red, SUCCESS green, ...)."""
    return _STATE_STYLES.get(state, "")


def ago(seconds: float) -> str:
    """A short human duration in the past: "0.4 s ago", "3 min ago", "2.5 h ago"."""
    if seconds < 0:
        return "just now"
    return f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    """A short human duration: "12 ms", "3.4 s", "5 min", "2.5 h", "3 d"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86_400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def timestamp(ts: float | None) -> str:
    """A local time: "14:03:22" today, else "2024-05-02 14:03:22"; "-" for None."""
    if ts is None:
        return "-"
    moment = datetime.fromtimestamp(ts)
    if moment.date() == datetime.now().date():
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M:%S")


# -- logging -------------------------------------------------------------------------------


@contextmanager
def logging_to(console: Console, level: str, *, json_lines: bool) -> Iterator[None]:
    """Send log records at `level` and above to `console`.

    A terminal gets rich's handler (colours, aligned columns, rich tracebacks); a file or
    a pipe gets one plain line per record, never wrapped, so grep finds them; with
    `json_lines`, one JSON object per line. The lean worker process (`pluq.worker._run`)
    logs the same way without a console, so the handler is built there.
    """
    from pluq.worker._run import logging_on

    terminal = console if console.is_terminal else None
    with logging_on(console.file, level, json_lines=json_lines, terminal=terminal):
        yield
