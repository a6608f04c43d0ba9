"""Everything a person reads: the rich consoles, log output, and how times are shown.

Imported only by commands that print, so `pluq --help` never pays for rich's renderers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

__all__ = [
    "JsonFormatter",
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

# What every LogRecord has; anything else on a record came through `extra=`.
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
# The worker's log lines start "task NAME[ID] ..." or "dead-lettering ID: ...": machines
# get the name and id as fields.
_TASK_PREFIX = re.compile(
    r"^(?:task (?P<task>[^\s\[\]]+)\[(?P<task_id>[^\]\s]+)\]|dead-lettering (?P<dead_id>\S+):)"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid, and
    every `extra=` field; `task` and `task_id` for the worker's task lines."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "pid": record.process,
        }
        match = _TASK_PREFIX.match(message)
        if match:
            fields = match.groupdict()
            task_id = fields["task_id"] or fields["dead_id"]
            if fields["task"]:
                data["task"] = fields["task"]
            data["task_id"] = task_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


@contextmanager
def logging_to(console: Console, level: str, *, json_lines: bool) -> Iterator[None]:
    """Send log records at `level` and above to `console`.

    A terminal gets rich's handler (colours, aligned columns, rich tracebacks); a file or
    a pipe gets one plain line per record, never wrapped, so grep finds them; with
    `json_lines`, one JSON object per line. The handler sits on the root logger, so the
    worker (`pluq.worker`), the scheduler (`pluq.beat`) and tasks that run in the worker's
    own process all show. Everything is put back as it was on exit.
    """
    handler: logging.Handler
    if json_lines:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(JsonFormatter())
    elif not console.is_terminal:
        handler = logging.StreamHandler(console.file)
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        from rich.logging import RichHandler

        handler = RichHandler(
            console=console,
            show_path=False,
            markup=False,
            rich_tracebacks=True,
            log_time_format="[%X]",
            keywords=["succeeded", "retry", "failed", "dead-lettering", "ready", "stopped"],
        )
        handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(min(previous or logging.WARNING, logging.getLevelName(level)))
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()
