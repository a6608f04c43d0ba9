"""Progress bars while waiting for results (a terminal or a Jupyter notebook, via rich)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pluq.backend import ResultBackend, TaskRecord


def wait_with_progress(
    backend: ResultBackend, ids: Sequence[str], timeout: float | None
) -> list[TaskRecord | None]:
    """Wait for every id to be ready (or the timeout), showing a bar of how many are done.

    Returns the ready records, None for those not ready in time.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    deadline = None if timeout is None else time.monotonic() + timeout
    done: dict[str, TaskRecord] = {}
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    ) as progress:
        bar = progress.add_task("waiting for results", total=len(ids))
        for task_id in ids:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            record = backend.wait(task_id, timeout=remaining)
            if record is None:
                break
            done[task_id] = record
            progress.update(bar, completed=len(done))
    return [done.get(i) for i in ids]
