"""The periodic scheduler: schedules, exact tick times, idempotent ticks, catch-up, state."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pluq
from pluq import message as msg
from pluq.scheduler import (
    Schedule,
    Scheduler,
    add_schedule,
    periodic,
    run_scheduler,
    schedules,
    state_id,
    tick_id,
)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0, *, tz: Any = UTC) -> float:
    """Seconds since the epoch of a wall-clock time in `tz`."""
    return datetime(year, month, day, hour, minute, tzinfo=tz).timestamp()


def utc(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_000.5)


@pytest.fixture
def fapp(memory_url: str, clock: FakeClock) -> Iterator[pluq.App]:
    """An app on its own memory transport, on a fake clock, with the JSON serializer."""
    application = pluq.App(memory_url, serializer="json", clock=clock)
    yield application
    application.close()


def drain(app: pluq.App, queue: str = "default") -> list[tuple[msg.Header, bytes]]:
    """Reserve and ack every ready message of `queue`; their headers and bodies in order."""
    out = []
    while deliveries := app.broker.reserve([queue], timeout=0, lease=60, limit=100):
        for delivery in deliveries:
            out.append(msg.decode(delivery.message))
            app.broker.ack(delivery)
    return out


def every(app: pluq.App, name: str, seconds: float, **options: Any) -> Schedule:
    return add_schedule(app, Schedule.create(name, "tasks.ping", every=seconds, **options))


# -- declaring schedules -----------------------------------------------------------------


def test_every_takes_a_timedelta_or_seconds() -> None:
    assert Schedule.create("a", every=timedelta(minutes=5)).every == 300.0
    assert Schedule.create("b", every=2.5).every == 2.5
    assert Schedule.create("c", every=7).every == 7.0
    assert Schedule.create("d", every=60).task == "d"  # the task defaults to the name


@pytest.mark.parametrize(
    "value",
    [0, -1, 0.0, timedelta(0), timedelta(seconds=-5), math.nan, math.inf, True, "5"],
    ids=repr,
)
def test_an_interval_that_is_not_positive_and_finite_is_refused(value: Any) -> None:
    with pytest.raises(pluq.ConfigurationError, match="every="):
        Schedule.create("x", every=value)


def test_every_and_cron_together_or_neither_are_refused() -> None:
    with pytest.raises(pluq.ConfigurationError, match=r"exactly one of every= .* or cron="):
        Schedule.create("x", every=60, cron="* * * * *")
    with pytest.raises(pluq.ConfigurationError, match=r"exactly one of every= .* or cron="):
        Schedule.create("x")


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("", "Wrong number of fields"),
        ("* * *", "Wrong number of fields"),
        ("every day", "Wrong number of fields"),
        ("61 * * * *", "Bad minute"),
        ("0 25 * * *", "Bad hour"),
        ("0 0 30 2 *", "Bad day-of-month"),
        ("0 0 * * FUNDAY", "Bad day-of-week"),
    ],
)
def test_an_invalid_cron_expression_is_refused_with_a_hint(expression: str, problem: str) -> None:
    with pytest.raises(pluq.ConfigurationError) as info:
        Schedule.create("x", cron=expression)
    text = str(info.value)
    assert repr(expression) in text and problem in text
    assert "minute hour day-of-month month day-of-week" in text


def test_a_cron_expression_that_never_matches_is_refused() -> None:
    with pytest.raises(pluq.ConfigurationError, match="never matches"):
        Schedule.create("x", cron="* * */20 * 1L")  # the 1st/21st that is a last Monday


def test_time_zones_are_names_or_tzinfo_and_unknown_names_are_refused() -> None:
    assert Schedule.create("a", cron="0 9 * * *", tz="Europe/Paris").tz == PARIS
    assert Schedule.create("b", cron="0 9 * * *", tz=NEW_YORK).tz is NEW_YORK
    assert Schedule.create("c", cron="0 9 * * *").tz is UTC
    with pytest.raises(pluq.ConfigurationError, match="unknown time zone 'Mars/Olympus'"):
        Schedule.create("x", cron="0 9 * * *", tz="Mars/Olympus")


def test_a_zone_with_an_interval_is_refused_because_intervals_are_epoch_aligned() -> None:
    with pytest.raises(pluq.ConfigurationError, match="tz= applies to cron schedules only"):
        Schedule.create("x", every=3600, tz="Europe/Paris")
    assert Schedule.create("y", every=3600, tz="UTC").every == 3600.0


def test_periodic_registers_the_function_as_a_task_with_a_schedule(fapp: pluq.App) -> None:
    @periodic(fapp, every=timedelta(minutes=5), name="jobs.cleanup", queue="low", max_retries=0)
    def cleanup(days: int, *, dry: bool = False) -> str:
        return f"{days}:{dry}"

    assert isinstance(cleanup, pluq.Task)
    assert fapp.tasks["jobs.cleanup"] is cleanup
    assert cleanup.queue == "low" and cleanup.max_retries == 0
    assert cleanup(3, dry=True) == "3:True"  # still a plain function when called
    schedule = schedules(fapp)["jobs.cleanup"]
    assert (schedule.task, schedule.every, schedule.cron) == ("jobs.cleanup", 300.0, None)
    assert getattr(fapp, "schedules", None) is schedules(fapp)


def test_periodic_takes_a_cron_expression_a_zone_and_arguments(fapp: pluq.App) -> None:
    @periodic(fapp, cron="30 2 * * MON", tz="Europe/Paris", args=(1,), kwargs={"dry": True})
    def report(n: int, dry: bool) -> None: ...

    schedule = schedules(fapp)[report.name]
    assert schedule.cron == "30 2 * * MON" and schedule.tz == PARIS
    assert schedule.args == (1,) and schedule.kwargs == {"dry": True}
    assert schedule.describe() == "cron '30 2 * * MON' (Europe/Paris)"


def test_periodic_errors_are_raised_where_it_is_declared(fapp: pluq.App) -> None:
    with pytest.raises(pluq.ConfigurationError, match="exactly one of"):
        periodic(fapp)
    with pytest.raises(pluq.ConfigurationError, match="unknown task option"):
        periodic(fapp, every=60, retries=3)(lambda: None)
    with pytest.raises(pluq.ConfigurationError, match="cannot be serialized"):
        periodic(fapp, every=60, args=(object(),))(lambda: None)

    task = fapp.task(name="jobs.existing")(lambda: None)
    with pytest.raises(pluq.ConfigurationError, match="add_schedule"):
        periodic(fapp, every=60)(task)


def test_declaring_again_replaces_the_schedule_but_a_name_clash_is_refused(
    fapp: pluq.App,
) -> None:
    def job() -> None: ...

    periodic(fapp, every=60, name="jobs.job")(job)
    periodic(fapp, every=120, name="jobs.job")(job)  # a re-run notebook cell
    assert schedules(fapp)["jobs.job"].every == 120.0

    with pytest.raises(pluq.ConfigurationError, match=r"a different schedule named 'jobs\.job'"):
        add_schedule(fapp, Schedule.create("jobs.job", every=30))
    add_schedule(fapp, Schedule.create("jobs.job", every=30), replace=True)
    assert schedules(fapp)["jobs.job"].every == 30.0


# -- tick times --------------------------------------------------------------------------


def test_interval_ticks_are_multiples_of_the_interval_since_the_epoch() -> None:
    five_minutes = Schedule.create("x", every=300)
    t = 1_000_000_123.4
    assert five_minutes.next_after(t) == 1_000_000_200.0
    assert five_minutes.last_at_or_before(t) == 999_999_900.0
    # On a tick: it is due (at or before), and the next one is strictly after it.
    assert five_minutes.last_at_or_before(1_000_000_200.0) == 1_000_000_200.0
    assert five_minutes.next_after(1_000_000_200.0) == 1_000_000_500.0
    # Every scheduler agrees, whenever it started: a day ticks at midnight UTC.
    day = Schedule.create("d", every=timedelta(days=1))
    assert utc(day.next_after(ts(2024, 5, 17, 13, 37))) == datetime(2024, 5, 18, tzinfo=UTC)


def test_interval_ticks_may_be_fractions_of_a_second() -> None:
    quarter = Schedule.create("q", every=0.25)
    assert quarter.next_after(10.1) == 10.25
    assert quarter.last_at_or_before(10.1) == 10.0
    assert tick_id("q", 10.25) == "pluq:periodic:q:10.25"
    assert tick_id("q", 1_700_000_000.0) == "pluq:periodic:q:1700000000"


def test_cron_ticks_are_exact_in_utc() -> None:
    five = Schedule.create("x", cron="*/5 * * * *")
    t = ts(2024, 1, 1, 12, 3) + 10.0
    assert utc(five.next_after(t)) == datetime(2024, 1, 1, 12, 5, tzinfo=UTC)
    assert utc(five.last_at_or_before(t) or 0) == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    on_tick = ts(2024, 1, 1, 12, 5)
    assert five.last_at_or_before(on_tick) == on_tick
    assert five.next_after(on_tick) == ts(2024, 1, 1, 12, 10)
    monday = Schedule.create("m", cron="30 2 * * MON")
    assert utc(monday.next_after(t)) == datetime(2024, 1, 8, 2, 30, tzinfo=UTC)


def test_cron_nicknames_are_understood() -> None:
    t = ts(2024, 5, 17, 13, 37)
    assert utc(Schedule.create("h", cron="@hourly").next_after(t)).hour == 14
    assert utc(Schedule.create("d", cron="@daily").next_after(t)) == datetime(
        2024, 5, 18, tzinfo=UTC
    )
    weekly = Schedule.create("w", cron="@weekly", tz="Europe/Paris").next_after(t)
    assert weekly == ts(2024, 5, 19, tz=PARIS)  # Sunday midnight in Paris


def test_cron_fields_are_read_in_the_schedule_time_zone() -> None:
    nine = Schedule.create("x", cron="0 9 * * *", tz="America/New_York")
    # 09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT).
    assert utc(nine.next_after(ts(2024, 1, 15, 12))) == datetime(2024, 1, 15, 14, tzinfo=UTC)
    assert utc(nine.next_after(ts(2024, 7, 15, 12))) == datetime(2024, 7, 15, 13, tzinfo=UTC)
    assert nine.next_after(ts(2024, 7, 15, 12)) == ts(2024, 7, 15, 9, tz=NEW_YORK)


def test_a_fixed_time_job_runs_once_across_both_dst_changes() -> None:
    night = Schedule.create("x", cron="30 2 * * *", tz="Europe/Paris")
    # Spring forward (31 March 2024): 02:30 does not exist in Paris; it runs at 03:00 CEST.
    spring = night.next_after(ts(2024, 3, 30, 12, tz=PARIS))
    assert utc(spring) == datetime(2024, 3, 31, 1, 0, tzinfo=UTC)
    assert utc(night.next_after(spring)) == datetime(2024, 4, 1, 0, 30, tzinfo=UTC)
    # Fall back (27 October 2024): 02:30 happens twice; it runs at the first one only.
    autumn = night.next_after(ts(2024, 10, 26, 12, tz=PARIS))
    assert utc(autumn) == datetime(2024, 10, 27, 0, 30, tzinfo=UTC)
    assert utc(night.next_after(autumn)) == datetime(2024, 10, 28, 1, 30, tzinfo=UTC)
    # Inside the repeated hour (02:45 the second time) the due tick is still the first 02:30.
    second_pass = ts(2024, 10, 27, 1, 45)
    assert night.last_at_or_before(second_pass) == autumn


def test_a_job_with_a_wildcard_hour_follows_real_time_through_the_repeated_hour() -> None:
    half_hourly = Schedule.create("x", cron="*/30 * * * *", tz="Europe/Paris")
    t = ts(2024, 10, 26, 23, 50)  # 01:50 CEST
    runs = []
    for _ in range(4):
        t = half_hourly.next_after(t)
        runs.append(utc(t).strftime("%H:%M"))
    assert runs == ["00:00", "00:30", "01:00", "01:30"]  # 02:00 and 02:30, twice each


SCHEDULES = [
    Schedule.create("every-7", every=7),
    Schedule.create("every-quarter", every=0.25),
    Schedule.create("five-minutes", cron="*/5 * * * *"),
    Schedule.create("paris-night", cron="30 2 * * *", tz="Europe/Paris"),
    Schedule.create("ny-weekdays", cron="15 */3 * * 1-5", tz="America/New_York"),
    Schedule.create("paris-half-hours", cron="*/30 * * * *", tz="Europe/Paris"),
]


@settings(max_examples=300, deadline=None)
@given(
    schedule=st.sampled_from(SCHEDULES),
    t=st.floats(min_value=ts(2023, 1, 1), max_value=ts(2026, 12, 31)),
)
def test_the_due_tick_and_the_next_tick_enclose_every_moment(schedule: Schedule, t: float) -> None:
    last = schedule.last_at_or_before(t)
    following = schedule.next_after(t)
    assert last is not None
    assert last <= t < following
    # No tick lies between them: the one after the due tick is the next one.
    assert schedule.next_after(last) == following


# -- tick(): what gets queued ------------------------------------------------------------


def test_tick_queues_each_due_tick_exactly_once(fapp: pluq.App) -> None:
    every(fapp, "ping", 10, args=(1,), kwargs={"k": "v"})
    scheduler = Scheduler(fapp, clock=fapp.clock)

    # A schedule that never ran starts with the first tick after it is first seen.
    assert scheduler.tick(1000.5) == []
    assert scheduler.tick(1009.9) == []
    assert scheduler.tick(1010.0) == ["pluq:periodic:ping:1010"]
    assert scheduler.tick(1010.0) == []
    assert scheduler.tick(1015.0) == []
    assert scheduler.tick(1020.3) == ["pluq:periodic:ping:1020"]

    queued = drain(fapp)
    assert [h.id for h, _ in queued] == ["pluq:periodic:ping:1010", "pluq:periodic:ping:1020"]
    header, body = queued[0]
    assert header.task == "tasks.ping" and header.queue == "default"
    assert header.meta["schedule"] == "ping" and header.meta["tick"] == 1010.0
    payload = json.loads(body)
    assert payload["args"] == [1] and payload["kwargs"] == {"k": "v"}


def test_a_first_tick_exactly_on_a_tick_time_does_not_queue_it(fapp: pluq.App) -> None:
    every(fapp, "ping", 10)
    scheduler = Scheduler(fapp)
    assert scheduler.tick(1000.0) == []
    assert scheduler.tick(1010.0) == ["pluq:periodic:ping:1010"]


def test_ticks_go_to_the_schedule_queue_then_the_task_queue(memory_url: str) -> None:
    fapp = pluq.App(memory_url)  # cloudpickle: a task defined here travels by value
    fapp.task(name="tasks.ping", queue="from-task")(lambda: None)
    every(fapp, "ping", 10)
    every(fapp, "ping-high", 10, queue="high")
    scheduler = Scheduler(fapp)
    scheduler.tick(1000.5)
    assert sorted(scheduler.tick(1010)) == [
        "pluq:periodic:ping-high:1010",
        "pluq:periodic:ping:1010",
    ]
    assert [h.id for h, _ in drain(fapp, "from-task")] == ["pluq:periodic:ping:1010"]
    assert [h.id for h, _ in drain(fapp, "high")] == ["pluq:periodic:ping-high:1010"]


def test_cron_ticks_are_queued_with_whole_second_ids(fapp: pluq.App) -> None:
    add_schedule(fapp, Schedule.create("nightly", "tasks.report", cron="0 3 * * *", tz=PARIS))
    scheduler = Scheduler(fapp)
    assert scheduler.tick(ts(2024, 6, 1, 12, tz=PARIS)) == []
    three = ts(2024, 6, 2, 3, tz=PARIS)
    assert scheduler.tick(three + 0.5) == [f"pluq:periodic:nightly:{int(three)}"]


def test_a_periodic_task_runs_on_a_worker_with_its_arguments(memory_url: str) -> None:
    app = pluq.App(memory_url, serializer="cloudpickle")
    clock = FakeClock(1000.5)

    @periodic(app, every=10, args=(2, 3))
    def add(x: int, y: int) -> int:
        return x + y

    scheduler = Scheduler(app, clock=clock)
    scheduler.tick(1000.5)
    [task_id] = scheduler.tick(1010)
    assert app.Worker(concurrency=1, pool="threads").run(burst=True) == 0
    assert app.AsyncResult(task_id).get(timeout=10) == 5
    app.close()


# -- catch-up and state ------------------------------------------------------------------


def test_a_scheduler_that_was_down_queues_only_the_latest_missed_tick(fapp: pluq.App) -> None:
    every(fapp, "ping", 10)
    first = Scheduler(fapp)
    first.tick(1000.5)
    assert first.tick(1010) == ["pluq:periodic:ping:1010"]

    # Down from 1010 to 1075: ticks 1020 ... 1070 were missed; one run catches up.
    restarted = Scheduler(fapp)
    assert restarted.tick(1075) == ["pluq:periodic:ping:1070"]
    assert restarted.tick(1076) == []
    assert restarted.tick(1080) == ["pluq:periodic:ping:1080"]
    assert [h.id for h, _ in drain(fapp)] == [
        "pluq:periodic:ping:1010",
        "pluq:periodic:ping:1070",
        "pluq:periodic:ping:1080",
    ]


def test_the_state_is_a_ready_record_in_the_result_backend(fapp: pluq.App) -> None:
    every(fapp, "ping", 10)
    scheduler = Scheduler(fapp)
    scheduler.tick(1000.5)
    scheduler.tick(1010)

    record = fapp.backend.get(state_id("ping"))
    assert record is not None and record.id == "pluq:schedule:ping"
    assert record.state == "SUCCESS" and record.ready and record.task == "tasks.ping"
    assert record.meta == {
        "last_tick": 1010.0,
        "last_id": "pluq:periodic:ping:1010",
        "schedule": "every 10 s",
    }
    assert fapp.AsyncResult(state_id("ping")).state == "SUCCESS"


def test_a_new_scheduler_does_not_republish_a_tick_the_broker_has_forgotten(
    memory_url: str,
) -> None:
    # Given a broker that forgets acknowledged ids at once (dedupe_window=0) ...
    app = pluq.App(f"{memory_url}?dedupe_window=0", serializer="json")
    every(app, "ping", 10)
    first = Scheduler(app)
    first.tick(1000.5)
    assert first.tick(1010.2) == ["pluq:periodic:ping:1010"]
    assert len(drain(app)) == 1  # ... the run was acknowledged, and its id forgotten.
    assert app.broker.publish("probe", b"x", id="probe") is True

    # When another scheduler reaches the same tick late, the shared state stops it.
    late = Scheduler(app)
    assert late.tick(1015) == []
    assert drain(app) == []
    app.close()


def test_a_state_record_without_a_time_is_ignored_with_a_warning(
    fapp: pluq.App, caplog: pytest.LogCaptureFixture
) -> None:
    every(fapp, "ping", 10)
    fapp.backend.put(
        pluq.backend.TaskRecord(id=state_id("ping"), state="SUCCESS", meta={"last_tick": "x"}),
        expires=60,
    )
    scheduler = Scheduler(fapp)
    with caplog.at_level(logging.WARNING, logger="pluq.beat"):
        assert scheduler.tick(1015) == []  # as if it never ran: starts from now
    assert "last_tick is 'x'" in caplog.text
    assert scheduler.tick(1020) == ["pluq:periodic:ping:1020"]


def test_state_records_are_signed_when_the_app_has_a_secret(memory_url: str) -> None:
    app = pluq.App(memory_url, serializer="json", secret="s3cret")
    every(app, "ping", 10)
    scheduler = Scheduler(app)
    scheduler.tick(1000.5)
    [task_id] = scheduler.tick(1010)
    record = app.backend.get(state_id("ping"))
    assert record is not None and record.signature
    assert app.AsyncResult(state_id("ping")).state == "SUCCESS"  # verified on read
    [(header, _)] = drain(app)
    assert header.id == task_id and header.sig
    app.close()


def test_a_running_scheduler_keeps_queuing_while_the_result_store_is_away(
    fapp: pluq.App, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    every(fapp, "ping", 10)
    scheduler = Scheduler(fapp)
    scheduler.tick(1000.5)

    def away(*args: object, **kwargs: object) -> None:
        raise pluq.errors.BackendUnavailable("the result store is down (test)")

    monkeypatch.setattr(fapp.backend, "get", away)
    monkeypatch.setattr(fapp.backend, "put", away)
    with caplog.at_level(logging.WARNING, logger="pluq.beat"):
        assert scheduler.tick(1010) == ["pluq:periodic:ping:1010"]
    assert "could not be read" in caplog.text and "could not be saved" in caplog.text

    # A scheduler that has never seen the schedule cannot tell what it missed: it waits.
    fresh = Scheduler(fapp)
    with caplog.at_level(logging.ERROR, logger="pluq.beat"):
        assert fresh.tick(1020) == []
    assert "the result store is down" in caplog.text
    monkeypatch.undo()
    assert fresh.tick(1021) == []  # then starts like any new scheduler ...
    assert fresh.tick(1030) == ["pluq:periodic:ping:1030"]  # ... on the next tick


def test_run_retries_a_failed_step_soon_without_spinning(
    fapp: pluq.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    every(fapp, "hourly", 3600)  # the next tick is far away: only a retry can come soon
    real_get = fapp.backend.get
    calls: list[str] = []
    recovered = threading.Event()

    def flaky(task_id: str) -> Any:
        calls.append(task_id)
        if len(calls) == 1:
            raise pluq.errors.BackendUnavailable("the result store is down (test)")
        recovered.set()
        return real_get(task_id)

    monkeypatch.setattr(fapp.backend, "get", flaky)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(fapp).run, args=(stop,))
    thread.start()
    try:
        assert recovered.wait(timeout=10), "the failed step was not retried"
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(calls) == 2


# -- several schedulers ------------------------------------------------------------------


def test_two_schedulers_on_one_memory_broker_queue_each_tick_once(memory_url: str) -> None:
    apps = [pluq.App(memory_url, serializer="json") for _ in range(2)]
    for app in apps:
        every(app, "ping", 10)
    one, two = (Scheduler(app) for app in apps)

    queued: list[str] = []
    one.tick(1000.5)
    two.tick(1003.0)
    for t in range(1005, 1100, 5):
        queued += one.tick(t)
        queued += two.tick(t + 0.25)  # the second is always slightly behind
        queued += two.tick(t + 7.5)  # ... or ahead
    assert Counter(queued) == {f"pluq:periodic:ping:{t}": 1 for t in range(1010, 1110, 10)}
    assert [h.id for h, _ in drain(apps[0])] == sorted(Counter(queued))
    for app in apps:
        app.close()


def test_the_broker_alone_deduplicates_schedulers_that_share_no_state(memory_url: str) -> None:
    # Given two schedulers with separate result backends: only the broker is shared.
    apps = [
        pluq.App(memory_url, backend=f"memory://{uuid.uuid4().hex}", serializer="json")
        for _ in range(2)
    ]
    for app in apps:
        every(app, "ping", 10)
    schedulers = [Scheduler(app) for app in apps]
    for scheduler in schedulers:
        scheduler.tick(1000.5)
    queued = [task_id for s in schedulers for task_id in s.tick(1010.5)]
    assert queued == ["pluq:periodic:ping:1010"]
    assert len(drain(apps[0])) == 1
    for app in apps:
        app.close()


# -- errors and logging ------------------------------------------------------------------


def test_a_schedule_that_fails_is_logged_and_does_not_stop_the_others(
    fapp: pluq.App, caplog: pytest.LogCaptureFixture
) -> None:
    # A closure must travel by value, which the JSON serializer cannot do: every tick fails.
    def make() -> Any:
        def closure() -> None: ...

        return closure

    periodic(fapp, every=10, name="broken")(make())
    every(fapp, "ping", 10)
    scheduler = Scheduler(fapp)
    scheduler.tick(1000.5)
    with caplog.at_level(logging.ERROR, logger="pluq.beat"):
        assert scheduler.tick(1010) == ["pluq:periodic:ping:1010"]
    [error] = [r for r in caplog.records if r.name == "pluq.beat"]
    assert error.levelno == logging.ERROR and "schedule broken" in error.getMessage()
    assert "by value" in error.getMessage()


def test_each_queued_tick_is_logged_on_pluq_beat(
    fapp: pluq.App, caplog: pytest.LogCaptureFixture
) -> None:
    every(fapp, "ping", 10)
    scheduler = Scheduler(fapp)
    scheduler.tick(1000.5)
    with caplog.at_level(logging.DEBUG, logger="pluq.beat"):
        scheduler.tick(1010)
        Scheduler(fapp).tick(1010)  # a fresh scheduler finds it handled already
    [record] = [r for r in caplog.records if r.name == "pluq.beat"]
    assert record.levelno == logging.INFO
    assert "pluq:periodic:ping:1010" in record.getMessage()
    assert record.__dict__["queued"] is True and record.__dict__["tick"] == 1010.0


# -- run(): the loop ---------------------------------------------------------------------


def test_run_queues_ticks_as_they_come_and_stops_when_told(memory_url: str) -> None:
    app = pluq.App(memory_url, serializer="json")
    every(app, "fast", 0.2)
    stop = threading.Event()
    thread = threading.Thread(target=Scheduler(app).run, args=(stop,))
    thread.start()
    try:
        received: list[float] = []
        while len(received) < 3:
            deliveries = app.broker.reserve(["default"], timeout=10, lease=60)
            assert deliveries, "no tick was queued within 10 s"
            received.append(float(deliveries[0].id.rsplit(":", 1)[1]))
            app.broker.ack(deliveries[0])
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    # Successive ticks, on the 0.2 s grid (a loaded machine may skip one: catch-up).
    assert received == sorted(set(received))
    assert all(math.isclose(t / 0.2, round(t / 0.2), abs_tol=1e-3) for t in received)
    app.close()


def test_run_sleeps_until_the_next_tick_and_wakes_when_stopped(memory_url: str) -> None:
    app = pluq.App(memory_url, serializer="json")
    every(app, "hourly", 3600)
    waits: list[float | None] = []
    waiting = threading.Event()

    class Stop(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout)
            waiting.set()
            return super().wait(timeout)

    stop = Stop()
    thread = threading.Thread(target=Scheduler(app).run, args=(stop,))
    thread.start()
    assert waiting.wait(timeout=10)
    started = time.monotonic()
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - started < 5
    # It slept (no spinning), at most a minute at a time (the wall clock may jump).
    assert len(waits) == 1 and waits[0] is not None and 0 < waits[0] <= 60
    app.close()


def test_run_scheduler_warns_when_the_app_has_no_periodic_tasks(
    fapp: pluq.App, caplog: pytest.LogCaptureFixture
) -> None:
    stop = threading.Event()
    stop.set()
    with caplog.at_level(logging.INFO, logger="pluq.beat"):
        run_scheduler(fapp, stop=stop)
    assert "declares no periodic tasks" in caplog.text


# -- two schedulers as real processes on one SQLite file ---------------------------------


def _beat_process(
    url: str,
    stop: multiprocessing.synchronize.Event,
    out: multiprocessing.queues.Queue[Any],
) -> None:
    """A `pluq beat` of its own: 1-second ticks, until `stop`; reports what it queued."""
    app = pluq.App(url, serializer="json")
    add_schedule(app, Schedule.create("ping", "tasks.ping", every=1))
    queued: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.__dict__.get("queued"):
                queued.append(record.__dict__["task_id"])

    beat_log = logging.getLogger("pluq.beat")
    beat_log.setLevel(logging.INFO)
    beat_log.addHandler(Collect())
    stopping = threading.Event()

    def relay() -> None:
        stop.wait()
        stopping.set()

    threading.Thread(target=relay, daemon=True).start()
    out.put(("ready", None))
    run_scheduler(app, stop=stopping)
    app.close()
    out.put(("queued", queued))


def test_two_scheduler_processes_queue_each_tick_exactly_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"  # an absolute path: four slashes
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    out: multiprocessing.queues.Queue[Any] = context.Queue()
    processes = [context.Process(target=_beat_process, args=(url, stop, out)) for _ in range(2)]
    consumer = pluq.App(url, serializer="json")
    received: list[str] = []

    def consume(timeout: float) -> None:
        for delivery in consumer.broker.reserve(["default"], timeout=timeout, lease=60, limit=10):
            received.append(delivery.id)
            consumer.broker.ack(delivery)  # acked at once: only the dedupe window remembers

    for process in processes:
        process.start()
    try:
        for _ in processes:
            assert out.get(timeout=60)[0] == "ready"
        both_running = time.time()
        # When both beat for four ticks, acknowledging each run as soon as it arrives ...
        deadline = time.monotonic() + 30
        while not any(int(i.rsplit(":", 1)[1]) >= both_running + 4 for i in received):
            assert time.monotonic() < deadline, f"too few ticks arrived: {received}"
            consume(timeout=1)
        stop.set()
        reports = [out.get(timeout=30) for _ in processes]
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)
    consume(timeout=0)
    consumer.close()

    # ... then each tick was queued exactly once, by exactly one of them.
    assert all(process.exitcode == 0 for process in processes)
    assert all(Counter(received)[i] == 1 for i in received), received
    by_process = [set(queued) for kind, queued in reports if kind == "queued"]
    assert len(by_process) == 2
    assert not by_process[0] & by_process[1]
    assert by_process[0] | by_process[1] == set(received)
    assert len(received) >= 3
