"""Load: many tasks, many processes, many delayed tasks; every task ends once.

The figures are the issue's, on every persistent transport: 10,000 tasks through two
workers, 5,000 delayed tasks spread over 10 s (see LOAD_TASKS, DELAYED and the README).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import fault_procs
import fault_tasks as ft
import pytest
from faultkit import Workers, assert_each_ran_once, assert_quiet_broker, records

import pluq
from _support import wait_until

LOAD_TASKS = {"sqlite": 10_000, "file": 10_000, "redis": 10_000}
"""Tasks per transport in the two-worker load test."""


def _scheme(url: str) -> str:
    return url.split(":", 1)[0]


def test_many_tasks_through_two_workers_each_end_once(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str
) -> None:
    # given 10,000 tasks queued
    count = LOAD_TASKS[_scheme(shared_url)]
    results = ft.app.enqueue_many(ft.work, [(ledger, i) for i in range(count)])
    ids = [r.id for r in results]
    assert len(set(ids)) == count
    # when two workers with two children each drain them, nothing killed
    started = time.monotonic()
    pair = [
        workers.start(shared_url, name=name, concurrency=2, lease=10.0, burst=True)
        for name in ("a", "b")
    ]
    codes = [worker.wait(240) for worker in pair]
    seconds = time.monotonic() - started
    # then every task ended once: one SUCCESS each, one execution each, zero duplicates
    assert codes == [0, 0]
    found = records(shared_app, ids)
    states = Counter(r.state if r is not None else "MISSING" for r in found)
    assert states == {"SUCCESS": count}
    assert all(r is not None and len(r.history) == 1 for r in found)
    assert [r.result for r in found if r is not None] == list(range(count))
    assert_each_ran_once(ledger, ids)
    assert_quiet_broker(shared_app)
    assert shared_app.dead_letters() == []
    processed = [worker.report()["processed"] for worker in pair]
    assert sum(processed) == count and min(processed) > 0  # both workers took part
    print(f"\n{count} tasks, 2 workers x 2 children, {_scheme(shared_url)}: {seconds:.1f} s")


@pytest.mark.parametrize("template", ["sqlite:///{tmp}/pluq.db", "file://{tmp}/queue"])
def test_eight_producers_and_eight_consumers_claim_each_message_once(
    tmp_path: Path, template: str
) -> None:
    # given one SQLite file (or one directory), 8 producer and 8 consumer processes
    url = template.format(tmp=tmp_path)
    producers, consumers, each = 8, 8, 250
    ctx = multiprocessing.get_context("spawn")
    out: Any = ctx.Queue()
    go, produced = ctx.Event(), ctx.Event()
    procs = [
        ctx.Process(target=fault_procs.produce, args=(out, go, url, f"p{n}", each))
        for n in range(producers)
    ] + [
        ctx.Process(target=fault_procs.consume, args=(out, go, produced, url, n))
        for n in range(consumers)
    ]
    for proc in procs:
        proc.start()
    try:
        # when they all start at once, consumers acking while producers publish
        go.set()
        reports: list[dict[str, Any]] = []
        for _ in range(producers):
            reports.append(_result(out))
        produced.set()
        for _ in range(consumers):
            reports.append(_result(out))
    finally:
        for proc in procs:
            proc.join(60)
            if proc.is_alive():
                proc.kill()
                proc.join()
    # then every message published was claimed exactly once, on its first attempt
    assert [r["refused"] for r in reports[:producers]] == [0] * producers
    claimed = Counter(i for r in reports[producers:] for i, _ in r["claimed"])
    published = {f"p{n}-{i:05}" for n in range(producers) for i in range(each)}
    assert sorted(i for i, n in claimed.items() if n > 1) == []
    assert set(claimed) == published
    assert {a for r in reports[producers:] for _, a in r["claimed"]} == {1}
    with pluq.App(url).broker as broker:
        assert broker.counts(["q"])["q"].total == 0
    if url.startswith("sqlite"):
        with sqlite3.connect(tmp_path / "pluq.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def _result(out: Any) -> dict[str, Any]:
    kind, payload = out.get(timeout=180)
    assert kind == "ok", payload
    result: dict[str, Any] = payload
    return result


DELAYED = {"sqlite": (5_000, 10.0), "file": (5_000, 10.0), "redis": (5_000, 10.0)}
"""(tasks, seconds they are spread over) per transport in the delayed-task test."""


def test_delayed_tasks_wait_in_the_broker_and_none_starts_early(
    shared_app: pluq.App, shared_url: str, workers: Workers, ledger: str
) -> None:
    count, spread = DELAYED[_scheme(shared_url)]
    # given a running worker (2 s lease), warmed up
    worker = workers.start(shared_url, name="eta", concurrency=2, prefetch=2, lease=2.0)
    worker.wait_ready()
    warm = ft.app.enqueue_many(ft.work, [(ledger, i) for i in range(50)])
    assert [r.get(timeout=60) for r in warm] == list(range(50))
    baseline = worker.rss_kib()
    # when N tasks are queued with etas spread over the next `spread` seconds (from +2 s)
    now = time.time()
    name = ft.at_eta.name
    batch = [
        ft.app._build(ft.at_eta, name, (ledger,), {}, eta=now + 2 + spread * i / count)
        for i in range(count)
    ]
    for start in range(0, count, 500):
        assert all(shared_app.broker.publish_many(batch[start : start + 500]))
    ids = [out.id for out in batch]
    # then while they wait, they are in the broker, not in the worker
    peak, most_leased = baseline, 0

    def sample() -> bool:
        nonlocal peak, most_leased
        counts = shared_app.stats().queues["default"]
        peak = max(peak, worker.rss_kib())
        most_leased = max(most_leased, counts.leased)
        return counts.total == counts.dead == 0

    assert shared_app.stats().queues["default"].delayed >= count * 0.9
    wait_until(sample, timeout=spread + 120, what="every delayed task to run")
    found = records(shared_app, ids)
    assert Counter(r.state if r is not None else "MISSING" for r in found) == {"SUCCESS": count}
    # none started before its eta, and each ran once
    early = [e for e in ft.entries(ledger) if e["eta"] is not None and e["start"] < e["eta"]]
    assert early == []
    assert_each_ran_once(ledger, ids + [r.id for r in warm])
    # the worker never held more than its slots and prefetch (2 + 2), plus the finished
    # tasks of its slots whose outcomes it was storing (2), and its memory stayed flat
    assert most_leased <= 6
    growth_mib = (peak - baseline) / 1024
    assert growth_mib < 20, f"the supervisor grew by {growth_mib:.1f} MiB"
    worker.terminate()
    assert worker.wait() == 0
    print(f"\n{count} delayed tasks on {_scheme(shared_url)}: RSS +{growth_mib:.1f} MiB")
