"""Typed tasks: mypy sees a task's parameters through `delay` and its return through `get`."""

from __future__ import annotations

from pathlib import Path

import mypy.api as mypy_api

SNIPPET = """
import pluq

app = pluq.App("memory://")

@app.task
def add(x: int, y: int) -> int:
    return x + y

@app.task(bind=True, max_retries=2)
def charge(self: pluq.Task[..., str], order_id: str) -> str:
    return order_id

ok: int = add.delay(1, 2).get(timeout=1)
also_ok: str = charge.delay("o-1").get()
local: int = add(1, 2)
add.delay(1, "x")
wrong: str = add.delay(1, 2).get()
charge.delay(42)
"""


def test_a_wrong_argument_to_delay_is_a_type_error(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(path)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = sorted(int(line.split(":")[1]) for line in errors)
    assert status == 1, out
    assert lines == [17, 18, 19], out
