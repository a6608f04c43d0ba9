"""The full-disk scenario, run by test_fault_stores.py inside `unshare --mount`.

    unshare [--map-root-user] --mount --propagation private \
        python diskfull_scenario.py TMP_DIR REPORT_JSON

It mounts a 4 MiB tmpfs in a private mount namespace (gone when this process and its
children exit, whatever happens), queues 100 tasks on a file:// transport inside it, fills
the disk, and records what a producer and a worker then do; then it frees the space and
records how everything ends. The test asserts on the JSON report. The ledger lives outside
the tmpfs, so executions are counted even while the disk is full.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fault_tasks as ft

from pluq import message as msg
from pluq.errors import PluqError

TASKS = 100
REFUSED = 10


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling files and a store, with a deadline


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    chunk = b"\0" * 65536
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 16 or 1]
    finally:
        os.close(fd)


def _unreadable(queue_root: Path) -> list[str]:
    """Message files in ready/ or delayed/ that are not whole pluq messages."""
    bad = []
    for path in [*queue_root.glob("**/ready/*.msg"), *queue_root.glob("**/delayed/*.msg")]:
        data = path.read_bytes()
        _, sep, message = data.partition(b"\n")
        try:
            if not sep:
                raise ValueError("no transport header line")
            msg.decode(message)
        except (ValueError, PluqError) as exc:
            bad.append(f"{path.name}: {exc}")
    return bad


def main() -> None:
    tmp, report = Path(sys.argv[1]), Path(sys.argv[2])
    mount = tmp / "tmpfs"
    mount.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True
    )
    ledger = str(tmp / "ledger")
    url = f"file://{mount}/queue"
    app = ft.app
    app.broker_url = app.backend_url = url
    collect = _Collect()
    logging.getLogger("pluq").addHandler(collect)
    logging.getLogger("pluq").setLevel(logging.DEBUG)

    accepted = [ft.work.delay(ledger, i) for i in range(TASKS)]
    _fill(mount)
    errors = []
    for i in range(REFUSED):
        try:
            ft.work.delay(ledger, 1000 + i)
        except Exception as exc:
            errors.append(
                {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)}
            )
    facts: dict[str, Any] = {
        "accepted": TASKS,
        "publish_errors": errors,
        "unreadable_messages": _unreadable(mount / "queue"),
        "ready_while_full": app.broker.counts(["default"])["default"].ready,
    }

    with app.worker(concurrency=2, lease=2.0):
        _wait(lambda: len(ft.executions(ledger)) >= 20, 60, "tasks to run on a full disk")
        _wait(
            lambda: any("could not store the outcome" in line for line in collect.lines),
            60,
            "a failed store",
        )
        counts = app.broker.counts(["default"])["default"]
        facts["ran_while_full"] = len(ft.executions(ledger))
        facts["acked_while_full"] = TASKS - counts.total
        facts["store_errors_logged"] = sum(
            "could not store the outcome" in line and "disk is full" in line
            for line in collect.lines
        )
        # space returns
        (mount / "filler").unlink()
        more = [ft.work.delay(ledger, 1000 + i) for i in range(len(errors))]
        facts["republished"] = len(more)
        for result in accepted + more:
            result.get(timeout=120)
        _wait(lambda: app.broker.counts(["default"])["default"].total == 0, 60, "the acks")
    everything = [r.id for r in accepted + more]
    states = Counter(r.state for r in accepted + more)
    executions = ft.executions(ledger)
    facts["states"] = dict(states)
    facts["duplicates"] = sorted(i for i in everything if executions[i] > 1)
    facts["left_in_broker"] = app.broker.counts(["default"])["default"].total
    app.close()
    report.write_text(json.dumps(facts))


if __name__ == "__main__":
    main()
