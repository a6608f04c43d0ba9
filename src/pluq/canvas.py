"""Workflows: signatures, chains, groups and chords.

    add.s(1, 2)                         a signature: a task with (some of) its arguments
    add.si(1, 2)                        immutable: ignores the previous step's result
    chain(add.s(1, 2), add.s(10))()     13: each result is the first argument of the next
    add.s(1, 2) | add.s(10)             the same chain
    group(add.s(i, i) for i in range(10))()        -> GroupResult, .get() -> list in order
    chord(group(...), total.s())()      total(list of results), once, when all are done

How they run, without a coordinator:

- A chain's later steps travel in the first message's body. The child that finishes a
  step builds the next step's message (with the result as its first argument); the
  supervisor stores the result with that message beside it, publishes it, and only then
  acks. Every step's id is fixed when the chain is created, so the chain's result is
  known at once, and a step published twice (after a crash) is queued once. A failed
  step fails every later step with its exception (`record.meta["failed_step"]` names it).
- A group is its members, published in batches.
- A chord parks its callback's message in the result backend under the callback's id.
  Each member that succeeds counts itself once on an atomic counter; the worker whose
  count completes the set publishes the callback, which receives the members' results in
  order. A member that fails fails the chord with an error that names it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pluq import message as msg
from pluq.backend import FAILURE, PENDING, SUCCESS, TaskRecord
from pluq.errors import ConfigurationError, TimeoutError
from pluq.serializers import Serializer

if TYPE_CHECKING:
    from pluq.app import App
    from pluq.result import AsyncResult

__all__ = ["Chain", "Chord", "Group", "GroupResult", "Signature", "chain", "chord", "group"]

CHORD_COUNTER = "pluq:chord:{id}"
CHORD_MEMBER = "pluq:chord:{id}:{member}"


class Signature:
    """A task name, arguments and options: `add.s(1, 2)`; `add.si(1, 2)` is immutable.

    `sig.delay(*more)` / `sig.apply_async(args=more)` queue the task with the stored
    arguments followed by `more` (a partial signature completed at call time).
    """

    def __init__(
        self,
        task: str,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        app: App,
        options: Mapping[str, Any] | None = None,
        immutable: bool = False,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.app = app
        self.options = dict(options or {})
        self.immutable = immutable

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}{'.si' if self.immutable else '.s'}({', '.join(parts)})"

    def set(self, **options: Any) -> Signature:
        """A copy with these options added: queue=, countdown=, eta=, expires=, task_id=."""
        unknown = set(options) - {"queue", "countdown", "eta", "expires", "task_id", "max_retries"}
        if unknown:
            raise ConfigurationError(f"unknown signature option(s): {', '.join(sorted(unknown))}")
        return Signature(
            self.task, self.args, self.kwargs, app=self.app,
            options={**self.options, **options}, immutable=self.immutable,
        )  # fmt: skip

    def clone(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> Signature:
        """A copy with `args` appended (unless immutable) and `kwargs` merged."""
        if self.immutable:
            return Signature(
                self.task, self.args, self.kwargs, app=self.app, options=self.options,
                immutable=True,
            )  # fmt: skip
        return Signature(
            self.task, self.args + tuple(args), {**self.kwargs, **(kwargs or {})},
            app=self.app, options=self.options,
        )  # fmt: skip

    def freeze(self) -> str:
        """Fix the id this signature will run under (set once); returns it."""
        if "task_id" not in self.options:
            self.options["task_id"] = msg._new_id()
        return str(self.options["task_id"])

    @property
    def id(self) -> str:
        return self.freeze()

    def apply_async(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        sig = self.clone(args, kwargs)
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **{**self.options, **options})

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __or__(self, other: Signature | Chain) -> Chain:
        return chain(self, other)

    # -- the portable form a chain carries in its first message --------------------------

    def portable(self) -> dict[str, Any]:
        """Everything a child needs to queue this step later, without the app."""
        task = self.app.tasks.get(self.task)
        options = self.options
        fn = None
        if task is not None and task.by_value:
            from pluq.app import _task_bytes

            fn = _task_bytes(task)
        max_retries = options.get("max_retries")
        if max_retries is None:
            max_retries = task.max_retries if task is not None else 3
        meta = {"time_limit": task.time_limit} if task is not None and task.time_limit else {}
        return {
            "task": self.task,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "id": self.freeze(),
            "queue": options.get("queue")
            or (task.queue if task else None)
            or self.app.default_queue,
            "immutable": self.immutable,
            "countdown": options.get("countdown"),
            "max_retries": max_retries,
            "fn": fn,
            "meta": meta,
        }


def build_next(
    step: Mapping[str, Any],
    rest: list[Mapping[str, Any]],
    result: Any,
    *,
    serializer: Serializer,
    keys: tuple[bytes, ...],
) -> dict[str, Any]:
    """The message for a chain's next step, given the previous step's result.

    Runs in the child that finished the previous step; returns what the supervisor
    publishes: queue, id, not_before and the message as base64.
    """
    now = time.time()
    args = list(step["args"]) if step["immutable"] else [result, *step["args"]]
    countdown = step.get("countdown")
    out = msg.pack(
        task=step["task"],
        args=args,
        kwargs=step["kwargs"],
        queue=step["queue"],
        serializer=serializer,
        keys=keys,
        now=now,
        task_id=step["id"],
        not_before=now + countdown if countdown else None,
        max_retries=step.get("max_retries"),
        fn=step.get("fn"),
        link=rest,
        meta=step.get("meta"),
    )
    return {
        "queue": out.queue,
        "id": out.id,
        "not_before": out.not_before,
        "message": base64.b64encode(out.message).decode("ascii"),
    }


class Chain:
    """Steps run one after another, each result the first argument of the next."""

    def __init__(self, *steps: Signature | Chain) -> None:
        flat: list[Signature] = []
        for step in steps:
            if isinstance(step, Chain):
                flat.extend(step.steps)
            else:
                flat.append(step)
        if not flat:
            raise ConfigurationError("a chain needs at least one signature")
        self.steps: list[Signature]
        for step in flat:
            if not isinstance(step, Signature):
                raise ConfigurationError(f"chain takes signatures (task.s(...)), not {step!r}")
        self.steps = flat

    def __repr__(self) -> str:
        return " | ".join(repr(s) for s in self.steps)

    def __or__(self, other: Signature | Chain) -> Chain:
        return Chain(self, other)

    def apply_async(
        self, args: tuple[Any, ...] = (), kwargs: Mapping[str, Any] | None = None
    ) -> AsyncResult[Any]:
        """Queue the first step (with `args` appended); returns the last step's result."""
        first = self.steps[0].clone(args, kwargs)
        app = first.app
        rest = [s.portable() for s in self.steps[1:]]
        task = app.tasks.get(first.task)
        options = {k: v for k, v in first.options.items()}
        out = app._build(task, first.task, first.args, first.kwargs, link=rest, **options)
        app.broker.publish(out.queue, out.message, id=out.id, not_before=out.not_before)
        from pluq.result import AsyncResult

        return AsyncResult(rest[-1]["id"] if rest else out.id, app=app)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)


def chain(*steps: Signature | Chain) -> Chain:
    """`chain(a.s(1), b.s(), c.s())`: run a, then b(result of a), then c(result of b)."""
    return Chain(*steps)


class GroupResult:
    """The results of a group's members, in the order they were given."""

    def __init__(self, ids: list[str], *, app: App, id: str | None = None) -> None:
        from pluq.result import AsyncResult

        self.id = id or msg._new_id()
        self.app = app
        self.results: list[AsyncResult[Any]] = [AsyncResult(i, app=app) for i in ids]

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} {self.completed_count()}/{len(self)} done>"

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[Any]]:
        return iter(self.results)

    def _records(self) -> list[TaskRecord | None]:
        return self.app.backend.get_many([r.id for r in self.results])

    def completed_count(self) -> int:
        """How many members have succeeded."""
        return sum(1 for r in self._records() if r is not None and r.state == SUCCESS)

    def ready(self) -> bool:
        return all(r is not None and r.ready for r in self._records())

    def successful(self) -> bool:
        return all(r is not None and r.state == SUCCESS for r in self._records())

    def failed(self) -> bool:
        return any(r is not None and r.state == FAILURE for r in self._records())

    def get(
        self, timeout: float | None = None, propagate: bool = True, *, progress: bool = False
    ) -> list[Any]:
        """Wait for every member; their values in order (the first failure re-raised)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if progress:
            from pluq._progress import wait_with_progress

            wait_with_progress(self.app.backend, [r.id for r in self.results], timeout)
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                values.append(result.get(timeout=remaining, propagate=propagate))
            except TimeoutError:
                raise TimeoutError(
                    f"group {self.id}: {self.completed_count()} of {len(self)} members done "
                    f"after the timeout; wait longer with get(timeout=...)"
                ) from None
        return values

    def join(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        return self.get(timeout=timeout, propagate=propagate)

    def revoke(self) -> None:
        for result in self.results:
            result.revoke()

    def forget(self) -> None:
        for result in self.results:
            result.forget()


class Group:
    """Members that run in parallel; `group(...)()` returns their GroupResult."""

    def __init__(self, *members: Signature | Iterable[Signature]) -> None:
        flat: list[Signature] = []
        for member in members:
            if isinstance(member, Signature):
                flat.append(member)
            elif isinstance(member, Chain | Group):
                raise ConfigurationError("group members are signatures (task.s(...))")
            else:
                flat.extend(member)
        for member in flat:
            if not isinstance(member, Signature):
                raise ConfigurationError(f"group takes signatures (task.s(...)), not {member!r}")
        self.members = flat

    def __len__(self) -> int:
        return len(self.members)

    def __or__(self, callback: Signature) -> Chord:
        return Chord(self, callback)

    def _publish(self, meta_for: Any = None) -> list[str]:
        if not self.members:
            return []
        app = self.members[0].app
        outgoing = []
        ids = []
        size = len(self.members)
        for index, member in enumerate(self.members):
            meta = meta_for(index, size) if meta_for else None
            task = app.tasks.get(member.task)
            options = dict(member.options)
            out = app._build(task, member.task, member.args, member.kwargs, meta=meta, **options)
            outgoing.append(out)
            ids.append(out.id)
            if len(outgoing) >= 500:
                app.broker.publish_many(outgoing)
                outgoing = []
        if outgoing:
            app.broker.publish_many(outgoing)
        return ids

    def apply_async(self) -> GroupResult:
        if not self.members:
            raise ConfigurationError("a group needs at least one signature")
        return GroupResult(self._publish(), app=self.members[0].app)

    def delay(self) -> GroupResult:
        return self.apply_async()

    def __call__(self) -> GroupResult:
        return self.apply_async()


def group(*members: Signature | Iterable[Signature]) -> Group:
    """`group(add.s(i, i) for i in range(10))`: run the members in parallel."""
    return Group(*members)


class Chord:
    """A group and a callback that gets the list of the members' results, once."""

    def __init__(self, header: Group | Iterable[Signature], callback: Signature) -> None:
        self.header = header if isinstance(header, Group) else Group(list(header))
        if not isinstance(callback, Signature):
            raise ConfigurationError(f"a chord's callback is a signature, not {callback!r}")
        self.callback = callback

    def apply_async(self) -> AsyncResult[Any]:
        app = self.callback.app
        members = [m for m in self.header.members]
        callback_id = self.callback.freeze()
        member_ids = [m.freeze() for m in members]
        task = app.tasks.get(self.callback.task)
        options = {k: v for k, v in self.callback.options.items()}
        out = app._build(
            task, self.callback.task, self.callback.args, self.callback.kwargs,
            meta={"chord_members": member_ids}, **options,
        )  # fmt: skip
        from pluq.result import AsyncResult

        if not members:  # nothing to wait for: the callback gets an empty list now
            app.broker.publish(out.queue, out.message, id=out.id, not_before=out.not_before)
            return AsyncResult(callback_id, app=app)
        parked = TaskRecord(
            id=callback_id,
            state=PENDING,
            task=self.callback.task,
            queue=out.queue,
            created_at=time.time(),
            meta={
                "chord_message": base64.b64encode(out.message).decode("ascii"),
                "chord_size": len(members),
            },
        )
        app.backend.put(msg.sign_record(parked, app.keys), expires=app.result_expires)
        self.header._publish(lambda index, size: {"chord": {"id": callback_id, "size": size}})
        return AsyncResult(callback_id, app=app)

    def delay(self) -> AsyncResult[Any]:
        return self.apply_async()

    def __call__(self) -> AsyncResult[Any]:
        return self.apply_async()


def chord(header: Group | Iterable[Signature], callback: Signature) -> Chord:
    """`chord(group(...), total.s())`: call `total(results)` once all members succeeded."""
    return Chord(header, callback)
