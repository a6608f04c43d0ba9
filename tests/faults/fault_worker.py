"""A whole worker as a real process, for the fault suite: `python fault_worker.py URL ...`.

It runs `fault_tasks.app.Worker(...).run()` in its main thread (so SIGTERM and SIGINT mean
what they mean to `pluq worker`), logs to a file, and can kill itself at a named point
that only the supervisor sees:

    --fault after_reserve:<task id>   SIGKILL the worker's process group as soon as a
                                      reserve returns that message (leased, not started)
    --fault after_store:<task id>     ... as soon as that task's final outcome is stored in
                                      the result backend, before the broker hears of it
    --fault handback_after_reserve:<task id>
                                      SIGTERM itself when a reserve returns that message, so
                                      that a graceful stop hands it back without starting it

The fault hooks wrap this process's broker and backend objects; the core is unchanged.
Points inside a task (mid-task) are the task's business (see fault_tasks), or the test's:
it waits for the task's ledger file and then signals the process group.

`--audit FILE` installs an audit hook before pluq is imported that appends one line per
`pickle.find_class` event, with the pid that raised it (children forked from this process
inherit the hook and report their own pid).

The test starts this script in a new session (its own process group), so that signalling
the group reaches the supervisor, its children and the forkserver, and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from typing import Any


def _install_audit(path: str) -> None:
    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "pickle.find_class":
            with open(path, "a") as out:
                out.write(
                    json.dumps({"pid": os.getpid(), "module": str(args[0]), "name": str(args[1])})
                    + "\n"
                )

    sys.addaudithook(hook)


def _die() -> None:
    os.killpg(os.getpgid(0), signal.SIGKILL)


def _install_fault(app: Any, worker: Any, fault: str) -> None:
    from pluq.backend import READY_STATES

    point, _, target = fault.partition(":")
    if point == "handback_after_reserve":
        broker = app.broker
        reserve = broker.reserve

        def reserve_then_stop(*args: Any, **kwargs: Any) -> Any:
            got = reserve(*args, **kwargs)
            if any(d.id == target for d in got):
                # SIGTERM while the message is still in the fetch thread's hands: return it
                # only once the supervisor stopped fetching, so that it is handed back
                # unstarted, straight from the inbox (reaches into the supervisor, on
                # purpose: this point has no public hook).
                os.kill(os.getpid(), signal.SIGTERM)
                shared = worker._supervisor.shared
                deadline = time.monotonic() + 30
                while shared.fetching and time.monotonic() < deadline:
                    time.sleep(0.005)
            return got

        broker.reserve = reserve_then_stop
    elif point == "after_reserve":
        broker = app.broker
        reserve = broker.reserve

        def reserve_then_die(*args: Any, **kwargs: Any) -> Any:
            got = reserve(*args, **kwargs)
            if any(d.id == target for d in got):
                _die()
            return got

        broker.reserve = reserve_then_die
    elif point == "after_store":
        backend = app.backend
        put, put_many = backend.put, backend.put_many

        def put_then_die(record: Any, **kwargs: Any) -> None:
            put(record, **kwargs)
            if record.id == target and record.state in READY_STATES:
                _die()

        def put_many_then_die(records: Any, **kwargs: Any) -> None:
            put_many(records, **kwargs)
            if any(r.id == target and r.state in READY_STATES for r in records):
                _die()

        backend.put = put_then_die
        backend.put_many = put_many_then_die
    else:
        raise SystemExit(f"unknown fault point {point!r}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--backend")
    parser.add_argument("--name")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--prefetch", type=int)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--pool", default="processes")
    parser.add_argument("--start-method")
    parser.add_argument("--burst", action="store_true")
    parser.add_argument("--log", required=True)
    parser.add_argument("--fault", action="append", default=[])
    parser.add_argument("--secret", action="append", default=[])
    parser.add_argument("--audit")
    options = parser.parse_args()
    if options.audit:
        _install_audit(options.audit)

    import logging

    import fault_tasks

    logging.basicConfig(
        filename=options.log,
        level=logging.DEBUG,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    os.environ[fault_tasks.GROUP_ENV] = str(os.getpgid(0))
    app = fault_tasks.app
    app.broker_url = options.url
    app.backend_url = options.backend or options.url
    app.keys = tuple(s.encode() for s in options.secret)
    worker = app.Worker(
        concurrency=options.concurrency,
        prefetch=options.prefetch,
        lease=options.lease,
        pool=options.pool,
        start_method=options.start_method,
        name=options.name,
        heartbeat_interval=1.0,
    )
    for fault in options.fault:
        _install_fault(app, worker, fault)
    code = worker.run(burst=options.burst)
    print(json.dumps({"exit_code": code, "pid": os.getpid(), "processed": worker.processed}))
    return code


if __name__ == "__main__":
    sys.exit(main())
