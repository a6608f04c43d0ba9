"""Periodic tasks: `@app.periodic(every=...)` or `@app.periodic(cron=...)`, queued on time.

Features:
    - A periodic task is an ordinary task of the app plus a `Schedule`; the scheduler
      (`pluq beat`, or `pluq worker --beat`, both calling `run_scheduler`) queues one
      message per tick through the app's broker. Workers run it like any other task.
    - Any number of schedulers may run at once, on any hosts, with no leader election:
      each tick is queued once thanks to the broker's idempotent publish (see below).
    - A scheduler that was down queues at most one missed run per schedule when it
      comes back, never a burst of them.
    - Its only state lives in the app's result backend, not in a local file, so every
      scheduler of the app shares it and a new host needs nothing but the app.

Declaring:
    @app.periodic(every=timedelta(minutes=5))              # or every=300.0 (seconds)
    def cleanup() -> None: ...

    @app.periodic(cron="30 2 * * *", tz="Europe/Paris", queue="reports", max_retries=0)
    def nightly_report() -> None: ...

    `name` and `queue` and any other keyword (`max_retries`, `time_limit`, `expires`, ...)
    go to `app.task`; `args` and `kwargs` are the arguments every run gets. The decorator
    returns the Task, which can still be called or `.delay()`-ed by hand. The schedule is
    named after the task; `add_schedule` registers more schedules for any task by name.

Tick times:
    every   Ticks are the multiples of the interval since 1970-01-01 00:00 UTC (the Unix
            epoch), not "interval after start": `every=timedelta(hours=1)` ticks on the
            hour, `every=timedelta(days=1)` at midnight UTC. Every scheduler, started at
            any moment on any host, computes the same tick times. For wall-clock times in
            a time zone use cron (`tz` is refused with `every` so nobody expects it).
    cron    Five fields, `minute hour day-of-month month day-of-week` (a sixth leading
            field for seconds is accepted; so are @hourly, @daily, @weekly, @monthly and
            @yearly), evaluated by the `cronsim` library with
            Debian cron's semantics, in the time zone `tz` (a zoneinfo name or a tzinfo;
            default UTC). Across a DST change a job at a fixed local time runs once: a
            time that does not exist (spring forward) runs at the first valid minute
            after it, a time that exists twice (fall back) runs at its first occurrence;
            jobs with a `*` minute or hour follow real time and run in both.

Idempotent ticks:
    The message of a tick has the id `pluq:periodic:<schedule name>:<tick time>` (the
    tick time in seconds since the epoch: an integer, or a decimal for intervals that
    are not whole seconds). Two schedulers that both reach a tick
    publish the same id; the broker queues the first and answers False to the second,
    which logs it as already queued. That is the whole coordination protocol.

Catch-up (at most one missed run per schedule):
    Each tick, for each schedule, the scheduler looks at the most recent tick time that
    is due (at or before now) and publishes it if it is later than the last tick handled.
    After downtime that is the latest missed tick only: a scheduler down for a day with an
    hourly schedule queues one run when it starts, not 24. A schedule that has never run
    anywhere starts with the first tick after a scheduler first sees it.

State:
    One record per schedule in the result backend: a `TaskRecord` with id
    `pluq:schedule:<name>`, state SUCCESS, and `meta = {"last_tick": <tick time>,
    "last_id": <task id>, "schedule": <description>}`, written after each tick is
    published (or found already queued) and kept 30 days (or three intervals, if longer).
    `pluq result pluq:schedule:<name>` shows it. Deleting it resets the schedule to
    "never ran". Schedulers of one app must share the result backend for it to work
    across hosts; the broker's id check works without it.

The dedupe window, and why it is enough:
    The broker knows an id while its message is queued, delayed, running or dead, and for
    `dedupe_window` seconds (a broker URL option, default 300) after it was acknowledged.
    On its own that would let a tick through twice when a second scheduler reaches it
    more than the window after the first one's run finished: its clock is minutes behind,
    or it was suspended across the tick of a schedule slower than the window and catches
    up afterwards. So before it publishes a tick, a scheduler re-reads the state record
    (kept 30 days) and never republishes a tick at or before the `last_tick` stored
    there, which covers both cases. What remains needs two things at once: both
    schedulers read the state before either wrote it, and the slower one then publishes
    more than `dedupe_window` seconds after the other's run was acknowledged, i.e. it
    stalled for minutes between two consecutive calls (SIGSTOP, a suspended VM). The
    broker is the only guard when the schedulers share no result backend, and while the
    backend cannot be read (a running scheduler then goes by its own memory of the last
    tick and logs a warning). To widen the margin, raise the window on the broker URL
    (`sqlite:///pluq.db?dedupe_window=3600`). A scheduler whose clock runs ahead queues
    ticks early, for everyone: keep the hosts on NTP.

Durability: as durable as the app's broker (the queued ticks) and result backend (the
state). Nothing is kept in the scheduler process.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pluq import message as msg
from pluq.backend import SUCCESS, TaskRecord
from pluq.errors import ConfigurationError, PluqError

if TYPE_CHECKING:
    from pluq.app import App
    from pluq.task import Task

__all__ = [
    "STATE_EXPIRES",
    "Schedule",
    "Scheduler",
    "add_schedule",
    "periodic",
    "run_scheduler",
    "schedules",
    "state_id",
    "tick_id",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("pluq.beat")

STATE_EXPIRES: Final = 30 * 86_400.0
"""Seconds the state record of a schedule is kept after its last tick (at least)."""
_MAX_WAIT: Final = 60.0
"""The loop re-reads the clock at least this often: the wall clock may jump (NTP, a
suspended laptop) while `Event.wait` measures monotonic time."""
_RETRY_FIRST: Final = 1.0
_RETRY_MAX: Final = 30.0
_SEARCH_LIMIT: Final = 1_000
"""Cron matches examined to step over a DST fold; a handful is ever needed."""
_NICKNAMES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The nicknames of Vixie cron (cronsim reads fields only)."""
_UTC_NAMES: Final = frozenset({"UTC", "Etc/UTC", "GMT", "Etc/GMT"})
_CRON_HINT: Final = (
    "write five fields, minute hour day-of-month month day-of-week, for example "
    "'*/5 * * * *' (every five minutes) or '30 2 * * MON' (Mondays at 02:30)"
)


def tick_id(name: str, tick: float) -> str:
    """The message id of one tick of a schedule: equal in every scheduler, by design."""
    label = str(int(tick)) if float(tick).is_integer() else repr(round(tick, 6))
    return f"pluq:periodic:{name}:{label}"


def state_id(name: str) -> str:
    """The id of the result-backend record that holds a schedule's last tick."""
    return f"pluq:schedule:{name}"


# -- schedules ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """When to queue which task: every N seconds (epoch-aligned) or on a cron expression.

    Build one with `Schedule.create` (which accepts a timedelta and a zone name), or with
    the normalized fields directly. Invalid values raise ConfigurationError.

    Attributes:
        name: the schedule's name; it is part of every tick's message id.
        task: the name of the task to queue (it need not be registered in this process).
        every: the interval in seconds, or None for a cron schedule.
        cron: the cron expression, or None for an interval schedule.
        tz: the time zone cron fields are read in (UTC by default).
        queue: the queue to publish to (default: the task's, else the app's).
        args: positional arguments of every run.
        kwargs: keyword arguments of every run.
    """

    name: str
    task: str
    every: float | None = None
    cron: str | None = None
    tz: tzinfo = UTC
    queue: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        name: str,
        task: str | None = None,
        *,
        every: timedelta | float | None = None,
        cron: str | None = None,
        tz: str | tzinfo | None = None,
        queue: str | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Schedule:
        """A schedule from friendly values: `every` may be a timedelta, `tz` a zone name."""
        seconds, zone = _timing(every, cron, tz)
        return cls(
            name=name,
            task=task or name,
            every=seconds,
            cron=cron,
            tz=zone,
            queue=queue,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
        )

    def __post_init__(self) -> None:
        for label, value in (("name", self.name), ("task", self.task)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"a schedule's {label} must be a non-empty string")
        _timing(self.every, self.cron, self.tz)
        if not isinstance(self.args, tuple):
            raise ConfigurationError(f"schedule {self.name!r}: args must be a tuple")
        if not isinstance(self.kwargs, Mapping) or not all(isinstance(k, str) for k in self.kwargs):
            raise ConfigurationError(
                f"schedule {self.name!r}: kwargs must be a dict with string keys"
            )
        if self.cron is not None and math.isinf(self.next_after(time.time())):
            raise ConfigurationError(
                f"schedule {self.name!r}: cron {self.cron!r} never matches in the next 50 "
                f"years (check the day-of-month and day-of-week fields)"
            )

    def next_after(self, t: float) -> float:
        """The first tick time strictly after `t` (seconds since the epoch); `math.inf` if
        a cron expression has no match in the next 50 years."""
        if self.every is not None:
            k = math.floor(t / self.every) + 1
            while k * self.every <= t:  # float rounding near a multiple
                k += 1
            return float(k * self.every)
        assert self.cron is not None
        start = datetime.fromtimestamp(math.floor(t), self.tz)
        # A fixed-time job inside a DST fold can come back at or before `t` (cronsim
        # reads wall time there): step on to the first match really after it.
        for match in itertools.islice(_cron(self.cron, start), _SEARCH_LIMIT):
            if match.timestamp() > t:
                return match.timestamp()
        return math.inf

    def last_at_or_before(self, t: float) -> float | None:
        """The latest tick time at or before `t`: the tick that is due at `t`, if any."""
        if self.every is not None:
            k = math.floor(t / self.every)
            while k * self.every > t:  # float rounding near a multiple
                k -= 1
            return float(k * self.every)
        assert self.cron is not None
        # Ticks fall on whole seconds, so the latest one at or before t is the latest one
        # strictly before floor(t) + 1, which is what a reverse cronsim yields first.
        start = datetime.fromtimestamp(math.floor(t) + 1, self.tz)
        found: float | None = None
        for match in itertools.islice(_cron(self.cron, start, reverse=True), _SEARCH_LIMIT):
            if match.timestamp() <= t:
                found = match.timestamp()
                break
        if found is None:
            return None
        # Forward iteration is the reference (it decides what gets published); a reverse
        # search inside a DST fold may land one match early, so walk forward from it.
        for _ in range(_SEARCH_LIMIT):
            following = self.next_after(found)
            if following > t:
                break
            found = following
        return found

    def describe(self) -> str:
        """A short human description: "every 300 s" or "cron '0 9 * * *' (Europe/Paris)"."""
        if self.every is not None:
            return f"every {self.every:g} s"
        return f"cron {self.cron!r} ({self.tz})"

    def period_hint(self, tick: float) -> float:
        """Seconds from `tick` to the tick after it (the interval, for a cron schedule the
        gap at that point)."""
        if self.every is not None:
            return self.every
        following = self.next_after(tick)
        return following - tick if math.isfinite(following) else 0.0


def _timing(
    every: timedelta | float | None, cron: str | None, tz: str | tzinfo | None
) -> tuple[float | None, tzinfo]:
    """Check and normalize the timing arguments: exactly one of every/cron, and a zone."""
    if (every is None) == (cron is None):
        raise ConfigurationError(
            "a periodic task needs exactly one of every= (a timedelta or seconds) or cron= "
            "(a cron expression), for example every=timedelta(minutes=5) or "
            "cron='*/5 * * * *'"
        )
    seconds: float | None = None
    if every is not None:
        if isinstance(every, timedelta):
            seconds = every.total_seconds()
        elif isinstance(every, int | float) and not isinstance(every, bool):
            seconds = float(every)
        else:
            raise ConfigurationError(
                f"every= takes a timedelta or a number of seconds, not {every!r}"
            )
        if not (math.isfinite(seconds) and seconds > 0):
            raise ConfigurationError(
                f"every= must be a positive, finite interval, not {every!r}; for example "
                f"every=timedelta(minutes=5)"
            )
        if tz is not None and str(_zone(tz)) not in _UTC_NAMES:
            raise ConfigurationError(
                "tz= applies to cron schedules only: every= ticks are aligned to the Unix "
                "epoch (UTC), whatever the zone. For a wall-clock time in a zone use cron, "
                "for example cron='0 9 * * *', tz='Europe/Paris'"
            )
        return seconds, UTC
    if not isinstance(cron, str):
        raise ConfigurationError(f"cron= takes a string, not {cron!r}; {_CRON_HINT}")
    zone = _zone(tz)
    _cron(cron, datetime.now(zone))  # validates the expression
    return None, zone


def _zone(tz: str | tzinfo | None) -> tzinfo:
    if tz is None:
        return UTC
    if isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigurationError(
                f"unknown time zone {tz!r}: give an IANA zone name such as 'Europe/Paris' "
                f"or 'America/New_York' (or a tzinfo); on systems without a zone database "
                f"install the tzdata package"
            ) from exc
    raise ConfigurationError(f"tz= takes a zone name or a tzinfo, not {tz!r}")


def _cron(expr: str, start: datetime, *, reverse: bool = False) -> Iterator[datetime]:
    try:
        from cronsim import CronSim, CronSimError
    except ImportError as exc:  # pragma: no cover - cronsim is a dependency of pluq
        raise ConfigurationError(
            "cron schedules need the cronsim package, which is not installed: pip install cronsim"
        ) from exc
    try:
        return CronSim(_NICKNAMES.get(expr.strip().lower(), expr), start, reverse=reverse)
    except CronSimError as exc:
        raise ConfigurationError(
            f"cron expression {expr!r} is not valid ({exc}); {_CRON_HINT}"
        ) from exc


# -- declaring ---------------------------------------------------------------------------


def schedules(app: App) -> dict[str, Schedule]:
    """The app's schedules by name (`app.schedules`), created empty on first use."""
    table: dict[str, Schedule] | None = getattr(app, "schedules", None)
    if table is None:
        table = {}
        setattr(app, "schedules", table)  # noqa: B010 - App may not declare it yet
    return table


def add_schedule(app: App, schedule: Schedule, *, replace: bool = False) -> Schedule:
    """Register `schedule` with `app`, so its schedulers queue its ticks.

    Raises ConfigurationError if another schedule has that name (unless `replace`, which
    re-running a notebook cell needs), or if its arguments cannot be serialized by the
    app's serializer.
    """
    table = schedules(app)
    existing = table.get(schedule.name)
    if existing is not None and existing != schedule and not replace:
        raise ConfigurationError(
            f"a different schedule named {schedule.name!r} is registered already "
            f"({existing.describe()}); give the new one another name, or pass replace=True"
        )
    try:  # fail here, at declaration, rather than at every tick
        app.serializer.dumps({"args": list(schedule.args), "kwargs": dict(schedule.kwargs)})
    except PluqError as exc:
        raise ConfigurationError(
            f"schedule {schedule.name!r}: its args/kwargs cannot be serialized ({exc})"
        ) from exc
    table[schedule.name] = schedule
    return schedule


def periodic(
    app: App,
    *,
    every: timedelta | float | None = None,
    cron: str | None = None,
    tz: str | tzinfo | None = None,
    name: str | None = None,
    queue: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Make a function a task of `app` that its schedulers queue on a schedule.

    Args:
        app: the app the task belongs to.
        every: the interval (a timedelta or seconds); ticks are aligned to the epoch.
        cron: a cron expression, read in `tz`.
        tz: a zoneinfo name or a tzinfo, for `cron` (default UTC).
        name: the task's name, also the schedule's (default: module.qualname).
        queue: the task's queue.
        args: positional arguments of every run.
        kwargs: keyword arguments of every run.
        **task_options: any other `app.task` option (max_retries, time_limit, expires, ...).

    Returns:
        A decorator that registers the function and returns its Task.

    Raises:
        ConfigurationError: both or neither of every/cron, an interval <= 0, an invalid
            cron expression or zone, or a bad task option.
    """
    from pluq.task import Task

    seconds, zone = _timing(every, cron, tz)  # errors point at the decorator line

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        if isinstance(fn, Task):
            raise ConfigurationError(
                f"{fn.name} is already a task: to queue one task on several schedules use "
                f"pluq.scheduler.add_schedule(app, Schedule.create('a-name', "
                f"{fn.name!r}, every=...))"
            )
        register: Callable[[Callable[P, R]], Task[P, R]] = app.task(
            name=name, queue=queue, **task_options
        )
        task = register(fn)
        schedule = Schedule(
            name=task.name,
            task=task.name,
            every=seconds,
            cron=cron,
            tz=zone,
            queue=queue,
            args=tuple(args),
            kwargs=dict(kwargs or {}),
        )
        # app.task has refused a different function under this name already, so a
        # clash here is the same function declared again (a re-run notebook cell).
        add_schedule(app, schedule, replace=True)
        return task

    return decorate


# -- scheduling --------------------------------------------------------------------------


class Scheduler:
    """Queues the due ticks of an app's schedules; run as many as you like at once.

    `tick(now)` is one pure step (publish what is due at `now`), for tests with a fake
    clock; `run(stop)` loops on it until `stop` is set. Errors of one schedule are logged
    on the `pluq.beat` logger and retried on the next step; they never stop the others.

    Args:
        app: the app whose `schedules`, broker and result backend are used.
        clock: the time source for tick times (default `time.time`).
    """

    def __init__(self, app: App, *, clock: Callable[[], float] = time.time) -> None:
        self.app = app
        self.clock = clock
        self._lock = threading.Lock()
        self._handled: dict[str, float] = {}
        """Per schedule: the latest tick known handled, or the time a schedule that never
        ran anywhere was first seen (ticks at or before it are not due)."""
        self._failed: set[str] = set()

    def tick(self, now: float | None = None) -> list[str]:
        """Publish every tick due at `now` (default: the clock) not handled yet.

        Returns the ids of the messages this call queued (a tick another scheduler had
        queued already is not among them).
        """
        moment = self.clock() if now is None else now
        queued: list[str] = []
        with self._lock:
            self._failed.clear()
            for schedule in list(schedules(self.app).values()):
                try:
                    task_id = self._step(schedule, moment)
                except PluqError as exc:
                    self._failed.add(schedule.name)
                    logger.error("schedule %s: could not queue its tick: %s", schedule.name, exc)
                except Exception:  # one broken schedule must not stop the others
                    self._failed.add(schedule.name)
                    logger.exception("schedule %s: could not queue its tick", schedule.name)
                else:
                    if task_id is not None:
                        queued.append(task_id)
        return queued

    def next_wakeup(self, now: float) -> float | None:
        """The earliest tick time after `now` over all schedules; None without any."""
        times = [s.next_after(now) for s in list(schedules(self.app).values())]
        finite = [t for t in times if math.isfinite(t)]
        return min(finite) if finite else None

    def run(self, stop: threading.Event) -> None:
        """Queue ticks as they come due until `stop` is set (returns promptly then)."""
        retry = _RETRY_FIRST
        while not stop.is_set():
            now = self.clock()
            self.tick(now)
            wake = self.next_wakeup(now)
            delay = _MAX_WAIT if wake is None else wake - self.clock()
            if self._failed:
                delay = min(delay, retry)
                retry = min(retry * 2, _RETRY_MAX)
            else:
                retry = _RETRY_FIRST
            stop.wait(min(max(delay, 0.0), _MAX_WAIT))

    # -- one schedule ---------------------------------------------------------------------

    def _step(self, schedule: Schedule, now: float) -> str | None:
        due = schedule.last_at_or_before(now)
        if due is None:
            return None
        handled = self._handled.get(schedule.name)
        if handled is not None and due <= handled:
            return None
        # Something may be due: the shared state decides (another scheduler, or this one
        # before a restart, may have handled it already; see the module docstring).
        try:
            stored = self._stored_tick(schedule)
        except PluqError as exc:
            if handled is None:
                raise  # without it, this scheduler cannot tell a missed tick from a new one
            # A running scheduler keeps queuing on its own memory while the result store
            # is away; the broker's id check still stops duplicates within its window.
            logger.warning(
                "schedule %s: its state could not be read (%s); going by this scheduler's "
                "own memory", schedule.name, exc,
            )  # fmt: skip
            stored = None
        if handled is None:
            handled = stored if stored is not None else now
        elif stored is not None:
            handled = max(handled, stored)
        self._handled[schedule.name] = handled
        if due <= handled:
            return None
        task_id = tick_id(schedule.name, due)
        queue_name, was_queued = self._publish(schedule, due, task_id)
        self._handled[schedule.name] = due
        when = datetime.fromtimestamp(due, schedule.tz).isoformat()
        details = {"schedule": schedule.name, "tick": due, "task_id": task_id, "queued": was_queued}
        if was_queued:
            logger.info(
                "queued %s on %r, tick %s [%s]", schedule.task, queue_name, when, task_id,
                extra=details,
            )  # fmt: skip
        else:
            logger.debug(
                "%s: tick %s was queued already, by another scheduler [%s]",
                schedule.name, when, task_id, extra=details,
            )  # fmt: skip
        self._save(schedule, due, task_id, queue_name, now)
        return task_id if was_queued else None

    def _publish(self, schedule: Schedule, due: float, task_id: str) -> tuple[str, bool]:
        task = self.app.tasks.get(schedule.task)
        out = self.app._build(
            task,
            schedule.task,
            schedule.args,
            dict(schedule.kwargs),
            queue=schedule.queue,
            task_id=task_id,
            expires=task.expires if task is not None else None,
            meta={"schedule": schedule.name, "tick": due},
        )
        queued = self.app.broker.publish(out.queue, out.message, id=out.id, not_before=None)
        return out.queue, queued

    def _stored_tick(self, schedule: Schedule) -> float | None:
        record = self.app.backend.get(state_id(schedule.name))
        if record is None:
            return None
        value = record.meta.get("last_tick")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        logger.warning(
            "schedule %s: ignoring its state record %s, whose last_tick is %r (not a time)",
            schedule.name, state_id(schedule.name), value,
        )  # fmt: skip
        return None

    def _save(self, schedule: Schedule, due: float, task_id: str, queue: str, now: float) -> None:
        record = TaskRecord(
            id=state_id(schedule.name),
            state=SUCCESS,
            task=schedule.task,
            queue=queue,
            finished_at=now,
            meta={"last_tick": due, "last_id": task_id, "schedule": schedule.describe()},
        )
        expires = max(STATE_EXPIRES, 3 * schedule.period_hint(due))
        try:
            self.app.backend.put(msg.sign_record(record, self.app.keys), expires=expires)
        except PluqError as exc:
            # The tick is queued; only catch-up after a restart reads this record, and
            # the next tick writes a newer one.
            logger.warning(
                "schedule %s: tick queued, but its state could not be saved: %s",
                schedule.name, exc,
            )  # fmt: skip


def run_scheduler(app: App, *, stop: threading.Event) -> None:
    """Run the periodic scheduler of `app` until `stop` is set: `pluq beat` and `pluq worker
    --beat` call this (on its own thread, for the worker).

    Any number of them may run at once, on any hosts: each tick is queued once.
    """
    table = schedules(app)
    if table:
        for schedule in table.values():
            logger.info(
                "beat: %s -> task %s, %s", schedule.name, schedule.task, schedule.describe()
            )
    else:
        logger.warning(
            "beat: the app declares no periodic tasks, so there is nothing to schedule; "
            "declare them with @app.periodic(every=...) or @app.periodic(cron=...) in the "
            "module given to -A"
        )
    Scheduler(app, clock=app.clock).run(stop)
    logger.info("beat: stopped")
