"""`pluq._progress.wait_with_progress`: the bar behind `get(progress=True)`."""

from __future__ import annotations

import io
import sys
import threading
import types
from typing import Any

import pytest
from rich.console import Console

import pluq
from pluq._progress import wait_with_progress
from pluq.backend import ResultBackend, TaskRecord
from pluq.canvas import GroupResult


def done(task_id: str, value: Any = 1, state: str = "SUCCESS") -> TaskRecord:
    return TaskRecord(id=task_id, state=state, result=value, result_encoding="json")


def quiet() -> Console:
    return Console(file=io.StringIO(), width=100)


class WaitSpy:
    """A backend that announces when the progress loop blocks in `wait`."""

    def __init__(self, backend: ResultBackend) -> None:
        self.backend = backend
        self.waiting = threading.Event()

    def get_many(self, ids: list[str]) -> list[TaskRecord | None]:
        return self.backend.get_many(ids)

    def wait(self, task_id: str, *, timeout: float | None) -> TaskRecord | None:
        self.waiting.set()
        return self.backend.wait(task_id, timeout=timeout)


def test_returns_every_record_in_order_as_they_finish_in_any_order(
    memory_app: pluq.App,
) -> None:
    # given three tasks of which the middle one is still running
    backend = memory_app.backend
    backend.put(done("a", 1), expires=60)
    backend.put(done("c", 3), expires=60)
    spy = WaitSpy(backend)

    def finish_b() -> None:
        spy.waiting.wait(10)
        backend.put(done("b", 2), expires=60)

    thread = threading.Thread(target=finish_b)
    thread.start()
    # when we wait with a bar
    console = quiet()
    records = wait_with_progress(spy, ["a", "b", "c"], timeout=30, console=console)  # type: ignore[arg-type]
    thread.join()
    # then all three come back in the order asked, and the bar reached 3/3
    assert [r.result if r else None for r in records] == [1, 2, 3]
    assert "3/3" in console.file.getvalue()  # type: ignore[attr-defined]


def test_the_timeout_leaves_none_for_what_is_not_ready(memory_app: pluq.App) -> None:
    memory_app.backend.put(done("a"), expires=60)
    memory_app.backend.put(TaskRecord(id="b", state="STARTED"), expires=60)
    console = quiet()
    records = wait_with_progress(memory_app.backend, ["a", "b"], timeout=0.2, console=console)
    assert records[0] is not None and records[1] is None
    assert "1/2" in console.file.getvalue()  # type: ignore[attr-defined]


def test_a_single_task_shows_its_state(memory_app: pluq.App) -> None:
    memory_app.backend.put(TaskRecord(id="r", state="RETRY", retries=2), expires=60)
    console = quiet()
    wait_with_progress(memory_app.backend, ["r"], timeout=0.05, console=console)
    assert "retry (retry 2)" in console.file.getvalue()  # type: ignore[attr-defined]


def test_in_a_notebook_without_ipywidgets_one_output_line_is_updated(
    memory_app: pluq.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a notebook (rich detects it) where ipywidgets is not installed
    shown: list[str] = []

    class Handle:
        def update(self, obj: object) -> None:
            shown.append(str(obj))

    def display(obj: object, display_id: bool = False) -> Handle:
        assert display_id
        shown.append(str(obj))
        return Handle()

    ipython = types.ModuleType("IPython")
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.display = display  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    memory_app.backend.put(done("a"), expires=60)
    memory_app.backend.put(done("b"), expires=60)
    # when we wait with progress, no warning is raised (pytest turns warnings into errors)
    records = wait_with_progress(
        memory_app.backend, ["a", "b"], timeout=5, console=Console(force_jupyter=True)
    )
    # then the line was displayed and says all results are in
    assert all(records)
    assert shown and "2/2 results" in shown[-1]


def test_async_result_and_group_result_get_with_progress(
    memory_app: pluq.App, capsys: pytest.CaptureFixture[str]
) -> None:
    memory_app.backend.put(done("x", 5), expires=60)
    memory_app.backend.put(done("y", 6), expires=60)
    assert memory_app.AsyncResult("x").get(timeout=5, progress=True) == 5
    assert GroupResult(["x", "y"], app=memory_app).get(timeout=5, progress=True) == [5, 6]
    assert "2/2" in capsys.readouterr().out
