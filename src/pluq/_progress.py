"""Progress bars while waiting for results (a terminal or a Jupyter notebook, via rich).

`AsyncResult.get(progress=True)` and `GroupResult.get(progress=True)` call
`wait_with_progress`. In a terminal it draws a rich progress bar. In a notebook rich needs
ipywidgets for a live bar; without them this module updates one output line in place
through IPython's display handles instead (rich would warn on every refresh).
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pluq.backend import FAILURE, RETRY, ResultBackend, TaskRecord

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["wait_with_progress"]

_SLICE = 0.25
"""Seconds one blocking wait lasts before every pending record is read again."""

Show = Callable[[int, str], None]


def wait_with_progress(
    backend: ResultBackend,
    ids: Sequence[str],
    timeout: float | None,
    *,
    console: Console | None = None,
) -> list[TaskRecord | None]:
    """Wait for every id to be ready (or the timeout), showing how many are done.

    Members count as they finish, in any order. Returns the ready records in the order
    of `ids`, None for those not ready in time.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(dict.fromkeys(ids))
    done: dict[str, TaskRecord] = {}
    with _display(console, len(pending)) as show:
        while True:
            records = backend.get_many(pending)
            for task_id, record in zip(pending, records, strict=True):
                if record is not None and record.ready:
                    done[task_id] = record
            pending = [i for i in pending if i not in done]
            show(len(done), _note(records, done))
            if not pending:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                break
            # Block on the first one still pending: the backend wakes us as soon as it is
            # ready, and the slice bounds how stale the count of the others can get.
            wait = _SLICE if remaining is None else min(_SLICE, remaining)
            backend.wait(pending[0], timeout=wait)
    return [done.get(i) for i in ids]


def _note(records: Sequence[TaskRecord | None], done: dict[str, TaskRecord]) -> str:
    """What to say beside the bar: one task's state, or how many failed so far."""
    failed = sum(1 for r in done.values() if r.state == FAILURE)
    if len(records) == 1 and records[0] is not None and not records[0].ready:
        record = records[0]
        state = record.state.lower()
        return f"{state} (retry {record.retries})" if record.state == RETRY else state
    return f"{failed} failed" if failed else ""


@contextmanager
def _display(console: Console | None, total: int) -> Iterator[Show]:
    from rich.console import Console

    console = console or Console()
    if console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        with _notebook_line(total) as show:
            yield show
        return

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        bar = progress.add_task("waiting for results", total=total)

        def show(completed: int, note: str) -> None:
            label = "waiting for results" + (f" · {note}" if note else "")
            progress.update(bar, completed=completed, description=label)

        yield show


@contextmanager
def _notebook_line(total: int) -> Iterator[Show]:
    """One line in a notebook's output, replaced in place as results come in."""
    from rich.text import Text

    display: Any = importlib.import_module("IPython.display").display
    started = time.monotonic()
    handle: Any = None

    def line(completed: int, note: str) -> Text:
        width = 30
        filled = width * completed // max(total, 1)
        extra = f" · {note}" if note else ""
        return Text.assemble(
            ("━" * filled, "green"),
            ("━" * (width - filled), "grey50"),
            f" {completed}/{total} results{extra} · {time.monotonic() - started:.1f} s",
        )

    def show(completed: int, note: str) -> None:
        nonlocal handle
        if handle is None:
            handle = display(line(completed, note), display_id=True)
        else:
            handle.update(line(completed, note))

    yield show
