"""Functions a worker cannot import travel by value: __main__ scripts, closures, lambdas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import worker_tasks as wt

import pluq

SCRIPT = """
import sys
import pluq

app = pluq.App(sys.argv[1])

@app.task
def shout(word):
    return word.upper() + "!"

class Point:  # a class defined in __main__ travels by value too
    def __init__(self, x):
        self.x = x

@app.task
def norm(p):
    return abs(p.x)

ids = [shout.delay("hello").id, norm.delay(Point(-3)).id]
print(" ".join(ids))
"""


def test_a_script_main_task_runs_in_a_separate_pluq_worker(tmp_path: Path) -> None:
    # given a script that defines tasks in __main__ and queues them into SQLite
    url = f"sqlite:///{tmp_path}/pluq.db"
    script = tmp_path / "producer.py"
    script.write_text(SCRIPT)
    produced = subprocess.run(
        [sys.executable, str(script), url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert produced.returncode == 0, produced.stderr
    shout_id, norm_id = produced.stdout.split()
    # when a separate `pluq worker` with no app drains the queue
    pluq_bin = Path(sys.executable).with_name("pluq")
    drained = subprocess.run(
        [str(pluq_bin), "worker", "--broker", url, "--burst", "-c", "2"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PLUQ_APP": ""},
    )  # fmt: skip
    assert drained.returncode == 0, drained.stderr
    # then the results are there for anyone to read
    reader = pluq.App(url)
    assert reader.AsyncResult(shout_id).get(timeout=10) == "HELLO!"
    assert reader.AsyncResult(norm_id).get(timeout=10) == 3


def test_closures_and_lambdas_run_by_value_in_a_child_process(wapp: pluq.App) -> None:
    def make_multiplier(n: int) -> pluq.Task[[int], int]:
        @wapp.task(name=f"test_by_value.times{n}")
        def times(x: int) -> int:
            return x * n

        return times

    triple = make_multiplier(3)
    plus_one = wapp.task(name="test_by_value.plus_one")(lambda x: x + 1)
    assert triple.by_value and plus_one.by_value
    try:
        with wapp.worker(concurrency=1, start_method="spawn"):
            assert triple.delay(14).get(timeout=60) == 42
            assert plus_one.delay(41).get(timeout=60) == 42
            assert wt.pid.delay().get(timeout=60) != os.getpid()
    finally:
        for name in ("test_by_value.times3", "test_by_value.plus_one"):
            wapp.tasks.pop(name, None)


def test_retry_dead_puts_dead_tasks_back_with_a_fresh_budget(wapp: pluq.App) -> None:
    with wapp.worker(concurrency=1):
        failing = wt.fail.delay("boom")
        assert isinstance(failing.get(timeout=30, propagate=False), ValueError)
    [dead] = wapp.dead_letters()
    assert dead.id == failing.id and dead.reason == "ValueError: boom"
    assert wapp.retry_dead([dead.id]) == 1
    assert failing.state == "PENDING" and wapp.dead_letters() == []
    assert wapp.stats().queues["default"].ready == 1
    with wapp.worker(concurrency=1):
        assert isinstance(failing.get(timeout=30, propagate=False), ValueError)
    assert failing.retries == 0  # a fresh budget: it failed at once, as the first time
    assert [d.id for d in wapp.dead_letters()] == [failing.id]
